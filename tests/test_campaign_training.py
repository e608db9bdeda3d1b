"""Issue 21's training: EMA codebook, tissue planes, random crops, the foreground holdout L1, crash-safe
checkpoints (SIGKILL), and campaign snapshots that a new machine resumes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mood.config import tiny_preset
from mood.lsr.networks import VQVAE, PixelSNAIL
from mood.lsr.networks.vqvae import rotated_to
from mood.training import Dist, learning_rate, load_checkpoint, save_checkpoint, train_prior, train_vqvae
from mood.training.codebook import CodebookState, ema_update
from mood.training.data import SliceBank, draw_batch, random_crops, sample_batch, tissue_planes
from mood.training.settings import TrainSettings
from mood.training.snapshot import restore_snapshot, save_snapshot
from mood.training.steps import codes_of, evaluate_prior, evaluate_vqvae
from mood.detection.weights import load_prior, load_vqvae

from test_train import SHAPE, _kw, _log, write_heads

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> Path:
    return write_heads(tmp_path_factory.mktemp("heads"))


# -- units ----------------------------------------------------------------------------------
def test_ema_codebook_converges_to_the_means_of_assigned_outputs():
    torch.manual_seed(0)
    model = VQVAE(tiny_preset("brain").vqvae)
    k, dim = model.codebook.weight.shape
    enc = torch.randn(4, dim, 3, 3)  # 36 positions
    codes = torch.arange(36).remainder(3).view(4, 3, 3)  # only codes 0, 1, 2 are assigned
    flat = enc.permute(0, 2, 3, 1).reshape(-1, dim)
    means = torch.stack([flat[codes.flatten() == c].mean(0) for c in range(3)])
    state = CodebookState.empty(k)
    before = model.codebook.weight.detach().clone()
    ema_update(model, state, enc, codes, 0.5, Dist())
    w = model.codebook.weight.detach()
    # one step moves the assigned codes part of the way, from where they were, without a start-up jump
    for c in range(3):
        assert torch.dist(w[c], means[c]) < torch.dist(before[c], means[c])
        assert float(w[c].norm()) < 2 * float(torch.stack([before[c].norm(), means[c].norm()]).max())
    for _ in range(60):
        ema_update(model, state, enc, codes, 0.5, Dist())
    assert torch.allclose(model.codebook.weight.detach()[:3], means, atol=1e-3)
    saved = state.state_dict()
    again = CodebookState.empty(k)
    again.load_state_dict(saved)
    assert torch.equal(again.ema_sum, state.ema_sum) and again.reseeded == state.reseeded


def test_tissue_planes_and_crops_draw_what_they_say():
    slices = torch.zeros(10, 16, 16)
    slices[3:7, 4:12, 4:12] = 1.0  # planes 3..6 hold tissue (25 %)
    slices[8, 0, 0] = 1.0  # one pixel: 0.4 %, below 1 %
    bank = SliceBank("v", slices, torch.linspace(0, 1, 10).view(10, 1))
    planes = tissue_planes(bank, background=0.0)
    assert planes.tolist() == [3, 4, 5, 6]
    x, coord = sample_batch([bank], 64, torch.Generator().manual_seed(0), [planes])
    assert (x.flatten(1).amax(1) == 1).all()  # every drawn plane has tissue
    x_all, _ = sample_batch([bank], 64, torch.Generator().manual_seed(0))
    assert (x_all.flatten(1).amax(1) == 0).any()  # the whole extent includes empty planes
    # every plane allowed draws exactly the same batch as no restriction (same random numbers)
    x_same, _ = sample_batch([bank], 8, torch.Generator().manual_seed(3), [torch.arange(10)])
    assert torch.equal(x_same, sample_batch([bank], 8, torch.Generator().manual_seed(3))[0])

    ramp = torch.arange(16.0).view(1, 16).expand(16, 16) + 100 * torch.arange(16.0).view(16, 1)
    crops = random_crops(ramp.expand(5, 16, 16), 8, torch.Generator().manual_seed(1))
    assert crops.shape == (5, 8, 8)
    for c in crops:  # a window of the slice: corner value says where, the rest follows
        i, j = int(c[0, 0]) // 100, int(c[0, 0]) % 100
        assert torch.equal(c, ramp[i:i + 8, j:j + 8])
    xb, _ = draw_batch([bank], 4, torch.Generator().manual_seed(2), None, torch.device("cpu"), [planes], crop=8)
    assert xb.shape == (4, 8, 8)
    with pytest.raises(ValueError, match="larger"):
        random_crops(ramp.expand(1, 16, 16), 32, torch.Generator())


def test_settings_refuse_unknown_choices():
    with pytest.raises(ValueError, match="codebook_update"):
        TrainSettings(codebook_update="adam")
    with pytest.raises(ValueError, match="planes"):
        TrainSettings(planes="brain")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainSettings(ema_decay=1.0)
    with pytest.raises(ValueError, match="quantiser_gradient"):
        TrainSettings(quantiser_gradient="gumbel")


def test_rotation_trick_keeps_the_codes_values_and_turns_the_gradient_onto_the_encodings():
    torch.manual_seed(0)
    z = torch.randn(3, 8, 4, 4, requires_grad=True)
    e = torch.randn(3, 8, 4, 4)
    out = rotated_to(z, e)
    assert torch.allclose(out, e, atol=1e-5)  # the decoder sees the codes, as with straight-through
    out.backward(e)  # a gradient along each code comes back along its encoding, scaled by |e| / |z|
    zv, ev, gv = (t.movedim(1, -1).reshape(-1, 8) for t in (z.detach(), e, z.grad))
    cos = torch.nn.functional.cosine_similarity(gv, zv, dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-4)
    assert torch.allclose(gv.norm(dim=-1), ev.norm(dim=-1) ** 2 / zv.norm(dim=-1), rtol=1e-4)
    # the straight-through copy would hand back e itself: the two estimators differ
    assert not torch.allclose(gv, ev, atol=1e-2)

    model = VQVAE(tiny_preset("brain").vqvae).eval()
    x, coord = torch.rand(2, 64, 64), torch.rand(2, 1)
    with torch.no_grad():
        plain, q_plain = model(x, coord)
        rotated, q_rot = model(x, coord, rotation=True)
    assert torch.equal(q_plain.codes, q_rot.codes) and torch.allclose(plain, rotated, atol=1e-5)


def test_training_with_the_rotation_trick_learns_another_model(heads, tmp_path):
    kw = _kw(tmp_path, steps=6)
    train_vqvae("brain", heads, tmp_path / "ste", **kw)
    train_vqvae("brain", heads, tmp_path / "rot", quantiser_gradient="rotation", **kw)
    ste, rot = load_vqvae(tmp_path / "ste"), load_vqvae(tmp_path / "rot")
    card = json.loads((tmp_path / "rot" / "card.json").read_text())
    assert card["info"]["training"]["vqvae"]["settings"]["quantiser_gradient"] == "rotation"
    w_ste, w_rot = ste.encoder[0].weight, rot.encoder[0].weight
    assert torch.isfinite(w_rot).all() and not torch.allclose(w_ste, w_rot)


def test_foreground_l1_counts_only_voxels_inside_the_body():
    torch.manual_seed(0)
    model = VQVAE(tiny_preset("brain").vqvae).eval()
    x = torch.zeros(3, 64, 64)
    x[:, 20:40, 10:50] = torch.rand(3, 20, 40) + 0.5
    coord = torch.rand(3, 1)
    metrics = evaluate_vqvae(model, (x, coord), Dist(), TrainSettings(batch_size=2), background=0.0)
    with torch.no_grad():
        recon, _ = model(x, coord)
    err = (recon - x).abs()
    assert metrics["recon_fg"] == pytest.approx(float(err[x != 0].mean()), rel=1e-5)
    assert metrics["recon"] == pytest.approx(float(err.mean()), rel=1e-5)


def test_prior_holdout_nll_inside_the_body_counts_only_cells_mostly_inside_it():
    torch.manual_seed(0)
    config = tiny_preset("brain")
    vq, prior = VQVAE(config.vqvae).eval(), PixelSNAIL(config.prior).eval()
    size, cells = config.vqvae.image_size, config.prior.latent_size
    x = torch.full((3, size, size), config.background)
    x[:, : size // 2] = torch.rand(3, size // 2, size) + 0.5  # the upper half of every slice is body
    coord = torch.rand(3, 1) - 0.5
    metrics = evaluate_prior(prior, (x, coord), Dist(), TrainSettings(batch_size=2), vq=vq, config=config)
    with torch.no_grad():
        codes = codes_of(vq, x, coord)
        per_code = torch.nn.functional.cross_entropy(prior(codes, coord), codes, reduction="none")
    assert metrics["nll"] == pytest.approx(float(per_code.mean()), rel=1e-5)
    assert metrics["nll_body"] == pytest.approx(float(per_code[:, : cells // 2].mean()), rel=1e-5)
    assert metrics["nll_body"] != pytest.approx(metrics["nll"], rel=1e-3)


def test_learning_rate_rewarms_a_fresh_optimiser():
    plain = [learning_rate(s, 1e-3, 10, "cosine", 1000) for s in range(500, 700)]
    rewarmed = [learning_rate(s, 1e-3, 10, "cosine", 1000, rewarm_from=500) for s in range(500, 700)]
    assert rewarmed[0] == pytest.approx(plain[0] / 100)  # at least 100 steps of re-warm-up
    assert rewarmed[50] < plain[50] and rewarmed[150] == plain[150]
    assert learning_rate(499, 1e-3, 10, "cosine", 1000, rewarm_from=500) == learning_rate(499, 1e-3, 10, "cosine", 1000)


# -- checkpoints that survive a kill --------------------------------------------------------
def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = VQVAE(tiny_preset("brain").vqvae)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path, model, opt, {"step": 5}, {"window": torch.ones(3)})
    first = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    import mood.training.checkpoints as ck

    def killed(*a, **k):  # the process dies after the tensor files, before state.json
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, opt, {"step": 10})
    monkeypatch.undo()
    fresh = VQVAE(tiny_preset("brain").vqvae)
    state = load_checkpoint(tmp_path, fresh, torch.optim.Adam(fresh.parameters()))
    assert state["step"] == 5 and torch.equal(state["carried"]["window"], torch.ones(3))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, first[k]), k


def test_legacy_checkpoint_names_still_resume(heads, tmp_path):
    out = tmp_path / "w"
    train_vqvae("brain", heads, out, steps=5, **_kw(tmp_path))
    ckpt = out / "train" / "vqvae"
    state = json.loads((ckpt / "state.json").read_text())
    for name in ("model", "optimizer"):  # as every version before this one wrote them
        (ckpt / state["files"][name]).rename(ckpt / f"{name}.safetensors")
    (ckpt / state["files"]["carried"]).unlink()
    del state["files"], state["rewarm_from"]
    (ckpt / "state.json").write_text(json.dumps(state))
    train_vqvae("brain", heads, out, steps=7, resume=True, **_kw(tmp_path))
    assert json.loads((ckpt / "state.json").read_text())["step"] == 7
    assert not (ckpt / "model.safetensors").exists()  # replaced by the new layout


_TRAIN_FOREVER = """
import sys
from pathlib import Path
from mood.training import train_vqvae
heads, out, cache = map(Path, sys.argv[1:4])
train_vqvae("brain", heads, out, steps=100000, batch_size=4, lr=1e-3, holdout=["head2"], tiny=True,
            device="cpu", seed=0, ckpt_every=2, log_every=1, threads=1, cache_dir=cache,
            volume_shape=(48, 48, 32), codebook_update="ema", resume=True)
