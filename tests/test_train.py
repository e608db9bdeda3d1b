"""Training: a tiny model end to end on synthetic volumes, checkpoints, resume, DDP (gloo, 2 processes)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mood.config import tiny_preset
from mood.lsr.networks import VQVAE
from mood.training import (
    Dist,
    code_stats,
    init_weights,
    kmeans,
    learning_rate,
    load_checkpoint,
    reseed_dead_codes,
    save_checkpoint,
    train_prior,
    train_vqvae,
)
from mood.training.data import (
    fixed_batch,
    load_banks,
    sample_batch,
    split_files,
    volume_to_bank,
)
from mood.detection.weights import load_prior, load_vqvae, read_card

from conftest import make_head

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (48, 48, 32)
S = tiny_preset("brain").vqvae.image_size


def write_heads(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        nib.save(nib.Nifti1Image(make_head(i, SHAPE), np.eye(4)), str(folder / f"head{i}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> Path:
    return write_heads(tmp_path_factory.mktemp("heads"))


def _kw(tmp: Path, **extra):
    kw = {"batch_size": 4, "lr": 1e-3, "holdout": ["head2"], "tiny": True, "device": "cpu", "seed": 0,
          "ckpt_every": 5, "log_every": 1, "threads": 2, "cache_dir": tmp / "cache", "volume_shape": SHAPE}
    kw.update(extra)
    return kw


def _log(out: Path, kind: str) -> list[dict]:
    return [json.loads(l) for l in (out / "train" / kind / "log.jsonl").read_text().splitlines()]


# -- data -----------------------------------------------------------------------------------
def test_split_and_banks(heads, tmp_path):
    train, held = split_files(heads, ["head2"])
    assert [p.name for p in train] == ["head0.nii.gz", "head1.nii.gz"]
    assert [p.name for p in held] == ["head2.nii.gz"]
    with pytest.raises(ValueError, match="match no file"):
        split_files(heads, ["nope"])
    with pytest.raises(ValueError, match="nothing left"):
        split_files(heads, ["head0", "head1", "head2"])
    cfg = tiny_preset("brain")
    tr, ho = load_banks(heads, cfg, ["head2"], tmp_path / "c", SHAPE)
    assert len(tr) == 2 and len(ho) == 1
    assert tr[0].slices.shape == (SHAPE[2], S, S) and tr[0].positions.shape == (SHAPE[2], 1)
    assert list((tmp_path / "c").glob("*.safetensors"))  # cached
    tr2, _ = load_banks(heads, cfg, ["head2"], tmp_path / "c", SHAPE)  # from the cache
    assert torch.equal(tr[0].slices, tr2[0].slices)
    x, c = sample_batch(tr, 5, torch.Generator().manual_seed(0))
    assert x.shape == (5, S, S) and c.shape == (5, 1)
    ex, ec = fixed_batch(ho, 4)
    assert ex.shape == (4, S, S) and ec.shape == (4, 1)


def test_bank_matches_inference_pipeline():
    """Every plane of the bank is what extract_slices + normalise give at inference."""
    from mood.common.slicing import extract_slices, normalise, slice_grid

    cfg = tiny_preset("brain")
    vol = make_head(0, SHAPE)
    bank = volume_to_bank(vol, cfg, "v")
    grid = slice_grid(vol.shape, 8)
    t = torch.from_numpy(vol)
    want = normalise(extract_slices(t, grid, S), t, cfg)
    assert torch.allclose(bank.slices[list(grid.indices)], want, atol=1e-6)
    assert torch.allclose(bank.positions[list(grid.indices)], grid.positions)


# -- helpers --------------------------------------------------------------------------------
def test_learning_rate_and_code_stats():
    assert learning_rate(0, 1e-4, 0) == 1e-4
    assert learning_rate(0, 1e-4, 10) == pytest.approx(1e-5)
    assert learning_rate(50, 1e-4, 10) == 1e-4
    cosine = [learning_rate(i, 1e-4, 10, "cosine", 110) for i in range(0, 111, 10)]
    assert cosine[0] == pytest.approx(1e-5)  # warm-up first
    assert cosine[1] == pytest.approx(1e-4) and cosine[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(cosine[1:], cosine[2:]))
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(5, 1e-4, 0, "step", 10)
    used, ppl = code_stats(torch.tensor([5.0, 5.0, 0.0, 0.0]))
    assert used == 2 and ppl == pytest.approx(2.0)


def test_kmeans_finds_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    found = kmeans(x, 3, 10, g)
    assert torch.cdist(centres, found).min(1).values.max() < 0.5


def test_reseed_dead_codes_resets_rows_and_moments():
    model = VQVAE(tiny_preset("brain").vqvae)
    opt = torch.optim.Adam(model.parameters())
    model.codebook.weight.sum().backward()
    opt.step()
    before = model.codebook.weight.detach().clone()
    dead = torch.zeros(model.config.n_codes, dtype=torch.bool)
    dead[[1, 5]] = True
    enc = torch.randn(2, model.config.code_dim, 4, 4) + 100
    n = reseed_dead_codes(model, opt, dead, enc, torch.Generator().manual_seed(0), Dist())
    assert n == 2
    w = model.codebook.weight.detach()
    assert torch.equal(w[~dead], before[~dead])
    assert (w[dead] > 50).all()  # taken from the encodings
    assert (opt.state[model.codebook.weight]["exp_avg"][dead] == 0).all()


def test_checkpoint_roundtrip(tmp_path):
    model = VQVAE(tiny_preset("brain").vqvae)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    out, _ = model(torch.randn(2, S, S), torch.zeros(2, 1))
    out.mean().backward()
    opt.step()
    save_checkpoint(tmp_path, model, opt, {"step": 7, "elapsed_s": 1.0})
    m2 = VQVAE(tiny_preset("brain").vqvae)
    o2 = torch.optim.Adam(m2.parameters(), lr=1.0)
    state = load_checkpoint(tmp_path, m2, o2)
    assert state["step"] == 7 and o2.param_groups[0]["lr"] == 3e-4
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    k = next(iter(opt.state))
    k2 = next(iter(o2.state))
    assert torch.equal(opt.state[k]["exp_avg"], o2.state[k2]["exp_avg"])
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


def test_init_weights_loads(tmp_path):
    out = init_weights("abdom", tmp_path / "w", tiny=True, seed=1)
    card = read_card(out)
    assert card.config.region == "abdom" and card.info["random_init"]
    load_vqvae(out)
    load_prior(out)


# -- end to end -----------------------------------------------------------------------------
def test_vqvae_and_prior_train_resume_and_load(heads, tmp_path):
    out = tmp_path / "w"
    train_vqvae("brain", heads, out, steps=20, **_kw(tmp_path))
    log = [r for r in _log(out, "vqvae") if "loss" in r]
    first = np.mean([r["loss"] for r in log[:5]])
    last = np.mean([r["loss"] for r in log[-5:]])
    assert last < first, (first, last)
    assert all("codes_used" in r and "perplexity" in r and "elapsed_s" in r for r in log)
    assert any("holdout_recon" in r for r in _log(out, "vqvae"))
    load_vqvae(out)
    card = read_card(out)
    info = card.info["training"]["vqvae"]
    assert info["train_files"] == ["head0.nii.gz", "head1.nii.gz"]
    assert info["holdout_files"] == ["head2.nii.gz"]
    # the weights are those of the checkpoint with the lowest holdout loss so far, at every point
    ckpts = [r for r in _log(out, "vqvae") if r.get("event")]
    running = np.minimum.accumulate([r["holdout_recon"] for r in ckpts])
    assert [r["exported"] for r in ckpts] == [True] + list(running[1:] < running[:-1])
    assert info["steps"] == [r["step"] for r in ckpts if r["exported"]][-1]
    assert info["selected_by"] == "lowest holdout recon"

    # an existing run is never silently overwritten; resume continues the step count and the log
    with pytest.raises(ValueError, match="resume"):
        train_vqvae("brain", heads, out, steps=23, **_kw(tmp_path))
    n_before = len(_log(out, "vqvae"))
    train_vqvae("brain", heads, out, steps=23, resume=True, **_kw(tmp_path))
    log2 = _log(out, "vqvae")
    assert len(log2) > n_before and log2[:n_before] == _log(out, "vqvae")[:n_before]
    steps = [r["step"] for r in log2 if "loss" in r]
    assert steps[-1] == 23 and max(steps[:len(log)]) == 20
    assert json.loads((out / "train" / "vqvae" / "state.json").read_text())["step"] == 23
    # the checkpoint: tensor files named by their step, state.json naming them (the commit point)
    assert sorted(p.name for p in (out / "train" / "vqvae").iterdir()) == [
        "carried-23.safetensors", "log.jsonl", "model-23.safetensors", "optimizer-23.safetensors", "state.json"]
    state = json.loads((out / "train" / "vqvae" / "state.json").read_text())
    assert sorted(state) == ["best", "config", "cpu_s", "elapsed_s", "files", "optimizer", "rewarm_from",
                             "settings", "step"]
    assert state["rewarm_from"] is None
    assert sorted(state["optimizer"]) == ["param_groups", "scalars", "shapes"]
    assert {"step", "lr", "loss", "recon", "codebook", "commit", "codes_used", "perplexity", "reseeded",
            "reseeded_total", "step_s", "elapsed_s", "cpu_s"} == set(log[0])

    pout = tmp_path / "wp"
    train_prior("brain", heads, pout, vqvae=out, steps=12, **_kw(tmp_path))
    plog = [r for r in _log(pout, "prior") if "loss" in r]
    assert np.mean([r["loss"] for r in plog[-3:]]) < np.mean([r["loss"] for r in plog[:3]])
    load_vqvae(pout)
    load_prior(pout)
    pcard = read_card(pout)
    pckpts = [r for r in _log(pout, "prior") if r.get("event")]
    assert pcard.info["training"]["prior"]["steps"] == [r["step"] for r in pckpts if r["exported"]][-1]
    assert pcard.info["training"]["vqvae"]["steps"] == read_card(out).info["training"]["vqvae"]["steps"]
    assert pcard.lambda_s is None  # calibration is reset by training
    with pytest.raises(ValueError, match="tiny"):
        train_prior("brain", heads, tmp_path / "x", vqvae=out, steps=1, **_kw(tmp_path, tiny=False))


def test_narrow_vqvae_trains_its_prior_and_loads(heads, tmp_path):
    """--width builds a narrower VQ-VAE; the card carries it, so the prior and the loader follow it;
    every log line counts CPU seconds."""
    from mood.config import is_tiny, narrow, region_preset

    out = train_vqvae("brain", heads, tmp_path / "vq", steps=2, width=0.5, **_kw(tmp_path))
    card = read_card(out)
    assert card.config == narrow(tiny_preset("brain"), 0.5)
    assert card.config.vqvae.channels != tiny_preset("brain").vqvae.channels
    assert load_vqvae(out).config.channels == card.config.vqvae.channels
    assert card.info["training"]["vqvae"]["tiny"] is True  # narrowed tiny twin: still tiny
    assert is_tiny(card.config) and not is_tiny(narrow(region_preset("brain"), 0.5))
    pout = train_prior("brain", heads, tmp_path / "p", vqvae=out, steps=2, schedule="cosine", **_kw(tmp_path))
    assert load_vqvae(pout).config.channels == card.config.vqvae.channels
    load_prior(pout)
    steps = [r for r in _log(pout, "prior") if "lr" in r]
    assert steps and all(r["cpu_s"] > 0 for r in steps)


def test_finer_cells_and_fewer_codes_reach_the_prior_and_the_detector(heads, tmp_path):
    """--cell/--codes build the VQ-VAE's latent; the prior learns that grid of that many codes, and
    the scoring pipeline runs on it unchanged."""
    from mood.config import relatent
    from mood.detection.detector import Detector

    vq = train_vqvae("brain", heads, tmp_path / "vq", steps=1, cell=4, codes=8, **_kw(tmp_path))
    config = read_card(vq).config
    assert config == relatent(tiny_preset("brain"), cell=4, codes=8)
    out = train_prior("brain", heads, tmp_path / "p", vqvae=vq, steps=1, **_kw(tmp_path))
    assert read_card(out).config.prior == config.prior
    det = Detector.load("brain", out, device="cpu")
    volume = np.zeros((64, 64, 64), np.float32)
    volume[12:52, 10:54, 14:50] = 1.0
    s = det.slices(volume, n_slices=2)
    codes = det.encode(s)
    assert codes.shape[-2:] == (16, 16) and int(codes.max()) < 8
    scores = det.score(volume, "pixel", "lsr")
    assert scores.shape == volume.shape and np.isfinite(scores).all()


def test_resized_prior_is_what_its_card_and_loader_say(heads, tmp_path):
    """--prior-channels/--prior-blocks/--prior-dropout reach the trained prior, its card and its loader;
    the VQ-VAE is left as it was."""
    vq = train_vqvae("brain", heads, tmp_path / "vq", steps=1, **_kw(tmp_path))
    out = train_prior("brain", heads, tmp_path / "p", vqvae=vq, steps=1, prior_channels=24, prior_blocks=1,
                      prior_dropout=0.3, **_kw(tmp_path))
    prior = read_card(out).config.prior
    assert (prior.channels, prior.n_blocks, prior.dropout) == (24, 1, 0.3)
    assert read_card(out).config.vqvae == read_card(vq).config.vqvae
    model = load_prior(out)
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert dropouts and set(dropouts) == {0.3}
    # fine-tuned with another dropout: the same weights' shapes, so --init-from takes it; other channels do not
    again = train_prior("brain", heads, tmp_path / "p2", vqvae=vq, steps=1, prior_channels=24, prior_blocks=1,
                        prior_dropout=0.1, init_from=out, **_kw(tmp_path))
    assert read_card(again).config.prior.dropout == 0.1
    with pytest.raises(ValueError, match="architecture differs"):
        train_prior("brain", heads, tmp_path / "p3", vqvae=vq, steps=1, prior_channels=32, prior_blocks=1,
                    init_from=out, **_kw(tmp_path))


def test_bf16_steps_are_bfloat16_and_close_to_float32(heads, tmp_path):
    """--bf16 changes the numbers of a step (so the forward pass ran in bfloat16) but not by much;
    both models train under it, and the settings in the card say so."""
    def first_loss(kind: str, out: Path) -> float:
        return next(r["loss"] for r in _log(out, kind) if "loss" in r)

    fp32 = train_vqvae("brain", heads, tmp_path / "f", steps=1, **_kw(tmp_path))
    bf16 = train_vqvae("brain", heads, tmp_path / "b", steps=1, bf16=True, **_kw(tmp_path))
    a, b = first_loss("vqvae", fp32), first_loss("vqvae", bf16)
    assert a != b and abs(a - b) < 0.03 * a
    assert read_card(bf16).info["training"]["vqvae"]["settings"]["bf16"] is True
    p32 = train_prior("brain", heads, tmp_path / "pf", vqvae=fp32, steps=1, **_kw(tmp_path))
    p16 = train_prior("brain", heads, tmp_path / "pb", vqvae=fp32, steps=1, bf16=True, **_kw(tmp_path))
    a, b = first_loss("prior", p32), first_loss("prior", p16)
    assert a != b and abs(a - b) < 0.03 * a
    assert load_prior(p16).head_up.weight.dtype == torch.float32  # weights stay float32


@pytest.mark.parametrize("has_units", [True, False])
def test_bf16_without_bfloat16_units_says_it_is_slow(heads, tmp_path, monkeypatch, caplog, has_units):
    """On an AVX2-only CPU bfloat16 autocast is emulated (7-10x slower): training warns, and only there."""
    monkeypatch.setattr("mood.training.loop.cpu_has_bfloat16", lambda: has_units)
    with caplog.at_level("WARNING"):
        train_vqvae("brain", heads, tmp_path / "b", steps=1, bf16=True, **_kw(tmp_path))
    assert ("without bfloat16 units" in caplog.text) is not has_units


def test_init_from_starts_from_given_weights(heads, tmp_path):
    """--init-from loads the given models (lr 0 leaves their parameters as they were; batch-norm
    statistics move in training mode) and records where from."""
    start = tmp_path / "start"
    train_vqvae("brain", heads, start, steps=2, **_kw(tmp_path))
    train_prior("brain", heads, start / "p", vqvae=start, steps=2, **_kw(tmp_path))
    vq_out, prior_out = tmp_path / "vq", tmp_path / "prior"
    train_vqvae("brain", heads, vq_out, steps=1, init_from=start, **_kw(tmp_path, lr=0.0))
    train_prior("brain", heads, prior_out, vqvae=start, steps=1, init_from=start / "p", **_kw(tmp_path, lr=0.0))
    for before, after in ((load_vqvae(start), load_vqvae(vq_out)), (load_prior(start / "p"), load_prior(prior_out))):
        trained = dict(after.named_parameters())
        for name, a in before.named_parameters():
            assert torch.equal(a, trained[name]), name
    info = read_card(prior_out).info
    note = info["training"]["prior"]["init_from"]
    assert note["weights"] == "p" and note["steps"] == 2
    shards = sorted((start / "p").glob("prior-*.safetensors"))
    assert note["sha256"] == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in shards} and shards
    assert info["training"]["prior"]["vqvae_from"]["weights"] == "start"
    data = info["training"]["vqvae"]["data"]
    assert data["folder"] == heads.name and sorted(data["sha256"]) == sorted(f.name for f in heads.iterdir())
    # provenance without machine paths: nothing in the card names the folders of this machine
    assert str(tmp_path) not in json.dumps(info) and str(heads) not in json.dumps(info)
    with pytest.raises(ValueError, match="architecture"):
        train_vqvae("abdom", heads, tmp_path / "abd", steps=1, init_from=start, **_kw(tmp_path, lr=0.0))


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_training_matches_eager(heads, tmp_path):
    """--compile trains the same model: the first step's loss equals eager's, weights are written."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train_prior_args = dict(steps=2, **_kw(tmp_path, ckpt_every=100))
    vq = tmp_path / "vq"
    train_vqvae("brain", heads, vq, steps=1, **_kw(tmp_path))
    train_prior("brain", heads, eager, vqvae=vq, **train_prior_args)
    train_prior("brain", heads, compiled, vqvae=vq, compile=True, **train_prior_args)
    first = [[r for r in _log(out, "prior") if "loss" in r][0] for out in (eager, compiled)]
    assert first[0]["loss"] == pytest.approx(first[1]["loss"], rel=1e-3)
    assert read_card(compiled).info["training"]["prior"]["settings"]["compile"] is True
    load_prior(compiled)


