"""scripts/read_prior.py: a prior's code AUROC and context gain on a toy set, per checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mood.detection.weights import load_prior
from mood.validation.toy import make_toy

from conftest import head_phantom, make_weights, write_nifti

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "read_prior.py"
SIZE = (40, 36, 20)


@pytest.fixture
def toy_set(tmp_path: Path) -> tuple[Path, Path]:
    """Tiny brain weights and a toy set made from two phantom heads in their form: (weights, toy);
    the heads it was made from stay in ``tmp_path / "normals"``."""
    weights = make_weights(tmp_path / "w", "brain")
    src = tmp_path / "normals"
    src.mkdir()
    for i in range(2):
        write_nifti(src / f"head{i}.nii.gz", head_phantom(SIZE, seed=i))
    make_toy(src, tmp_path / "toy", count=4, seed=0, region="brain", size=SIZE)
    return weights, tmp_path / "toy"


def lines(weights: Path, toy: Path, *args: str) -> list[dict]:
    """The script's lines of readings, run as a user runs it."""
    run = subprocess.run([sys.executable, str(SCRIPT), "--weights", str(weights), "--toy", str(toy), *args],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return [json.loads(line) for line in run.stdout.strip().splitlines()]


def read(weights: Path, toy: Path, *args: str) -> dict:
    """The script's last line of readings: the last prior's."""
    return lines(weights, toy, *args)[-1]


def test_read_prior_reads_the_folders_prior_and_each_checkpoint(tmp_path, toy_set):
    weights, toy = toy_set
    prior = load_prior(weights)
    torch.manual_seed(1)
    ckpt = tmp_path / "model-10.safetensors"
    save_file({k: v + 0.5 * torch.randn_like(v) for k, v in prior.state_dict().items()}, str(ckpt))
    own = read(weights, toy)
    assert own["prior"] == str(weights) and own["anomalous_codes"] > 0 and 0.0 <= own["code_auroc"] <= 1.0
    assert 0.0 <= own["surprise_auroc"] <= 1.0
    assert own["context_gain"] == pytest.approx(own["context_unigram"] - own["context_nll"], abs=2e-4)
    other = read(weights, toy, str(ckpt))
    assert other["prior"] == str(ckpt) and other["context_unigram"] == own["context_unigram"]  # the same codes
    assert other["context_nll"] != pytest.approx(own["context_nll"], abs=1e-3)  # another prior's NLL


def test_read_prior_reads_the_gain_on_training_heads_and_the_gap(tmp_path, toy_set):
    weights, toy = toy_set
    cases = json.loads((toy / "toy_manifest.json").read_text())["cases"]
    normal = [toy / "toy" / name for name, case in sorted(cases.items()) if not case["kind"]]
    assert normal

    def heads(*paths: Path) -> list[str]:
        return [a for p in paths for a in ("--train-head", str(p))]

    same = read(weights, toy, *heads(*normal))  # the unseen normal cases themselves, already in the toy set's form: no gap
    assert same["train_gain"] == pytest.approx(same["context_gain"], abs=2e-4)
    assert same["gain_gap"] == pytest.approx(0.0, abs=2e-4)
    write_nifti(tmp_path / "another.nii.gz", head_phantom(SIZE, seed=5))
    other = read(weights, toy, *heads(tmp_path / "another.nii.gz"))  # a raw head, converted to the toy set's form first
    assert other["gain_gap"] == pytest.approx(other["train_gain"] - other["context_gain"], abs=2e-4)
    assert other["train_gain"] != pytest.approx(same["train_gain"], abs=1e-4)


def test_read_prior_reads_the_oracle_against_the_clean_sources(tmp_path, toy_set):
    """--sources: the oracle's readings against the normal volumes the cases were made from, beside
    the others (:func:`mood.validation.stages.rise_over_clean` is tested in test_stages)."""
    weights, toy = toy_set
    encoder, right = lines(weights, toy, "--sources", str(tmp_path / "normals"))
    assert encoder["encoder"] == str(weights) and "prior" not in encoder  # the VQ-VAE's line, once, before the prior's
    for what in ("shift", "residual"):
        assert 0.0 <= encoder[f"{what}_auroc"] <= 1.0 and encoder[f"{what}_median_anomalous"] >= 0.0
    assert 0.0 < right["changed_codes"] <= 1.0 and 0.0 <= right["oracle_auroc"] <= 1.0
    plain, = lines(weights, toy)
    assert "changed_codes" not in plain and "oracle_auroc" not in plain  # only with --sources
    assert right["code_auroc"] == plain["code_auroc"]  # the other readings unchanged


def test_read_prior_reads_the_nearest_normal_encoding_leaving_out_each_cases_source(tmp_path, toy_set):
    """--bank: each cell's distance to the nearest body-cell encoding of the bank's volumes, without
    the one the case was made from (:func:`mood.validation.stages.nearest_normal` is tested in test_stages)."""
    weights, toy = toy_set
    normals = tmp_path / "normals"
    encoder = lines(weights, toy, "--bank", str(normals))[0]
    assert encoder["encoder"] == str(weights) and "shift_auroc" not in encoder  # no oracle without --sources
    assert 0.0 <= encoder["nearest_auroc"] <= 1.0 and encoder["nearest_median_normal"] > 0.01  # the other head's tissue
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for path in normals.iterdir():  # the same heads under other names: no longer left out
        (renamed / f"copy_{path.name}").write_bytes(path.read_bytes())
    own = lines(weights, toy, "--bank", str(renamed))[0]
    assert own["nearest_median_normal"] < encoder["nearest_median_normal"] / 5  # a case's normal cells are then in the bank
    assert own["nearest_median_anomalous"] > own["nearest_median_normal"]
    (tmp_path / "empty").mkdir()
    run = subprocess.run([sys.executable, str(SCRIPT), "--weights", str(weights), "--toy", str(toy),
                          "--bank", str(tmp_path / "empty")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "no NIfTI volumes" in run.stderr


def test_read_prior_draws_the_readings_with_the_sources_only(tmp_path, toy_set):
    weights, toy = toy_set
    png = tmp_path / "readings.png"
    read(weights, toy, "--sources", str(tmp_path / "normals"), "--picture", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = subprocess.run([sys.executable, str(SCRIPT), "--weights", str(weights), "--toy", str(toy),
                          "--picture", str(tmp_path / "no.png")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "needs --sources" in run.stderr and not (tmp_path / "no.png").exists()
