"""Semantic label maps: engine.media.label_upsample vs the literal upsample-then-argmax.

    .venv/bin/python tests/benchmarks/bench_label_upsample.py [--classes 150] [--logits 128]

transformers' post_process_semantic_segmentation upsamples every class's logits to the
photo (torch interpolate, bilinear) and takes the argmax; the literal numpy/OpenCV version
(cv2.resize of all classes, argmax) was Ocula's ONNX path before. `upsampled_argmax` only
blends logits where the four source corners disagree. Side by side in one run, median
of 5 after a warm-up, on two kinds of logits at SegFormer's output size (C × 128 × 128):

  regions  a few large regions over low noise, as a trained segmenter's output
  random   unit-variance noise, as an untrained (random-weight) model's output

Prints time per image for each target size, the ratio, the peak traced memory of the
12-megapixel case and whether the labels agree with torch's interpolate + argmax.
"""
from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.media.label_upsample import upsampled_argmax  # noqa: E402
from tests.benchmarks.bench_tasks import timed  # noqa: E402
from tests.unit.test_label_upsample import reference, regions  # noqa: E402


def literal(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    hwc = np.ascontiguousarray(logits.transpose(1, 2, 0))
    parts = [cv2.resize(np.ascontiguousarray(hwc[:, :, a:a + 128]), (size[1], size[0]),
                        interpolation=cv2.INTER_LINEAR).reshape(size[0], size[1], -1)
             for a in range(0, hwc.shape[2], 128)]
    return np.concatenate(parts, axis=2).argmax(axis=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--logits", type=int, default=128)
    args = parser.parse_args()
    n = args.logits
    kinds = {"regions": regions(args.classes, n, n),
             "random": np.random.default_rng(0).standard_normal(
                 (args.classes, n, n)).astype(np.float32)}
    for kind, logits in kinds.items():
        for size in ((512, 512), (768, 1024), (1536, 2048)):
            new = 1000 * timed(lambda: upsampled_argmax(logits, size), 5)
            old = 1000 * timed(lambda: literal(logits, size), 5)
            want, margin = reference(logits, size)
            got = upsampled_argmax(logits, size)
            clear = margin > 1e-5
            agree = float((got[clear] == want[clear]).mean())
            print(f"{kind:8} {size[0]:5}x{size[1]:<5} new {new:7.1f} ms  literal {old:7.1f} ms"
                  f"  x{old / new:5.2f}  labels = torch's on {100 * agree:.3f} % of "
                  f"{100 * clear.mean():.3f} % decided pixels")
    tracemalloc.start()
    labels = upsampled_argmax(kinds["regions"], (3000, 4000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"3000x4000, {args.classes} classes: peak traced {peak / 2**20:.0f} MiB (label map "
          f"{labels.nbytes / 2**20:.0f} MiB; the upsampled stack would be "
          f"{args.classes * 12e6 * 4 / 2**30:.1f} GiB)")


if __name__ == "__main__":
    main()
