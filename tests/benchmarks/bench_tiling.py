"""Benchmark: tiled vs whole-image restoration, and memory for a very large input.

    .venv/bin/python tests/benchmarks/bench_tiling.py [--device cpu|cuda] [--quick]

1. A 2048×2048 photo-like image through a tiny Real-ESRGAN Compact (×2), once in one
   whole-image pass and once in 512-px tiles with 32-px overlap, through the same
   restore() code. Reports the time ratio (target <= 1.2×) and the largest difference.
2. An 8192×8192 input (×1 model, 512-px tiles): peak memory. tracemalloc sees numpy's
   allocations (tile buffers, the band accumulator); RSS also sees torch's. Both are
   reported next to the unavoidable input + output arrays.

Not collected by pytest (file name does not start with test_).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.media.image import LoadedImage
from engine.runtimes.base import Placement
from engine.tasks.restore import restore


def synthetic(size: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients + texture, uint8 RGB, built row band by row band (no float copy)."""
    rng = np.random.default_rng(seed)
    out = np.empty((size, size, 3), np.uint8)
    x = np.linspace(0, 1, size, dtype=np.float32)
    for y0 in range(0, size, 1024):
        y = np.linspace(y0 / size, min(size, y0 + 1024) / size, min(1024, size - y0),
                        dtype=np.float32)[:, None]
        band = np.stack([x[None, :] * (1 - y), y * np.ones_like(x[None, :]),
                         0.5 + 0.5 * np.sin(12 * x[None, :] + 9 * y)], axis=2)
        band += rng.normal(0, 0.04, band.shape).astype(np.float32)
        out[y0:y0 + band.shape[0]] = np.clip(band * 255, 0, 255).astype(np.uint8)
    return out


def loaded(array: np.ndarray) -> LoadedImage:
    from PIL import Image

    return LoadedImage(rgb=Image.new("RGB", (array.shape[1], array.shape[0])), array=array)


def runner(scale: int, device: str, num_feat: int, num_conv: int):
    from engine.runtimes.spandrel_backend import SpandrelRunner
    from tests.fixtures.tiny_restorers import compact_descriptor, restore_card

    descriptor = compact_descriptor(scale=scale, num_feat=num_feat, num_conv=num_conv)
    descriptor.to(device)
    card = restore_card(f"bench-compact-x{scale}", "spandrel")
    return SpandrelRunner(card, Placement("spandrel", device, "fp32"), descriptor)


def rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the max RSS elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Peak current RSS while a block runs, sampled every 10 ms in a thread."""

    def __enter__(self) -> RssSampler:
        import threading

        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def bench_ratio(device: str, size: int) -> None:
    model = runner(2, device, num_feat=16, num_conv=4)
    image = loaded(synthetic(size))
    restore(model, loaded(synthetic(256)), tile_size=4096)  # warm-up (kernels, allocator)
    timings = {}
    results = {}
    for name, tile in (("whole", 1 << 16), ("tiled", 512)):
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            results[name] = restore(model, image, tile_size=tile, tile_overlap=32)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    diff = np.abs(results["whole"].image.astype(int) - results["tiled"].image.astype(int)).max()
    print(f"[{device}] {size}x{size} x2: whole {timings['whole']:.2f} s, tiled(512/32) "
          f"{timings['tiled']:.2f} s ({results['tiled'].info['tiles']} tiles), ratio "
          f"{timings['tiled'] / timings['whole']:.2f}x; max |whole - tiled| = {diff} / 255")


def bench_memory(device: str, size: int) -> None:
    model = runner(1, device, num_feat=8, num_conv=2)
    image = loaded(synthetic(size, seed=1))
    import gc

    gc.collect()
    base_rss = rss_mb()
    tracemalloc.start()
    start = time.perf_counter()
    with RssSampler() as sampler:
        result = restore(model, image, tile_size=512, tile_overlap=32)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    in_mb = image.array.nbytes / 2**20
    out_mb = result.image.nbytes / 2**20
    band_mb = 512 * size * (3 + 1) * 4 / 2**20
    print(f"[{device}] {size}x{size} x1 in {elapsed:.1f} s ({result.info['tiles']} tiles of "
          f"{result.info['tile_size_final']}): input {in_mb:.0f} MB (held before), output "
          f"{out_mb:.0f} MB; numpy peak during restore {peak / 2**20:.0f} MB (output + one "
          f"band of {band_mb:.0f} MB + tiles); process RSS grew by "
          f"{sampler.peak - base_rss:.0f} MB at peak (numpy + torch working memory + output). "
          f"A whole-image float32 pass would need >= {size * size * 3 * 4 * 2 / 2**20:.0f} MB "
          f"for its input and output tensors alone, plus its activations.")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="1024 / 4096 instead of 2048 / 8192")
    parser.add_argument("--part", choices=("all", "ratio", "memory"), default="all")
    args = parser.parse_args()
    if args.part in ("all", "ratio"):
        bench_ratio(args.device, 1024 if args.quick else 2048)
    if args.part == "memory":
        bench_memory(args.device, 4096 if args.quick else 8192)
    elif args.part == "all":  # a fresh process, so its max RSS is the memory run's own
        import subprocess

        cmd = [sys.executable, __file__, "--part", "memory", "--device", args.device]
        subprocess.run(cmd + (["--quick"] if args.quick else []), check=True)


if __name__ == "__main__":
    main()
