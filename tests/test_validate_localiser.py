"""scripts/validate_localiser.py: which kinds count for which model (leave-task-out), and one quick
run end to end on tiny weights."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mood.config import KIND_TEACHERS, TRAINING_TASKS
from mood.detection.weights import read_card, write_card
from mood.validation.anomalies import KINDS

from conftest import make_weights, phantom_sources, run_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "validate_localiser.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("validate_localiser_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_validation_kind_names_its_teachers():
    assert set(KIND_TEACHERS) == set(KINDS)
    assert all(set(teachers) <= set(TRAINING_TASKS) for teachers in KIND_TEACHERS.values())


def test_counts_for(script):
    no_intensity = ("interpolation", "poisson", "deformation")
    assert not script.counts_for("blob_bright", ("intensity",))
    assert not script.counts_for("blob_dark", TRAINING_TASKS)
    assert script.counts_for("blob_bright", no_intensity) and script.counts_for("blob_dark", no_intensity)
    assert not script.counts_for("sink", no_intensity) and script.counts_for("sink", ("intensity",))
    assert not script.counts_for("foreign", ("poisson",)) and not script.counts_for("foreign", ("interpolation",))
    assert script.counts_for("foreign", ("intensity", "deformation"))
    for tasks in (TRAINING_TASKS, ("intensity",), no_intensity):
        assert script.counts_for("noise", tasks) and script.counts_for("shuffle", tasks)
    # the model trained on every task: only the kinds no task makes count
    assert {k for k in KINDS if script.counts_for(k, TRAINING_TASKS)} == {"noise", "shuffle"}


def test_portable_paths(script):
    assert script.portable(script.REPO / "weights" / "brain") == "weights/brain"
    assert script.portable("/elsewhere/data/heads") == ".../heads"
    assert script.portable("--count") == "--count" and script.portable("runs/x") == "runs/x"


def test_trained_tasks_come_from_the_card(script, tmp_path):
    weights = make_weights(tmp_path, "brain")
    assert script.trained_tasks(weights) == TRAINING_TASKS  # no record: assume every task trained it
    _record_tasks(weights, ["intensity", "poisson"])
    assert script.trained_tasks(weights) == ("intensity", "poisson")


def test_table_brackets_the_numbers_that_do_not_count(script):
    row = {"pixel_ap": 0.5, "sample_auroc": 0.75, "n_cases": 3}
    models = {"shipped": {"kinds": {"noise": {**row, "counts": True}, "sink": {**row, "counts": False}}},
              "fold": {"kinds": {"noise": {**row, "counts": True}, "sink": {**row, "counts": True}}}}
    lines = script.table(models, ["noise", "sink"]).splitlines()
    assert lines[0] == "| kind | cases | shipped | fold |"
    assert lines[2] == "| noise | 3 | 0.500 (0.75) | 0.500 (0.75) |"
    assert lines[3] == "| sink | 3 | [0.500 (0.75)] | 0.500 (0.75) |"


def _record_tasks(weights: Path, tasks: list[str], train_files: list[str] | None = None) -> None:
    card = read_card(weights)
    card.info["training"] = {"localiser": {"settings": {"tasks": tasks}, "train_files": train_files or []}}
    write_card(weights, card)


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_script("validate_localiser.py", *args)


@pytest.fixture
def sources(tmp_path):
    return phantom_sources(tmp_path / "normals", (32, 32, 32))


def test_validate_localiser_end_to_end(tmp_path, sources):
    """The shipped model trained without intensity changes, a fold trained on them alone: blobs
    count for the first, not for the fold; deformation's and patches' kinds the other way round."""
    shipped = make_weights(tmp_path / "ship", "brain")
    _record_tasks(shipped, ["interpolation", "poisson", "deformation"])
    fold = tmp_path / "fold_intensity"
    shutil.move(make_weights(tmp_path / "f", "brain", seed=1), fold)
    _record_tasks(fold, ["intensity"])
    work = tmp_path / "work"
    run = _run("--region", "brain", "--weights", str(shipped), "--folds", str(fold), "--sources", *map(str, sources),
               "--count", "9", "--size", "32", "32", "32", "--work", str(work), "--card", "--threads", "1", "--lsr")
    assert run.returncode == 0, run.stderr[-3000:]

    report = json.loads((work / "brain_localiser_validation.json").read_text())
    models = report["models"]
    assert models["shipped"]["tasks"] == ["interpolation", "poisson", "deformation"]
    assert models["fold_intensity"]["tasks"] == ["intensity"]
    kinds = sorted(models["shipped"]["kinds"])
    assert len(kinds) == 6 and set(kinds) <= set(KINDS)  # 6 anomalous cases, kinds in turn
    assert {"blob_bright", "blob_dark"} & set(kinds)  # six consecutive of seven hold a blob
    normals = 3  # a third of 9
    for name, model in models.items():
        for kind, numbers in model["kinds"].items():
            assert numbers["counts"] == (not set(KIND_TEACHERS[kind]) & set(model["tasks"])), (name, kind)
            assert numbers["n_cases"] == 1 + normals
            assert 0.0 <= numbers["pixel_ap"] <= 1.0 and 0.0 <= numbers["sample_auroc"] <= 1.0
        assert model["all"]["n_cases"] == 9
    for kind in kinds:
        expected = ("fold_intensity" if set(KIND_TEACHERS[kind]) & {"interpolation", "poisson", "deformation"}
                    else "shipped")
        assert report["honest"][kind]["model"] == expected, kind
        assert report["honest"][kind]["pixel_ap"] == models[expected]["kinds"][kind]["pixel_ap"]
    blob = next(k for k in ("blob_bright", "blob_dark") if k in kinds)
    assert models["shipped"]["kinds"][blob]["counts"] and not models["fold_intensity"]["kinds"][blob]["counts"]
    # the table marks the fold's blob number as not counting
    row = next(line for line in run.stdout.splitlines() if line.startswith(f"| {blob} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert not cells[2].startswith("[") and cells[3].startswith("[") and cells[3].endswith("]")
    # one picture per kind, case scores for both models, the summary in the shipped card only
    assert sorted(report["pictures"]) == kinds and all((work / Path(p).name).is_file() for p in report["pictures"].values())
    # the card travels with the weights: none of this machine's folders in it
    assert str(tmp_path) not in json.dumps(read_card(shipped).info["validation"]["localiser"])
    assert all(0.0 <= v < 1.0 for scores in report["case_scores"].values() for v in scores.values())
    assert read_card(shipped).info["validation"]["localiser"]["honest"] == report["honest"]
    assert "validation" not in read_card(fold).info
    # --lsr: the shipped weights' LSR and fusion sample scores besides; no task trained them, every kind counts
    others = report["lsr_and_fusion"]
    assert sorted(others) == ["fusion", "lsr"] and report["lsr_pixel_cases"] == []
    for method in ("lsr", "fusion"):
        assert others[method]["tasks"] == [] and all(k["counts"] for k in others[method]["kinds"].values())
        assert "pixel_ap" not in others[method]["all"] and 0.0 <= others[method]["all"]["sample_auroc"] <= 1.0
    scores = report["case_scores"]
    assert set(scores) == {"shipped", "fold_intensity", "lsr", "fusion"}
    for case, fused in scores["fusion"].items():
        assert fused == pytest.approx((scores["shipped"][case] + scores["lsr"][case]) / 2, abs=2e-6), case
    assert scores["lsr"] != scores["shipped"]


def test_validate_localiser_scores_only_the_kinds_asked(tmp_path, sources):
    """--kinds: the asked kinds' cases and the normal ones, from the same toy set."""
    weights = make_weights(tmp_path / "w", "brain")
    _record_tasks(weights, ["intensity"])
    work = tmp_path / "work"
    common = ("--region", "brain", "--weights", str(weights), "--sources", *map(str, sources), "--count", "9",
              "--size", "32", "32", "32", "--work", str(work), "--threads", "1")
    manifest = None
    for kinds in (["noise"], ["sink", "noise"]):
        run = _run(*common, "--kinds", *kinds)
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads((work / "brain_localiser_validation.json").read_text())
        manifest = manifest or json.loads((work / "toy" / "brain" / "toy_manifest.json").read_text())["cases"]
        present = sorted({c["kind"] for c in manifest.values() if c["kind"] in kinds})
        assert sorted(report["models"]["shipped"]["kinds"]) == present and present
        expected = {n for n, c in manifest.items() if c["kind"] is None or c["kind"] in kinds}
        assert set(report["case_scores"]["shipped"]) == expected
    missing = sorted(set(KINDS) - {c["kind"] for c in manifest.values()})  # 6 anomalous cases, 7 kinds
    run = _run(*common, "--kinds", missing[0])
    assert run.returncode != 0 and f"no case of {missing[0]}" in run.stderr


