"""scripts/reconstructions.py: held-out planes and each VQ-VAE's reconstruction in one picture."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import head_phantom, make_weights, write_nifti

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reconstructions.py"


def test_one_row_per_model_and_refusal_of_a_missing_folder(tmp_path):
    vol = write_nifti(tmp_path / "head.nii.gz", head_phantom((40, 36, 20), seed=1))
    a, b = make_weights(tmp_path / "a", "brain", seed=0), make_weights(tmp_path / "b", "brain", seed=1)
    out = tmp_path / "r.png"
    run = subprocess.run([sys.executable, str(SCRIPT), "--volume", str(vol),
                          "--weights", f"a={a}", "--weights", f"b={b}", "--slices", "3", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    from PIL import Image

    w, h = Image.open(out).size
    assert h > w  # three rows (input, a, b) of three planes: taller than wide
    bad = subprocess.run([sys.executable, str(SCRIPT), "--volume", str(vol),
                          "--weights", f"x={tmp_path / 'none'}", "--out", str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and not (tmp_path / "x.png").exists()
