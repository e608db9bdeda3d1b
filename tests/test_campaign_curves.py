"""scripts/campaign_curves.py: run folders and saved log rows read alike; the table compares at equal CPU time."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "campaign_curves.py"


def _log(folder: Path, kind: str, rows: list[dict]) -> Path:
    log = folder / "train" / kind / "log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return log


def _vq_rows(cpu_per_step: float, recon: list[float]) -> list[dict]:
    rows = []
    for i, value in enumerate(recon, start=1):
        rows.append({"step": 50 * i - 5, "loss": 1.0, "cpu_s": (50 * i - 5) * cpu_per_step})  # no holdout
        rows.append({"step": 50 * i, "cpu_s": 50 * i * cpu_per_step, "holdout_recon": value,
                     "holdout_codes_used": 100 + i})
    return rows


def _curves(tmp_path: Path, *runs: str, logx: bool = False) -> str:
    """The script's table for ``runs`` (``NAME=FOLDER``; any other argument passed as it is)."""
    out = tmp_path / "curves.png"
    cmd = [sys.executable, str(SCRIPT), *[a for r in runs for a in (("--run", r) if "=" in r else (r,))],
           "--out", str(out)]
    done = subprocess.run(cmd + (["--logx"] if logx else []), capture_output=True, text=True, check=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return done.stdout


def test_saved_log_rows_read_like_the_run_folder(tmp_path):
    log = _log(tmp_path / "fast", "vqvae", _vq_rows(1.0, [0.3, 0.2, 0.1]))
    saved = tmp_path / "saved.jsonl"
    saved.write_text("".join(line + "\n" for line in log.read_text().splitlines() if "holdout_" in line))
    from_folder = _curves(tmp_path, f"a={tmp_path / 'fast'}").splitlines()[-1]
    from_file = _curves(tmp_path, f"a={saved}", logx=True).splitlines()[-1]
    assert from_folder == from_file
    assert "| a | vqvae | 150 | 0.04 |" in from_file


def test_table_compares_runs_at_the_shortest_runs_cpu_time(tmp_path):
    _log(tmp_path / "fast", "vqvae", _vq_rows(1.0, [0.30, 0.20, 0.10]))  # ends at 150 CPU-s
    _log(tmp_path / "slow", "vqvae", _vq_rows(2.0, [0.40, 0.36, 0.32]))  # 100 CPU-s at its step 50
    _log(tmp_path / "prior", "prior", [{"step": 10, "cpu_s": 36.0, "holdout_nll": 2.5}])
    lines = _curves(tmp_path, f"fast={tmp_path / 'fast'}", f"slow={tmp_path / 'slow'}",
                    f"prior={tmp_path / 'prior'}").splitlines()
    fast, slow, prior = (next(line for line in lines if line.startswith(f"| {n} |")) for n in ("fast", "slow", "prior"))
    assert "recon 0.1000 at 0.04 h" in fast          # 150 s is the fast run's end
    assert "recon 0.3800 at 0.04 h" in slow          # halfway between 0.40 (100 s) and 0.36 (200 s)
    assert slow.endswith("| 0.3200 | 0.3200 |")
    assert "nll 2.5000 at 0.01 h" in prior


def test_a_folder_without_holdout_rows_is_refused(tmp_path):
    _log(tmp_path / "empty", "vqvae", [{"step": 1, "cpu_s": 1.0, "loss": 1.0}])
    with pytest.raises(subprocess.CalledProcessError) as err:
        subprocess.run([sys.executable, str(SCRIPT), "--run", f"x={tmp_path / 'empty'}", "--out",
                        str(tmp_path / "c.png")], capture_output=True, text=True, check=True)
    assert "no log rows with holdout_recon or holdout_nll" in err.value.stderr


def test_table_reads_the_foreground_l1_at_the_time_asked_for(tmp_path):
    rows = _vq_rows(1.0, [0.30, 0.20, 0.10])
    for r in rows:
        if "holdout_recon" in r:
            r["holdout_recon_fg"] = 4 * r["holdout_recon"]
    _log(tmp_path / "fg", "vqvae", rows)
    _log(tmp_path / "old", "vqvae", _vq_rows(1.0, [0.5, 0.4, 0.3]))  # logged before recon_fg existed
    out = tmp_path / "curves.png"
    done = subprocess.run([sys.executable, str(SCRIPT), "--run", f"fg={tmp_path / 'fg'}", "--run",
                           f"old={tmp_path / 'old'}", "--at", str(75 / 3600), "--out", str(out)],
                          capture_output=True, text=True, check=True)
    fg = next(line for line in done.stdout.splitlines() if line.startswith("| fg |"))
    old = next(line for line in done.stdout.splitlines() if line.startswith("| old |"))
    assert "recon 0.2500 at 0.02 h | 1.0000 |" in fg  # halfway between steps 50 and 100, body L1 4x
    assert "| - |" in old


def test_table_reads_the_priors_nll_inside_the_body(tmp_path):
    rows = [{"step": 10 * i, "cpu_s": 36.0 * i, "holdout_nll": 3.0 - i, "holdout_nll_body": 5.0 - i} for i in (1, 2)]
    _log(tmp_path / "prior", "prior", rows)
    prior = next(line for line in _curves(tmp_path, f"prior={tmp_path / 'prior'}").splitlines()
                 if line.startswith("| prior |"))
    assert "nll 1.0000 at 0.02 h | 3.0000 |" in prior


def test_a_run_logged_in_pieces_reads_as_one(tmp_path):
    rows = _vq_rows(1.0, [0.30, 0.20, 0.10])
    first, second = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))  # steps 45 to 100
    second.write_text("".join(json.dumps(r) + "\n" for r in rows[3:]))  # the next session repeats step 100
    whole = _log(tmp_path / "whole", "vqvae", rows).parents[2]
    joined = _curves(tmp_path, f"a={first},{second}").splitlines()[-1]
    assert joined == _curves(tmp_path, f"a={whole}").splitlines()[-1]
    assert "| a | vqvae | 150 | 0.04 |" in joined and joined.endswith("| 0.1000 | 0.1000 |")
    prior = _log(tmp_path / "prior", "prior", [{"step": 10, "cpu_s": 36.0, "holdout_nll": 2.5}])
    with pytest.raises(subprocess.CalledProcessError) as err:
        subprocess.run([sys.executable, str(SCRIPT), "--run", f"x={first},{prior}", "--out", str(tmp_path / "c.png")],
                       capture_output=True, text=True, check=True)
    assert "must log one model" in err.value.stderr


def test_held_out_panel_places_each_validation_at_the_campaigns_hours_so_far(tmp_path):
    _log(tmp_path / "vq", "vqvae", _vq_rows(1.0, [0.3, 0.2]))
    runs = [{"cpu_hours": 1.5},
            {"cpu_hours": 0.5, "held_out": {"pixel_ap": 0.004, "baseline_pixel_ap": 0.002, "sample_auroc": 0.7,
                                            "baseline_sample_auroc": 0.55}},
            {"cpu_hours": 2.0},
            {"cpu_hours": 1.0, "held_out": {"pixel_ap": 0.006, "sample_auroc": 0.65}}]
    campaign = tmp_path / "campaign.json"
    campaign.write_text(json.dumps({"campaign": {"runs": runs}}))
    out = _curves(tmp_path, f"vq={tmp_path / 'vq'}", "--held-out", str(campaign), "--goal", "0.05")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "h |" not in line and "0." in line]
    assert rows[-2:] == ["| 2.00 | 0.0040 | 0.0020 | 0.70 | 0.55 |", "| 5.00 | 0.0060 | nan | 0.65 | nan |"]
