"""Batches made on the training device: the same numbers as the CPU path, prefetched in order."""
from __future__ import annotations

import pytest
import torch

from mood.config import tiny_preset
from mood.training.batches import BatchStream, banks_on
from mood.training.data import SliceBank, draw_batch, step_generator, tissue_planes

S = tiny_preset("brain").vqvae.image_size
AUG = tiny_preset("brain").augmentation


def _banks(depths=(7, 12, 5)) -> list[SliceBank]:
    g = torch.Generator().manual_seed(1)
    banks = []
    for i, depth in enumerate(depths):
        slices = torch.randn(depth, S, S, generator=g)
        slices[:, : S // 4] = AUG.background  # some background, which augmentation keeps
        banks.append(SliceBank(f"v{i}", slices, torch.linspace(-0.5, 0.5, depth).view(depth, 1)))
    return banks


def test_banks_on_is_one_tensor_of_views():
    banks = _banks()
    held = banks_on(banks, torch.device("cpu"))
    assert [(b.name, b.depth) for b in held] == [(b.name, b.depth) for b in banks]
    for a, b in zip(banks, held):
        assert torch.equal(a.slices, b.slices) and torch.equal(a.positions, b.positions)
    storage = held[0].slices.untyped_storage().data_ptr()
    assert all(b.slices.untyped_storage().data_ptr() == storage for b in held)
    assert held[2].slices.data_ptr() - held[0].slices.data_ptr() == (7 + 12) * S * S * 4


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("aug, tissue, crop", [(AUG, False, 0), (None, False, 0), (AUG, True, S // 2)])
def test_stream_gives_the_cpu_paths_batches(prefetch, aug, tissue, crop):
    """Bit for bit draw_batch on the original banks, step after step, generator state included."""
    banks = _banks()
    for b in banks:
        b.slices[::3] = AUG.background  # empty planes, which tissue-only sampling skips
    planes = [tissue_planes(b, AUG.background) for b in banks] if tissue else None
    with BatchStream(banks, 6, aug, torch.device("cpu"), seed=3, rank=1, prefetch=prefetch,
                     planes=planes, crop=crop) as stream:
        for step in (0, 1, 2, 3, 7, 8):  # in order, then a jump (the prepared step 4 is not used)
            gen, x, coord = stream(step)
            want_gen = step_generator(3, 1, step)
            want_x, want_coord = draw_batch(banks, 6, want_gen, aug, torch.device("cpu"), planes, crop)
            assert x.shape == (6, crop or S, crop or S) and coord.shape == (6, 1)
            assert torch.equal(x, want_x) and torch.equal(coord, want_coord)
            assert torch.equal(gen.get_state(), want_gen.get_state())  # what the step draws next agrees
    assert not torch.equal(stream.draw(0)[1], stream.draw(1)[1])  # steps differ


def test_stream_prefetches_only_off_the_cpu_by_default():
    assert not BatchStream(_banks(), 2, None, torch.device("cpu"), seed=0).prefetch
    assert BatchStream(_banks(), 2, None, torch.device("cpu"), seed=0, prefetch=True).prefetch


def test_stream_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="batch size"):
        BatchStream(_banks(), 0, None, torch.device("cpu"), seed=0)


def test_stream_mixes_no_cpu_tensor_into_another_devices_batch():
    """On PyTorch's meta device (shapes only), as on a GPU, a CPU tensor that meets the batch raises."""
    banks = _banks()
    planes = [tissue_planes(b, AUG.background) for b in banks]
    with BatchStream(banks, 6, AUG, torch.device("meta"), seed=0, prefetch=True, planes=planes,
                     crop=S // 2) as stream:
        for step in range(2):
            gen, x, coord = stream(step)
            assert x.device.type == "meta" and x.shape == (6, S // 2, S // 2) and coord.shape == (6, 1)
            assert gen.device.type == "cpu"  # every random number from the CPU generator


@pytest.mark.gpu
def test_stream_on_a_gpu_matches_the_cpu_up_to_rounding():
    banks = _banks()
    cpu = BatchStream(banks, 8, AUG, torch.device("cpu"), seed=0)
    with BatchStream(banks, 8, AUG, torch.device("cuda"), seed=0) as gpu:
        for step in range(3):
            _, x, coord = gpu(step)
            _, want_x, want_coord = cpu(step)
            assert x.device.type == "cuda"
            assert torch.equal(coord.cpu(), want_coord)
            assert torch.allclose(x.cpu(), want_x, atol=1e-4)
