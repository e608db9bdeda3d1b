"""scripts/export_weights.py: float16 copy whose card names its data without machine paths."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mood.config import RegionConfig, narrow, region_preset, tiny_preset
from mood.lsr.networks import VQVAE, PixelSNAIL
from mood.detection.weights import Card, read_card, save_models

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "export_weights.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def _data(tmp_path: Path) -> Path:
    """A data folder with two volumes and the README table the licences come from."""
    data = tmp_path / "data" / "brain"
    data.mkdir(parents=True)
    (data / "a.nii.gz").write_bytes(b"volume a")
    (data / "b.nii.gz").write_bytes(b"volume b")
    (data.parent / "README.md").write_text(
        "| file | what | size | source | licence | use |\n|---|---|---|---|---|---|\n"
        "| brain/a.nii.gz | T1 | 1 MB | site A | CC0 | train |\n"
        "| brain/b.nii.gz | T1 | 1 MB | site B | MIT | holdout |\n")
    return data


def _trained(tmp_path: Path, data: Path, config: RegionConfig | None = None,
             prior_files: list[str] | None = None) -> Path:
    """Weights whose card carries a training record as an older `mood train` wrote it."""
    config = config or tiny_preset("brain")
    src = tmp_path / "src"
    record = {"data": str(data.resolve()), "train_files": ["a.nii.gz"], "holdout_files": ["b.nii.gz"],
              "tiny": True, "steps": 3}
    prior = {**record, "vqvae_from": str(src.resolve()), "train_files": prior_files or record["train_files"]}
    info = {"training": {"vqvae": dict(record), "prior": prior}}
    torch.manual_seed(0)
    save_models(src, Card(config, info=info), VQVAE(config.vqvae), PixelSNAIL(config.prior))
    return src


def test_export_writes_float16_and_provenance_without_paths(tmp_path):
    data = _data(tmp_path)
    src, dst = _trained(tmp_path, data), tmp_path / "dst"
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"quality": "measured"}))
    run = _run("--src", str(src), "--dst", str(dst), "--data", str(data), "--info", str(info))
    assert run.returncode == 0, run.stderr[-2000:]
    card = read_card(dst)
    assert card.info["quality"] == "measured"
    d = card.info["data"]
    assert d["trained_on"] == ["a.nii.gz"] and d["holdout_for_loss_and_calibration"] == ["b.nii.gz"]
    assert d["sha256"] == {"a.nii.gz": hashlib.sha256(b"volume a").hexdigest(),
                           "b.nii.gz": hashlib.sha256(b"volume b").hexdigest()}
    assert d["licences"] == {"a.nii.gz": "CC0; site A", "b.nii.gz": "MIT; site B"}
    assert str(tmp_path) not in (dst / "card.json").read_text()  # no path of the training machine
    assert card.info["training"]["prior"]["vqvae_from"] == {"weights": "src"}
    shards = sorted(dst.glob("*.safetensors"))
    assert shards
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} \
                == {torch.float16}


def test_export_records_the_volumes_only_the_prior_learnt_from(tmp_path):
    data = _data(tmp_path)
    (data / "c.nii.gz").write_bytes(b"volume c")
    with open(data.parent / "README.md", "a") as f:
        f.write("| brain/c.nii.gz | T1 | 1 MB | site C | BSD-2 | train |\n")
    src = _trained(tmp_path, data, prior_files=["a.nii.gz", "c.nii.gz"])
    run = _run("--src", str(src), "--dst", str(tmp_path / "dst"), "--data", str(data))
    assert run.returncode == 0, run.stderr[-2000:]
    d = read_card(tmp_path / "dst").info["data"]
    assert d["trained_on"] == ["a.nii.gz", "c.nii.gz"] and d["holdout_for_loss_and_calibration"] == ["b.nii.gz"]
    assert d["licences"]["c.nii.gz"] == "BSD-2; site C" and sorted(d["sha256"]) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]


def test_export_restates_tiny_from_the_architecture(tmp_path):
    """A narrowed full-size model was once recorded as tiny; the shipped card says what it is."""
    data = _data(tmp_path)
    src = _trained(tmp_path, data, config=narrow(region_preset("brain"), 0.5))
    run = _run("--src", str(src), "--dst", str(tmp_path / "dst"), "--data", str(data))
    assert run.returncode == 0, run.stderr[-2000:]
    training = read_card(tmp_path / "dst").info["training"]
    assert training["vqvae"]["tiny"] is False and training["prior"]["tiny"] is False


def test_export_refuses_a_file_without_licence(tmp_path):
    data = _data(tmp_path)
    (data.parent / "README.md").write_text("| brain/a.nii.gz | T1 | 1 MB | site A | CC0 | train |\n")
    run = _run("--src", str(_trained(tmp_path, data)), "--dst", str(tmp_path / "dst"), "--data", str(data))
    assert run.returncode != 0 and "b.nii.gz" in run.stderr
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("region", ("brain", "abdom"))
def test_shipped_cards_name_their_data_by_checksum_without_machine_paths(region):
    text = (Path(__file__).resolve().parents[1] / "weights" / region / "card.json").read_text()
    assert not re.search(r'"(/|[A-Za-z]:\\\\)', text), "a machine path in the shipped card"
    data = json.loads(text)["info"]["data"]
    files = data["trained_on"] + data["holdout_for_loss_and_calibration"]
    assert sorted(data["sha256"]) == sorted(files) and sorted(data["licences"]) == sorted(files)
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in data["sha256"].values())


@pytest.mark.parametrize("region", ("brain", "abdom"))
def test_shipped_cards_log_the_campaign_consistently(region):
    campaign = json.loads((Path(__file__).resolve().parents[1] / "weights" / region / "card.json")
                          .read_text())["info"]["campaign"]
    runs = campaign["runs"]
    assert all(r["slices"] == r["steps"] * r["batch"] for r in runs)
    assert campaign["cpu_hours_logged"] == pytest.approx(sum(r["cpu_hours"] for r in runs), abs=0.01)
    for model in ("vqvae", "prior"):
        mine = [r for r in runs if r["model"] == model]
        assert campaign["cpu_hours_by_model"][model] == pytest.approx(sum(r["cpu_hours"] for r in mine), abs=0.01)
        assert campaign["slices_seen_by_model"][model] == sum(r["slices"] for r in mine)
