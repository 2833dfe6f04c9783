"""Tiled inference: oracles are the whole-image pass and exact pointwise models."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from engine.errors import Cancelled
from engine.events import CancelToken
from engine.media.tiling import (
    SizeRequirement,
    TileScheduler,
    axis_starts,
    is_out_of_memory,
    pad_tile,
    plan_tiles,
    ramp,
)
from tests.tolerances import fp32_tol


def nearest_up(scale):
    def fn(tile: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(tile, scale, axis=1), scale, axis=2)
    return fn


NO_REQUIREMENT = SizeRequirement()


def run(fn, image, *, scale=1, tile=64, overlap=16, requirement=NO_REQUIREMENT, dtype=np.float32,
        max_value=1.0, **kw):
    runner = TileScheduler(fn, scale=scale, channels_out=3, requirement=requirement,
                         tile_size=tile, overlap=overlap, **kw)
    h, w = image.shape[:2]
    out = np.zeros((h * scale, w * scale, 3), dtype)
    runner.run(image, out, max_value=max_value)
    return out, runner.stats


def test_pointwise_models_are_reproduced_exactly_for_any_geometry():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 160, 2))
        scale = int(rng.choice([1, 2, 3]))
        req = SizeRequirement(multiple_of=int(rng.choice([1, 4, 8])), minimum=int(rng.choice([0, 16])))
        image = rng.random((h, w, 3), dtype=np.float32)
        out, _ = run(nearest_up(scale), image, scale=scale, tile=int(rng.integers(8, 96)),
                     overlap=int(rng.integers(0, 40)), requirement=req, min_tile=4)
        expected = np.repeat(np.repeat(image, scale, 0), scale, 1)
        np.testing.assert_allclose(out, expected, atol=1e-6)


def _conv_net():
    torch.manual_seed(0)
    # three 3×3 convs: receptive-field radius 3 input pixels
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.PixelShuffle(2), torch.nn.Sigmoid()).eval()


def _torch_fn(net):
    def fn(tile):
        with torch.inference_mode():
            return net(torch.from_numpy(tile)[None])[0].numpy()
    return fn


def test_conv_net_tiled_equals_whole_image_when_overlap_covers_receptive_field():
    net = _conv_net()
    image = np.random.default_rng(1).random((150, 200, 3), dtype=np.float32)
    whole, stats = run(_torch_fn(net), image, scale=2, tile=4096)
    assert stats.planned == 1
    errors = {}
    for overlap in (4, 12, 16):
        tiled, stats = run(_torch_fn(net), image, scale=2, tile=48, overlap=overlap)
        assert stats.planned > 9
        errors[overlap] = np.abs(tiled - whole).max()
    # zero weight over the outer overlap/4: exact once overlap/4 >= radius 3, up to fp32 order (a
    # 48-px tile and the whole image are other conv shapes): Σ K = 27 + 72 + 72, the net run on
    # |weights| and |pixels| reaches 40, the sigmoid quarters it (tests/tolerances.py): ~2e-4
    exact = fp32_tol(27 + 72 + 72, scale=40).atol / 4
    assert errors[12] < exact and errors[16] < exact
    assert errors[4] > 1e-3  # too little overlap: the seams are visible (the test can fail)


def test_ramp_weights_are_zero_at_inner_edges_and_full_at_image_borders():
    w = ramp(32, True, False, overlap=16, scale=2)
    assert w.shape == (64,)
    assert np.all(w[:8] == 0)  # guard: overlap//4 * scale output pixels
    assert np.all(w[24:] == 1)
    assert np.all(np.diff(w[:24]) >= 0)
    np.testing.assert_array_equal(ramp(32, False, False, 16, 2), np.ones(64, np.float32))


def test_plan_spreads_tiles_evenly_with_required_overlap():
    plan = plan_tiles(2048, 2048, 512, 32)
    starts = list(plan.ys)
    assert starts[0] == 0 and starts[-1] + plan.tile_h == 2048
    assert all(b - a <= plan.tile_h - 32 for a, b in zip(starts, starts[1:]))
    # even spreading wastes far less than a clamped last tile would
    assert len(starts) * plan.tile_h <= 2048 * 1.1
    assert axis_starts(100, 200, 16) == [0]
    aligned = axis_starts(300, 64, 16, align=8)
    assert all(s % 8 == 0 for s in aligned[:-1]) and aligned[-1] == 300 - 64


def test_pad_tile_reflects_then_replicates_and_meets_requirements():
    tile = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    padded = pad_tile(tile, SizeRequirement(multiple_of=8))
    assert padded.shape == (2, 8, 8)
    np.testing.assert_array_equal(padded[:, :3, :5], tile)
    np.testing.assert_array_equal(padded[:, 3, :5], tile[:, 1, :5])  # reflect
    np.testing.assert_array_equal(padded[:, 7, :5], padded[:, 4, :5])  # then edge
    assert SizeRequirement(minimum=16, multiple_of=8).padded_size(5, 20) == (16, 24)
    assert SizeRequirement(multiple_of=4, square=True).padded_size(5, 13) == (16, 16)
    assert SizeRequirement(fixed=(64, 48)).padded_size(30, 40) == (64, 48)
    with pytest.raises(ValueError):
        SizeRequirement(fixed=(64, 48)).padded_size(30, 50)


def test_model_only_ever_sees_required_sizes_and_output_is_cropped_back():
    seen = []

    def strict(tile):
        seen.append(tile.shape[1:])
        assert tile.shape[1] % 8 == 0 and tile.shape[2] % 8 == 0
        return nearest_up(2)(tile)

    image = np.random.default_rng(2).random((37, 53, 3), dtype=np.float32)
    for tile in (4096, 20):
        out, _ = run(strict, image, scale=2, tile=tile, overlap=8,
                     requirement=SizeRequirement(multiple_of=8))
        np.testing.assert_allclose(out, np.repeat(np.repeat(image, 2, 0), 2, 1), atol=1e-6)
    assert (40, 56) in seen  # whole image padded up to multiples of 8


def test_fixed_size_models_get_fixed_tiles():
    def fixed(tile):
        assert tile.shape[1:] == (32, 32)
        return tile

    image = np.random.default_rng(3).random((50, 70, 3), dtype=np.float32)
    out, stats = run(fixed, image, tile=999, overlap=8, requirement=SizeRequirement(fixed=(32, 32)))
    np.testing.assert_allclose(out, image, atol=1e-6)
    assert stats.tile_size == 32


def test_integer_outputs_are_rounded_from_native_depth():
    image16 = np.random.default_rng(4).integers(0, 65536, (40, 30, 3), dtype=np.uint16)
    out, _ = run(nearest_up(1), image16, tile=16, overlap=8, dtype=np.uint16, max_value=65535.0)
    np.testing.assert_array_equal(out, image16)
    image8 = image16.astype(np.uint8)
    out8, _ = run(nearest_up(1), image8, tile=16, overlap=8, dtype=np.uint8, max_value=255.0)
    np.testing.assert_array_equal(out8, image8)


def test_out_of_memory_splits_the_tile_and_later_tiles_use_the_smaller_size():
    calls = []

    def limited(tile):
        calls.append(max(tile.shape[1:]))
        if max(tile.shape[1:]) > 40:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return nearest_up(2)(tile)

    image = np.random.default_rng(5).random((120, 160, 3), dtype=np.float32)
    out, stats = run(limited, image, scale=2, tile=128, overlap=8)
    np.testing.assert_allclose(out, np.repeat(np.repeat(image, 2, 0), 2, 1), atol=1e-6)
    assert stats.halvings >= 1 and stats.tile_size <= 40
    failures = [c for c in calls if c > 40]
    assert len(failures) == stats.halvings  # once halved, no tile is tried at the old size


def test_out_of_memory_at_the_smallest_tile_is_an_error_not_a_loop():
    def always_oom(tile):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(MemoryError, match="out of memory even with"):
        run(always_oom, np.zeros((64, 64, 3), np.float32), tile=64, overlap=8)


def test_other_errors_are_not_mistaken_for_out_of_memory():
    def broken(tile):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(broken, np.zeros((64, 64, 3), np.float32), tile=32, overlap=8)
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : "
                                         "Failed to allocate memory for requested buffer"))
    assert not is_out_of_memory(ValueError("bad value"))


def test_wrong_scale_is_reported_with_the_next_step():
    with pytest.raises(ValueError, match="expected scale ×2"):
        run(nearest_up(3), np.zeros((20, 20, 3), np.float32), scale=2, tile=64)


def test_progress_and_cancel():
    reports = []
    _, stats = run(nearest_up(1), np.zeros((100, 100, 3), np.float32), tile=32, overlap=8,
                   progress=reports.append)
    assert [r.done for r in reports] == list(range(1, stats.planned + 1))
    assert reports[-1].total == stats.planned and reports[-1].unit == "tiles"

    token = CancelToken()

    def cancel_after_first(_):
        token.cancel()

    with pytest.raises(Cancelled):
        run(nearest_up(1), np.zeros((100, 100, 3), np.float32), tile=32, overlap=8,
            progress=cancel_after_first, cancel=token)


def test_memory_stays_bounded_by_one_band_of_tiles():
    """A 1024×1024 image with 128-px tiles: float accumulators never hold the whole image."""
    image = np.zeros((1024, 1024, 3), np.uint8)
    out = np.zeros((1024, 1024, 3), np.uint8)
    runner = TileScheduler(nearest_up(1), scale=1, channels_out=3, tile_size=128, overlap=16)
    tracemalloc.start()
    try:
        runner.run(image, out, max_value=255.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole_float = 1024 * 1024 * 3 * 4  # what a naive float32 accumulator would need: 12 MiB
    band = 128 * 1024 * (3 + 1) * 4  # one band: float32 RGB accumulator + weight map, 2 MiB
    assert peak < band + 2**20  # plus a few tile-sized temporaries
    assert peak < whole_float / 4
