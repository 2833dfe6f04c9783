"""A very large restore, streamed vs in memory: peak RSS and time (issue 16).

    .venv/bin/python tests/benchmarks/bench_large_restore.py [--side 20000] [--scale 2]
        [--tile 512] [--only streamed|memory]

A compressible side×side PNG (gradients) is made once; then each path runs in a fresh
process, which restores it ×scale with a tiny SRVGGNetCompact (random weights: the
model's cost is not what is measured) and writes a PNG, and reports its own peak RSS
(ru_maxrss) and wall time. The in-memory path is today's `ocula run restore` with a
raised pixel limit (read_image, restore, write_image); the streamed one is what a job
does for images of engine.media.large_image.STREAM_MIN_PIXELS and more. The in-memory
run needs several GB at 20000²: run this alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, resource, sys, time
from engine.media.image import read_image, write_image
from engine.media.large_image import open_large_image
from engine.tasks.restore import restore
from engine.tasks.restore_stream import restore_to_file
from tests.fixtures import tiny_restorers as tr

mode, source, target, scale, tile = sys.argv[1:6]
runner = tr.spandrel_runner(tr.compact_descriptor(scale=int(scale), num_feat=4, num_conv=1))
began = time.perf_counter()
if mode == "streamed":
    restore_to_file(runner, open_large_image(source), target, tile_size=int(tile))
else:
    image = read_image(source, pixel_limit=2**31 - 1)
    result = restore(runner, image, tile_size=int(tile))
    del image
    write_image(target, result.image)
elapsed = time.perf_counter() - began
print(json.dumps({"mode": mode, "seconds": elapsed,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_source(path: Path, side: int) -> None:
    """A compressible RGB PNG, written in strips (never whole in memory here either)."""
    import numpy as np

    from engine.media.large_image import write_bands

    ramp = (np.arange(side, dtype=np.uint64) * 255 // side).astype(np.uint8)

    def bands():
        for y0 in range(0, side, 256):
            rows = min(256, side - y0)
            band = np.empty((rows, side, 3), np.uint8)
            band[..., 0] = ramp[None]
            band[..., 1] = ramp[y0:y0 + rows, None]
            band[..., 2] = 90
            yield band

    write_bands(path, bands(), width=side, height=side, channels=3, dtype=np.uint8)


def run_child(mode: str, source: Path, target: Path, scale: int, tile: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(source), str(target),
                           str(scale), str(tile)], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if done.returncode != 0:
        return {"mode": mode, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--only", choices=("streamed", "memory"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocula-bench-large-") as work:
        source = Path(work) / "source.png"
        began = time.perf_counter()
        make_source(source, args.side)
        print(f"source: {args.side}×{args.side} PNG, {source.stat().st_size / 2**20:.0f} MiB "
              f"({time.perf_counter() - began:.0f} s to make); ×{args.scale}, tile {args.tile}, "
              f"{os.cpu_count()} CPUs")
        decoded = args.side ** 2 * 3 * (1 + args.scale ** 2) / 2**20
        print(f"decoded input + output: {decoded:.0f} MiB")
        for mode in (args.only,) if args.only else ("streamed", "memory"):
            target = Path(work) / f"out-{mode}.png"
            row = run_child(mode, source, target, args.scale, args.tile)
            if "error" in row:
                print(f"{mode:9s}: failed: {row['error']}")
                continue
            print(f"{mode:9s}: peak RSS {row['peak_rss_mib']:7.0f} MiB, {row['seconds']:6.1f} s")
            target.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