def test_sigterm_checkpoints_and_exits(heads, tmp_path):
    """A SIGTERM finishes the step, writes a checkpoint and returns."""
    import signal
    import threading

    out = tmp_path / "w"
    log = out / "train" / "vqvae" / "log.jsonl"
    done = threading.Event()

    def stop_after_first_step() -> None:  # the handler is installed before step 1 is logged
        while not done.is_set():
            if log.is_file() and log.read_text().strip():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=stop_after_first_step, daemon=True)
    thread.start()
    try:
        train_vqvae("brain", heads, out, steps=100_000, **_kw(tmp_path, ckpt_every=10_000))
    finally:
        done.set()
    state = json.loads((out / "train" / "vqvae" / "state.json").read_text())
    assert 0 < state["step"] < 100_000
    assert _log(out, "vqvae")[-1]["event"] == "final"
    load_vqvae(out)


def test_ddp_two_processes_gloo(heads, tmp_path):
    """torchrun with 2 CPU processes (gloo): trains, logs once, writes loadable weights."""
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from mood.training import train_vqvae\n"
        f"train_vqvae('brain', {str(heads)!r}, {str(out)!r}, steps=4, batch_size=4, lr=1e-3, "
        "holdout=['head2'], tiny=True, device='cpu', seed=0, ckpt_every=2, log_every=1, threads=1, "
        f"cache_dir={str(tmp_path / 'cache')!r}, volume_shape={SHAPE!r})\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script)], check=False, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [r for r in _log(out, "vqvae") if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # rank 0 only
    card = read_card(out)
    assert card.info["training"]["vqvae"]["world_size"] == 2
    load_vqvae(out)
