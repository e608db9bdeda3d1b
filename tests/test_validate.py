"""Validation runs: a fake predictor stands in for the package; the table, JSON and pictures."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mood.validation import validate as validate_module
from mood.validation.toy import make_toy
from mood.cli import main
from mood.validation.validate import format_table, predictor_command, succeeded, validate

SIZE = (20, 20, 16)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    normals = root / "normals"
    normals.mkdir()
    g = np.indices((24, 22, 18)).astype(np.float32)
    r = np.sqrt(sum(((g[i] - (s - 1) / 2) / (0.4 * s)) ** 2 for i, s in enumerate((24, 22, 18))))
    data = np.where(r < 1, 100 + 50 * np.sin(g[0] / 2.0), 0.0).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(normals / "n.nii.gz"))
    make_toy(normals, root / "data" / "brain", count=4, seed=0, region="brain", normal_fraction=0.5, size=SIZE)
    return root / "data"


def _fake_runner(drop: str | None = None, returncode: int = 0):
    """A predictor that knows the labels: perfect sample scores, pixel scores = 0.9 * mask."""
    calls = []

    def run(task, region, toy_dir, pred_dir, docker=None, extra_args=()):
        calls.append((task, region, Path(toy_dir), Path(pred_dir), docker, tuple(extra_args)))
        labels = Path(toy_dir).parent / "toy_label"
        for volume in sorted(Path(toy_dir).iterdir()):
            if volume.name == drop:
                continue
            if task == "sample":
                value = (labels / "sample" / f"{volume.name}.txt").read_text().strip()
                (Path(pred_dir) / f"{volume.name}.txt").write_text(f"{0.8 * float(value) + 0.1}\n")
            else:
                img = nib.load(str(labels / "pixel" / volume.name))
                scores = 0.9 * np.asarray(img.dataobj, dtype=np.float32)
                nib.save(nib.Nifti1Image(scores, img.affine), str(Path(pred_dir) / volume.name))
        return returncode

    run.calls = calls
    return run


def test_perfect_predictor_scores_one(data, tmp_path, monkeypatch, capsys):
    runner = _fake_runner()
    monkeypatch.setattr(validate_module, "run_predictor", runner)
    report = validate(data, output_json=tmp_path / "r.json", pictures=tmp_path / "png",
                      extra_args=["--device", "cpu"], workdir=tmp_path / "work")
    rows = {(r["region"], r["task"]): r for r in report["results"]}
    assert set(rows) == {("brain", "sample"), ("brain", "pixel")}
    for row in rows.values():
        assert row["ap"] == 1.0 and row["auroc"] == 1.0 and row["best_dice"] == 1.0
        assert row["n_cases"] == 4 and row["n_missing"] == 0 and row["returncode"] == 0
    assert any("abdom" in s for s in report["skipped"])
    assert [c[0] for c in runner.calls] == ["sample", "pixel"]
    assert runner.calls[0][5] == ("--device", "cpu")
    assert runner.calls[0][3] == tmp_path / "work" / "brain" / "sample"
    assert capsys.readouterr().out == ""  # the library prints nothing; the command line prints the table
    table = format_table(report["results"])
    assert "brain" in table and "sample" in table and "1.0000" in table
    assert succeeded(report["results"])
    # strict JSON (no NaN): the abdomen was skipped, brain rows are complete
    saved = json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert saved["results"] == report["results"]
    assert len(list((tmp_path / "png" / "brain").glob("*.png"))) == 4


def test_missing_predictions_and_exit_status(data, monkeypatch, capsys):
    monkeypatch.setattr(validate_module, "run_predictor", _fake_runner(drop="toy_001.nii.gz", returncode=1))
    report = validate(data, tasks=("sample",))
    (row,) = report["results"]
    assert row["n_missing"] == 1 and row["returncode"] == 1 and row["n_cases"] == 4
    assert not succeeded(report["results"])
    assert main(["validate", str(data), "--tasks", "sample", "--", "--seed", "3"]) == 1  # a failed run is reported


def test_main_passes_extra_args_and_prints_the_table(data, monkeypatch, capsys):
    runner = _fake_runner()
    monkeypatch.setattr(validate_module, "run_predictor", runner)
    assert main(["validate", str(data), "--regions", "brain", "--tasks", "pixel", "--extra-args", "--slices 4",
                 "--", "--seed", "3"]) == 0
    assert runner.calls[0][5] == ("--slices", "4", "--seed", "3")
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["region", "task", "AP"] and "1.0000" in out


def test_the_script_is_the_command_line(data, tmp_path):
    """scripts/validate.py parses with mood.cli's parser: same options, same one-line errors."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "validate.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "nope")], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines()[-1] == f"mood validate: error: data folder {tmp_path / 'nope'} does not exist"
    assert "Traceback" not in run.stderr


def test_predictor_commands():
    toy, pred = Path("/d/brain/toy"), Path("/p/brain/pixel")
    assert predictor_command("pixel", "brain", toy, pred, extra_args=["--seed", "1"]) == [
        sys.executable, "-m", "mood", "pixel", "--input", str(toy), "--output", str(pred), "--region", "brain",
        "--seed", "1"]
    cmd = predictor_command("sample", "abdom", toy, pred, docker="img:1", gpu_args=["--gpus", "all"])
    assert cmd == ["docker", "run", "--rm", "--read-only", "--network", "none", "--gpus", "all",
                   "-v", f"{toy}:/mnt/data:ro", "-v", f"{pred}:/mnt/pred", "img:1",
                   "sh", "/workspace/run_sample_abdom.sh", "/mnt/data", "/mnt/pred"]


def test_errors(tmp_path, data):
    with pytest.raises(ValueError, match="does not exist"):
        validate(tmp_path / "nope")
    with pytest.raises(ValueError, match="tasks"):
        validate(data, tasks=("segment",))
    assert main(["validate", str(tmp_path / "nope")]) == 1


def test_broken_layout_is_reported_not_fatal(data, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    shutil.rmtree(broken / "brain" / "toy_label" / "pixel")
    monkeypatch.setattr(validate_module, "run_predictor", _fake_runner())
    report = validate(broken)
    assert [r["task"] for r in report["results"]] == ["sample"]
    assert any("brain/pixel" in s for s in report["skipped"])
