"""The embedded demo end to end on tiny random weights and tiny volumes; its refusals."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mood.validation import demo as demo_module
from mood.cli import main
from mood.validation.demo import MARKER, demo, prepare_output
from mood.training import init_weights
from mood.validation.validate import succeeded
from mood.detection.weights import WeightsError

TINY = dict(count=3, normals=1, size=24, slices=4, restorations=2)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """Tiny randomly initialised brain weights, as `mood init-weights --region brain --tiny` writes them."""
    return init_weights("brain", tmp_path_factory.mktemp("weights") / "brain", tiny=True)


@pytest.fixture(scope="module")
def run(random_weights, tmp_path_factory):
    """One tiny demo run shared by the tests below: (report, the lines it said, output folder)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    lines: list[str] = []
    # one thread in the predictor processes: tiny models gain nothing from more, and on a busy
    # machine threads waiting for each other would make this test many times slower
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        report = demo(out, weights=random_weights, device="cpu", say=lines.append, method="lsr", **TINY)
    return report, "\n".join(lines), out


def test_demo_runs_end_to_end(run):
    report, text, out = run
    assert succeeded(report["results"]), text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("region"))
    assert lines[header].split() == ["region", "task", "AP", "AUROC", "bestDice", "cases", "missing",
                                     "badshape", "unread", "exit", "time(s)"]
    for row, task in zip(lines[header + 2: header + 4], ("sample", "pixel")):
        cells = row.split()
        assert cells[:2] == ["brain", task]
        assert 0.0 <= float(cells[2]) <= 1.0  # AP is a number, not "-"
        assert cells[5:10] == ["3", "0", "0", "0", "0"]  # cases, missing, bad shape, unreadable, exit
    # the settings and where everything is are said
    assert "3 brain cases (2 with synthetic anomalies, 1 normal) at 24^3" in text
    assert "4 slices" in text and "2 restorations" in text
    assert "randomly initialised" in text
    for where in ("toy set:", "predictions:", "pictures:", "results:"):
        assert where in text


def test_demo_writes_toy_set_predictions_pictures_and_json(run):
    returned, _, out = run
    cases = sorted(p.name for p in (out / "brain" / "toy").iterdir())
    assert cases == ["toy_000.nii.gz", "toy_001.nii.gz", "toy_002.nii.gz"]
    for name in cases:
        assert (out / "brain" / "toy_label" / "sample" / f"{name}.txt").is_file()
        assert (out / "brain" / "toy_label" / "pixel" / name).is_file()
        assert (out / "predictions" / "brain" / "sample" / f"{name}.txt").is_file()
        assert (out / "predictions" / "brain" / "pixel" / name).is_file()
    pictures = sorted(p.name for p in (out / "pictures" / "brain").glob("*.png"))
    assert pictures == ["toy_000.png", "toy_001.png", "toy_002.png"]
    assert all((out / "pictures" / "brain" / p).stat().st_size > 1000 for p in pictures)

    report = json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert report == json.loads(json.dumps(returned))  # what it returns is what it wrote
    assert [(r["region"], r["task"], r["returncode"], r["n_cases"]) for r in report["results"]] == [
        ("brain", "sample", 0, 3), ("brain", "pixel", 0, 3)]
    settings = report["demo"]
    assert (settings["count"], settings["size"], settings["slices"], settings["restorations"]) == (3, [24] * 3, 4, 2)
    assert settings["method"] == "lsr" and report["extra_args"]["sample"][-2:] == ["--slices", "4"]
    assert sum(c["kind"] is None for c in settings["cases"].values()) == 1
    assert all(0.0 <= c["sample_score"] < 1.0 for c in settings["cases"].values())
    assert report["extra_args"]["pixel"][-2:] == ["--restorations", "2"]
    assert "--restorations" not in report["extra_args"]["sample"]