"""


def test_sigkill_at_any_moment_loses_at_most_the_steps_since_the_last_checkpoint(heads, tmp_path):
    out = tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ckpt = out / "train" / "vqvae"
    rng = np.random.default_rng(0)
    last_step = 0
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _TRAIN_FOREVER, str(heads), str(out), str(tmp_path / "c")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        # wait until this process has written a checkpoint of its own, then kill it at a random moment
        while not ((ckpt / "state.json").is_file()
                   and json.loads((ckpt / "state.json").read_text())["step"] > last_step):
            assert time.time() < deadline and proc.poll() is None, "the training wrote no checkpoint"
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 1.5)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = json.loads((ckpt / "state.json").read_text())
        logged = [json.loads(line)["step"] for line in (ckpt / "log.jsonl").read_text().splitlines()
                  if line.strip().endswith("}") and '"loss"' in line]
        assert state["step"] > last_step, attempt
        assert max(logged) - state["step"] <= 2 + 1  # ckpt_every, plus the step being logged
        for name in state["files"].values():
            assert (ckpt / name).is_file()
        model = VQVAE(tiny_preset("brain").vqvae)
        model.codebook.weight.requires_grad_(False)  # an EMA codebook is not the optimiser's
        load_checkpoint(ckpt, model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad]))
        last_step = state["step"]
        # resuming drops the rows the killed process logged after its checkpoint: no step twice
        train_vqvae("brain", heads, out, steps=last_step + 1, resume=True, codebook_update="ema",
                    **_kw(tmp_path, cache_dir=tmp_path / "c", ckpt_every=2, threads=1))
        steps = [r["step"] for r in _log(out, "vqvae") if "loss" in r]
        assert len(steps) == len(set(steps)) and steps[-1] == last_step + 1
        last_step += 1


# -- campaign snapshots ---------------------------------------------------------------------
def test_snapshot_is_small_and_resumes_on_a_new_machine(heads, tmp_path):
    run = tmp_path / "run"
    kw = _kw(tmp_path, ckpt_every=4)
    train_vqvae("brain", heads, run, steps=8, codebook_update="ema", schedule="cosine", **kw)
    train_prior("brain", heads, run, vqvae=run, steps=6, **kw)
    snap = tmp_path / "snap"
    big = save_snapshot({"vqvae": run, "prior": run}, snap, budget_mb=50)
    assert big["vqvae"]["moments"] and big["prior"]["moments"]
    assert (snap / "prior" / "vqvae" / "card.json").is_file() and load_vqvae(snap / "prior" / "vqvae")
    state = json.loads((snap / "vqvae" / "state.json").read_text())
    assert state["step"] == 8 and state["cpu_s"] > 0 and "rewarm_from" in state
    logged = [json.loads(line) for line in (snap / "vqvae" / "log.jsonl").read_text().splitlines()]
    assert logged and all("holdout_recon" in r for r in logged)
    assert str(tmp_path) not in "".join(p.read_text() for p in snap.rglob("*.json"))
    from safetensors.torch import load_file
    assert all(v.dtype == torch.float16 for v in load_file(str(snap / "vqvae" / "model.safetensors")).values()
               if v.is_floating_point() and v.numel() > 1)

    # a new machine: restore, resume; step, CPU time and the codebook statistics go on
    new = tmp_path / "new"
    restore_snapshot(snap, new / "vq", "vqvae")
    train_vqvae("brain", heads, new / "vq", steps=10, resume=True, codebook_update="ema", schedule="cosine", **kw)
    rows = [r for r in _log(new / "vq", "vqvae") if "loss" in r]
    assert [r["step"] for r in rows] == [9, 10]
    assert rows[0]["cpu_s"] > state["cpu_s"]
    assert rows[0]["reseeded_total"] >= json.loads((run / "train" / "vqvae" / "log.jsonl").read_text()
                                                   .splitlines()[-2])["reseeded_total"]
    assert rows[0]["lr"] == pytest.approx(learning_rate(8, kw["lr"], 0, "cosine", 10), rel=1e-5)  # no re-warm
    load_vqvae(new / "vq")  # the first checkpoint after a restore exported weights
    restore_snapshot(snap, new / "p", "prior")
    train_prior("brain", heads, new / "p", vqvae=new / "p" / "frozen-vqvae", steps=7, resume=True, **kw)
    load_prior(new / "p")
    with pytest.raises(ValueError, match="already holds"):
        restore_snapshot(snap, new / "vq", "vqvae")

    # within a small budget the moments stay out, and the resumed run re-warms a fresh optimiser
    model_bytes = sum(f.stat().st_size for f in (snap / "vqvae").glob("model.safetensors"))
    small = save_snapshot({"vqvae": run}, tmp_path / "small", budget_mb=2.2 * model_bytes / 2**20)
    assert not small["vqvae"]["moments"]
    assert sum(f.stat().st_size for f in (tmp_path / "small").rglob("*") if f.is_file()) <= 2.2 * model_bytes + 20_000
    restore_snapshot(tmp_path / "small", new / "vq2", "vqvae")
    train_vqvae("brain", heads, new / "vq2", steps=10, resume=True, codebook_update="ema", schedule="cosine", **kw)
    first = [r for r in _log(new / "vq2", "vqvae") if "loss" in r][0]
    assert first["lr"] == pytest.approx(learning_rate(8, kw["lr"], 0, "cosine", 10) / 100, rel=1e-5)
    with pytest.raises(ValueError, match="budget"):
        save_snapshot({"vqvae": run}, tmp_path / "tiny", budget_mb=0.001)