def test_validate_localiser_reuses_lsr_outputs(tmp_path, sources):
    """LSR's outputs are cached per case under a key of LSR's networks: a second run reads them
    (a planted score comes back), and a new localiser in the same folder keeps the key."""
    weights = make_weights(tmp_path / "w", "brain", localiser=True)
    _record_tasks(weights, ["intensity"])
    work = tmp_path / "work"
    args = ("--region", "brain", "--weights", str(weights), "--sources", *map(str, sources), "--count", "9",
            "--size", "32", "32", "32", "--work", str(work), "--threads", "1", "--lsr", "--lsr-pixel-cases", "1")
    run = _run(*args)
    assert run.returncode == 0, run.stderr[-3000:]
    first = json.loads((work / "brain_localiser_validation.json").read_text())
    (key,) = [d.name for d in (work / "lsr").iterdir()]
    cached = sorted((work / "lsr" / key).glob("*.npz"))
    assert len(cached) == 9
    with_map = [f for f in cached if "map" in np.load(f)]
    assert {f.stem + ".nii.gz" for f in with_map} == set(first["lsr_pixel_cases"])
    planted = cached[0]
    held = dict(np.load(planted))
    np.savez(planted, **{**held, "sample": np.float64(0.123)})
    shutil.copy(make_weights(tmp_path / "w2", "brain", seed=3, localiser=True) / "localiser-00001-of-00001.safetensors",
                weights / "localiser-00001-of-00001.safetensors")
    run = _run(*args)
    assert run.returncode == 0, run.stderr[-3000:]
    second = json.loads((work / "brain_localiser_validation.json").read_text())
    assert [d.name for d in (work / "lsr").iterdir()] == [key]
    assert second["case_scores"]["lsr"][planted.stem + ".nii.gz"] == pytest.approx(0.123)
    assert second["case_scores"]["shipped"] != first["case_scores"]["shipped"]  # the new localiser scored anew
    for case, score in first["case_scores"]["lsr"].items():
        if case != planted.stem + ".nii.gz":
            assert second["case_scores"]["lsr"][case] == score


def test_validate_localiser_refuses_its_training_heads(tmp_path, sources):
    weights = make_weights(tmp_path / "w", "brain")
    _record_tasks(weights, ["intensity"], train_files=["head1.nii.gz"])
    run = _run("--region", "brain", "--weights", str(weights), "--sources", *map(str, sources),
               "--work", str(tmp_path / "work"))
    assert run.returncode == 2 and "head1.nii.gz" in run.stderr
    assert not (tmp_path / "work").exists()