def test_demo_scores_with_the_localiser_by_default(random_weights, tmp_path):
    """Weights holding a localiser and no card method: "auto" picks the localiser, which scores
    every plane (no --slices) and says so."""
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        report = demo(tmp_path / "out", weights=random_weights, device="cpu", say=lines.append, **TINY)
    text = "\n".join(lines)
    assert succeeded(report["results"]), text
    assert report["demo"]["method"] == "localiser"
    assert "scored by the localiser on every one of its 24 axial planes" in text and "4 slices" not in text
    for task in ("sample", "pixel"):
        args = report["extra_args"][task]
        assert args[args.index("--method") + 1] == "localiser" and "--slices" not in args
    assert [(r["task"], r["returncode"], r["n_cases"]) for r in report["results"]] == [
        ("sample", 0, 3), ("pixel", 0, 3)]
    assert all(0.0 <= c["sample_score"] < 1.0 for c in report["demo"]["cases"].values())


def test_missing_weights_say_so_and_exit_non_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOOD_WEIGHTS", str(tmp_path / "no-weights-here"))
    out = tmp_path / "out"
    with pytest.raises(WeightsError) as caught:
        demo(out, **TINY)
    message = str(caught.value)
    assert message.startswith("no trained brain weights are installed") and "\n" not in message
    assert str(tmp_path / "no-weights-here" / "brain" / "card.json") in message
    assert "mood init-weights --region brain" in message  # says what to do
    assert capsys.readouterr() == ("", "")  # the library prints nothing
    assert not out.exists()  # nothing written before the check


def test_missing_weights_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOOD_WEIGHTS", str(tmp_path))
    assert main(["demo", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mood demo: error: no trained brain weights are installed") and err.count("\n") == 1


def test_explicit_weights_without_a_card(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    with pytest.raises(WeightsError, match=f"no usable brain weights in {tmp_path / 'w'}"):
        demo(tmp_path / "out", weights=tmp_path / "w", **TINY)


def test_weights_without_a_prior_are_refused_before_any_work(random_weights, tmp_path, capsys):
    """E.g. while training has written the VQ-VAE but not yet the prior."""
    partial = tmp_path / "brain"
    shutil.copytree(random_weights, partial)
    for shard in partial.glob("prior-*.safetensors"):
        shard.unlink()
    with pytest.raises(WeightsError, match="method .lsr. needs the prior network"):
        demo(tmp_path / "out", weights=partial, method="lsr", **TINY)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [dict(count=1), dict(normals=0), dict(count=3, normals=3),
                                    dict(size=8), dict(slices=0), dict(restorations=0)])
def test_bad_settings_are_refused(kwargs, tmp_path):
    with pytest.raises(ValueError):
        demo(tmp_path / "out", weights=tmp_path, **{**TINY, **kwargs})


def test_a_foreign_folder_is_never_cleared(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        prepare_output(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_a_rerun_replaces_only_the_demo_files(tmp_path):
    prepare_output(tmp_path)
    assert (tmp_path / MARKER).is_file()
    (tmp_path / "brain" / "toy").mkdir(parents=True)
    (tmp_path / "brain" / "toy" / "toy_009.nii.gz").write_text("stale case")
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("the user's")
    prepare_output(tmp_path)
    assert not (tmp_path / "brain").exists() and not (tmp_path / "results.json").exists()
    assert (tmp_path / "notes.txt").read_text() == "the user's"


def test_defaults_match_the_documented_sizes():
    assert (demo_module.DEMO_COUNT, demo_module.DEMO_NORMALS, demo_module.DEMO_SIZE,
            demo_module.DEMO_SLICES, demo_module.DEMO_RESTORATIONS) == (5, 1, 256, 12, 3)
    assert demo_module.DEMO_VOLUME.is_file()
    assert f"{demo_module.DEMO_SIZE}^3" in demo_module.__doc__


@pytest.mark.slow
def test_default_demo_with_the_installed_weights(tmp_path, capsys):
    """The README's first command as a user runs it (a few minutes on a 2-core CPU): `-m slow`."""
    from mood.detection.weights import default_weights_dir

    if not (default_weights_dir("brain") / "card.json").is_file():
        pytest.skip("no brain weights installed")
    assert main(["demo", "--output", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["n_cases"] for r in report["results"]] == [demo_module.DEMO_COUNT] * 2
    assert len(list((tmp_path / "out" / "pictures" / "brain").glob("*.png"))) == demo_module.DEMO_COUNT
    assert "The challenge's metric" in capsys.readouterr().out
