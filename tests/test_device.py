"""The device call's pieces that run without a GPU: the payload check, hiding the weight shards for
the call, the run's list of needed files, and the held-out comparison that decides a commit.

The tiny end-to-end run from the exact payload (``scripts/device_payload.sh --rehearse``) is CI's
own step (.ci/run), not a test: it takes a minute or more.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mood.detection.weights import read_card, write_card

from conftest import make_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _sh(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_run_needs_files_that_the_checkout_has():
    needs = _sh("scripts/device_run.sh", "--needs").stdout.split()
    assert "weights/brain/card.json" in needs and any(n.endswith(".whl") for n in needs)
    missing = [n for n in needs if not n.startswith(".device/") and not (ROOT / n).exists()]
    assert not missing


@pytest.mark.skipif(not (SHARED / "data" / "brain").is_dir(), reason="no ../shared/data beside this checkout")
def test_payload_check_passes_and_fails_over_the_limit():
    ok = _sh("scripts/device_payload.sh", "--check")
    assert ok.returncode == 0, ok.stderr
    assert "payload ok" in ok.stdout
    assert (ROOT / ".device" / "data" / "brain" / "niivue_otsu.nii.gz").is_file()
    over = _sh("scripts/device_payload.sh", "--check", PAYLOAD_LIMIT=str(30 << 20))
    assert over.returncode == 1
    assert over.stderr.strip().splitlines() == [over.stderr.strip()]  # one line
    assert "over the limit, 30.0 MiB" in over.stderr


def test_payload_check_says_when_the_data_is_missing(tmp_path):
    run = _sh("scripts/device_payload.sh", "--check", SHARED=str(tmp_path))
    assert run.returncode == 1
    assert run.stderr.strip() == f"device_payload: no {tmp_path}/data/brain: the payload's volumes come from there (set SHARED)"


def test_hide_and_restore_the_weight_shards(tmp_path):
    """In a repository of the same layout: the shards and the campaign snapshots leave the index and
    are ignored, then come back."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "weights" / "brain").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "device_payload.sh", repo / "scripts")
    (repo / "requirements.txt").write_text("nibabel==5.4.2\n")
    (repo / "weights" / "brain" / "card.json").write_text("{}")
    (repo / "weights" / "brain" / "vqvae-00001-of-00001.safetensors").write_bytes(b"0" * 100)
    (repo / "campaign" / "brain").mkdir(parents=True)
    (repo / "campaign" / "brain" / "state.json").write_text("{}")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    tracked = git("ls-files")
    hide = _sh("scripts/device_payload.sh", "--hide-weights", cwd=repo)
    assert hide.returncode == 0, hide.stderr
    assert "safetensors" not in git("ls-files") and "weights/brain/card.json" in git("ls-files")
    assert "campaign" not in git("ls-files")
    assert "safetensors" not in git("ls-files", "--others", "--exclude-standard")  # untracked and ignored
    assert "campaign" not in git("ls-files", "--others", "--exclude-standard")
    assert (repo / "weights" / "brain" / "vqvae-00001-of-00001.safetensors").is_file()  # still on disk
    assert _sh("scripts/device_payload.sh", "--hide-weights", cwd=repo).returncode == 0  # twice is fine
    restore = _sh("scripts/device_payload.sh", "--restore-weights", cwd=repo)
    assert restore.returncode == 0, restore.stderr
    assert git("ls-files") == tracked and git("status", "--porcelain") == ""
    assert "safetensors" not in (repo / ".git" / "info" / "exclude").read_text()
    assert "campaign" not in (repo / ".git" / "info" / "exclude").read_text()


def _card_with(tmp_path: Path, name: str, pixel_ap: float, sample_auroc: float, cases: int = 12) -> Path:
    weights = make_weights(tmp_path / name, "brain")
    card = read_card(weights)
    row = {"pixel": {"ap": pixel_ap, "auroc": 0.9}, "sample": {"ap": 0.8, "auroc": sample_auroc}}
    card.info["validation"] = {"held_out": {"set": f"{cases} cases", "lsr": row, "reconstruction": row}}
    write_card(weights, card)
    return weights


@pytest.mark.parametrize("pixel_ap, sample_auroc, cases, code", [
    (0.006, 0.7, 12, 0),  # better on both
    (0.006, 0.5, 12, 3),  # pixel AP better, sample AUROC worse: not better
    (0.004, 0.7, 12, 3),
    (0.006, 0.7, 4, 2),  # another set: not comparable
])
def test_compare_heldout_decides_on_pixel_ap_and_sample_auroc(tmp_path, pixel_ap, sample_auroc, cases, code):
    shipped = _card_with(tmp_path, "shipped", 0.005, 0.6)
    new = _card_with(tmp_path, "new", pixel_ap, sample_auroc, cases)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_heldout.py"), str(new), str(shipped)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == code, run.stderr
    assert f"| lsr pixel ap | {pixel_ap:.4f} | 0.0050 |" in run.stdout
