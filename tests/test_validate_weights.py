"""scripts/validate_weights.py end to end on tiny weights: toy set, both methods, card, pictures."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mood.detection.weights import read_card, write_card
from mood.validation.bootstrap import load_case_scores, pixel_ap
from mood.validation.toy import MANIFEST

from conftest import make_weights, phantom_sources, run_script

def _run(*args: str) -> subprocess.CompletedProcess:
    return run_script("validate_weights.py", *args)


@pytest.fixture
def sources(tmp_path):
    return phantom_sources(tmp_path / "normals", (40, 36, 20))


def test_validate_weights_writes_both_methods_into_the_card(tmp_path, sources):
    weights = make_weights(tmp_path / "w", "brain", lambda_s=4.0, lambda_p=2.0)
    work = tmp_path / "work"
    run = _run("--region", "brain", "--weights", str(weights), "--sources", *map(str, sources),
               "--count", "4", "--restorations", "1", "--size", "40", "36", "20", "--work", str(work),
               "--card", "--picture-dir", str(tmp_path / "pics"))
    assert run.returncode == 0, run.stderr[-2000:]
    held_out = read_card(weights).info["validation"]["held_out"]
    report = json.loads((work / "brain_validation.json").read_text())
    for method in ("lsr", "reconstruction"):
        for task in ("sample", "pixel"):
            numbers = held_out[method][task]
            assert numbers["n_cases"] == 4 and 0.0 <= numbers["ap"] <= 1.0
            assert numbers["ap"] == report["methods"][method][task]["ap"]
        assert Path(held_out["pictures"][method]).stat().st_size > 10_000
    assert held_out["pictures"]["stages"] == str(tmp_path / "pics" / "brain_heldout_stages.png")
    assert Path(held_out["pictures"]["stages"]).stat().st_size > 10_000
    normals = held_out["normals"]  # what restoration does to the normal case
    assert normals["cases"] == 1 and 0.0 <= normals["changed"] <= 1.0 and normals["recon_fg"] > 0.0
    assert normals == {"cases": 1, **{k: round(v, 4) for k, v in report["normals"].items() if k != "cases"}}
    assert normals["context_gain"] == pytest.approx(normals["context_unigram"] - normals["context_nll"], abs=2e-4)
    anomalies = held_out["anomalies"]  # does the prior find the anomalies unlikely?
    assert anomalies == report["anomalies"] and anomalies["all"]["cases"] == 3
    assert {c["kind"] for c in report["cases"].values() if c["kind"]} <= set(anomalies)
    assert 0.0 <= anomalies["all"]["normal_above_lambda_p"] <= 1.0 and anomalies["all"]["normal_nll_median"] > 0.0
    assert anomalies["all"]["anomalous_codes"] > 0 and 0.0 <= anomalies["all"]["code_auroc"] <= 1.0
    assert sorted(c["source"] for c in report["cases"].values()) == ["head0.nii.gz"] * 2 + ["head1.nii.gz"] * 2
    assert sum(c["kind"] is None for c in report["cases"].values()) == 1  # a quarter are normal
    # per kind and size: each group's anomalous cases with the normal one
    groups = report["methods"]["lsr"]["pixel"]["groups"]
    kinds = {f"kind {c['kind']}" for c in report["cases"].values() if c["kind"]}
    assert kinds <= set(groups) and any(g.startswith("size ") for g in groups)
    assert all(g["n_cases"] >= 2 and g["n_positive"] > 0 for g in groups.values())
    assert held_out["lsr"]["sample"]["groups"] == report["methods"]["lsr"]["sample"]["groups"]
    assert "| all cases | 4 |" in run.stdout and "| kind " in run.stdout
    # the two methods score differently (the prior is not the reconstruction error)
    lsr = sorted((work / "pred" / "lsr" / "brain" / "sample").glob("*.txt"))
    rec = sorted((work / "pred" / "reconstruction" / "brain" / "sample").glob("*.txt"))
    assert [p.read_text() for p in lsr] != [p.read_text() for p in rec]
    # the kept case scores: the LSR's numbers again, and the toy set they belong to
    kept, toy = load_case_scores(held_out["case_scores"])
    assert toy == json.loads((work / "toy" / "brain" / MANIFEST).read_text())
    assert pixel_ap(kept, np.arange(4)) == held_out["lsr"]["pixel"]["ap"]


def test_validate_weights_refuses_training_volumes(tmp_path, sources):
    weights = make_weights(tmp_path / "w", "brain")
    card = read_card(weights)
    card.info["training"] = {"vqvae": {"train_files": ["head1.nii.gz"]}}
    write_card(weights, card)
    run = _run("--region", "brain", "--weights", str(weights), "--sources", *map(str, sources),
               "--work", str(tmp_path / "work"))
    assert run.returncode == 2 and "head1.nii.gz" in run.stderr
    assert not (tmp_path / "work").exists()
