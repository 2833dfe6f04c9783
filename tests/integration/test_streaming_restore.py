"""Streamed restoration (engine.tasks.restore_stream): the in-memory result, bit for bit,
in memory bounded by a band of rows, through the job path too (issue 16)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.media.image import read_image, write_image
from tests.fixtures import tiny_restorers as tr

pytest.importorskip("pyvips", reason="the `large` extra (tests/run.sh installs it)")

from engine.media import large_image  # noqa: E402
from engine.media.large_image import open_large_image, stream_pixel_limit  # noqa: E402
from engine.tasks.restore import restore  # noqa: E402
from engine.tasks.restore_stream import restore_to_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compact():
    return tr.spandrel_runner(tr.compact_descriptor(scale=2))


def photo(h: int, w: int, dtype=np.uint8, channels: int = 3) -> np.ndarray:
    from skimage import data

    base = np.tile(data.astronaut(), (h // 512 + 1, w // 512 + 1, 1))[:h, :w]
    if channels == 4:
        alpha = np.linspace(0, 255, w, dtype=np.float32)[None].repeat(h, 0)
        base = np.concatenate([base, alpha.astype(np.uint8)[..., None]], axis=2)
    if dtype == np.uint16:  # real 16-bit detail below the 8-bit step
        noise = np.random.default_rng(0).integers(0, 257, base.shape)
        return np.clip(base.astype(np.int64) * 257 + noise - 128, 0, 65535).astype(np.uint16)
    return np.ascontiguousarray(base)


def whole(loaded) -> np.ndarray:
    return loaded.array if loaded.alpha is None else np.concatenate(
        [loaded.array, loaded.alpha[..., None]], axis=2)


@pytest.mark.slow
def test_streamed_equals_in_memory_on_a_large_photo(compact, tmp_path):
    source = tmp_path / "photo.png"
    write_image(source, photo(2000, 3000))
    in_memory = restore(compact, read_image(source), tile_size=512, tile_overlap=32)
    done = restore_to_file(compact, open_large_image(source), tmp_path / "out.png",
                           tile_size=512, tile_overlap=32)
    assert done.size == (6000, 4000) and done.info["streamed"] and done.info["tiles"] > 20
    np.testing.assert_array_equal(read_image(tmp_path / "out.png").array, in_memory.image)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temps


@pytest.mark.parametrize(("dtype", "channels", "suffix", "border"), [
    (np.uint16, 3, ".png", 0), (np.uint8, 4, ".png", 0), (np.uint16, 4, ".tif", 0),
    (np.uint8, 3, ".tif", 3),
])
def test_depth_alpha_and_border_context_match_in_memory(tmp_path, dtype, channels, suffix,
                                                        border):
    runner = tr.spandrel_runner(tr.compact_descriptor(scale=2))
    if border:  # a model of unpadded convolutions: border context comes from the file
        runner = _CroppedRunner(runner, border)
        runner.card = dataclasses.replace(runner.card, sidecar={"border": border,
                                                                "border_mode": "reflect"})
    source = tmp_path / f"in{suffix}"
    write_image(source, photo(203, 317, dtype, channels))
    in_memory = restore(runner, read_image(source), tile_size=64, tile_overlap=16)
    target = tmp_path / f"out{suffix}"
    done = restore_to_file(runner, open_large_image(source), target, tile_size=64,
                           tile_overlap=16)
    got = whole(read_image(target))
    assert got.dtype == dtype and done.info["bit_depth"] == (16 if dtype == np.uint16 else 8)
    np.testing.assert_array_equal(got, in_memory.image)


class _CroppedRunner:
    """The runner's output less `border` input pixels per side: what a model of unpadded
    convolutions returns (the real model, cropped — the sidecar says border = N)."""

    def __init__(self, inner, border: int) -> None:
        self.inner, self.border = inner, border
        self.card, self.placement = inner.card, inner.placement
        self.descriptor, self.module, self.notes = inner.descriptor, inner.module, []

    def forward(self, inputs):
        out = self.inner.forward(inputs)
        crop = self.border * 2  # ×2 model
        return {k: v[..., crop:-crop, crop:-crop] for k, v in out.items()}


def test_rotated_images_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo(40, 60)).save(path, exif=exif)
    with pytest.raises(InputError, match="EXIF orientation \\(6\\)"):
        open_large_image(path)


def test_pixel_limit_grows_only_from_the_default(tmp_path):
    assert stream_pixel_limit(None) == large_image.STREAM_PIXEL_LIMIT
    assert stream_pixel_limit(178_956_970) == large_image.STREAM_PIXEL_LIMIT
    assert stream_pixel_limit(5_000) == 5_000  # lowered on purpose: kept
    path = tmp_path / "a.png"
    write_image(path, photo(100, 100))
    with pytest.raises(InputError, match="pixel limit"):
        open_large_image(path, pixel_limit=5_000)


def test_a_restore_job_streams_large_inputs(tmp_path, monkeypatch):
    """Through run_job: the large input is streamed (its record says so), the small one is
    not, and both equal restore() of the decoded image."""
    import torch

    from engine.catalog.local_import import import_model
    from engine.jobs.job_loop import run_job
    from engine.jobs.spec import JobSpec

    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(large_image, "STREAM_MIN_PIXELS", 150 * 150)
    descriptor = tr.compact_descriptor(scale=2)
    torch.save(descriptor.model.state_dict(), tmp_path / "compact.pth")
    card = import_model(tmp_path / "compact.pth", task="restore")
    inputs = tmp_path / "in"
    write_image(inputs / "big.png", photo(180, 210, np.uint16))
    write_image(inputs / "small.png", photo(60, 70))
    summary = run_job(JobSpec("restore", card.id, [str(inputs)], str(tmp_path / "out")))
    assert summary.failed == 0 and summary.done == 2
    runner = tr.spandrel_runner(descriptor)
    for name, streamed in (("big", True), ("small", False)):
        record = json.loads((tmp_path / "out" / f"{name}.restore.json").read_text())
        assert record.get("streamed", False) is streamed
        got = read_image(tmp_path / "out" / record["outputs"]["restored"]).array
        np.testing.assert_array_equal(got, restore(runner, read_image(inputs / f"{name}.png"),
                                                   tile_size=record["tile_size"]).image)


_PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from engine.media.large_image import open_large_image
    from engine.tasks.restore_stream import restore_to_file
    from tests.fixtures import tiny_restorers as tr

    runner = tr.spandrel_runner(tr.compact_descriptor(scale=2, num_feat=4, num_conv=1))
    restore_to_file(runner, open_large_image(sys.argv[1]), sys.argv[2], tile_size=512)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
""")


def _peak_kib(source: Path, target: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(source), str(target)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_is_bounded_by_a_band_not_the_image(tmp_path):
    """8000² ×2: the decoded output alone is 768 MB. The streamed run's peak, less that of
    the same process restoring a 64² image (Python, torch, libvips), stays under 40 % of it."""
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    side = 8000
    ramp = (np.arange(side, dtype=np.uint32) * 255 // side).astype(np.uint8)
    rows = np.stack([ramp[None].repeat(side, 0), ramp[:, None].repeat(side, 1),
                     np.full((side, side), 90, np.uint8)], axis=2)  # compressible
    write_image(big, rows)
    write_image(small, rows[:64, :64])
    del rows
    decoded_output = side * side * 3 * 4
    baseline = _peak_kib(small, tmp_path / "small.x2.png")
    streamed = _peak_kib(big, tmp_path / "big.x2.png")
    assert (streamed - baseline) * 1024 < 0.4 * decoded_output, (baseline, streamed)
    out = open_large_image(tmp_path / "big.x2.png")  # header only
    assert out.size == (2 * side, 2 * side)
