"""Cost of capturing attention maps vs a plain forward pass of the same model (CPU).

    .venv/bin/python tests/benchmarks/bench_explain.py [--runs 10]

Plain forward: the model as a user loads it (SDPA attention, no attentions returned).
Capture: engine.explain.torch_capture.capture (eager attention, output_attentions,
copied to numpy). Explain: the whole `explain(..., method="rollout")`, preprocessing
and the heatmap at the original resolution included. Target: capture ≤ 1.5× forward.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _median_ms(fn, runs: int) -> float:
    return _paired_ms([fn], runs)[0]


def _paired_ms(fns, runs: int) -> list[float]:
    """Median ms of each function, run alternately so load changes hit all alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for index, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[index].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def bench(name: str, config_kwargs: dict, runs: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from engine.explain import explain
    from engine.explain.torch_capture import capture

    torch.manual_seed(0)
    size = config_kwargs["image_size"]
    model = ViTModel(ViTConfig(attn_implementation="sdpa", **config_kwargs), add_pooling_layer=False).eval()
    processor = ViTImageProcessor(size={"height": size, "width": size})
    image = Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8))
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]

    def forward():
        with torch.no_grad():
            model(pixel_values=pixels)

    def capture_maps():
        capture(model, pixels)

    plain, captured = _paired_ms([forward, capture_maps], runs)
    full = _median_ms(lambda: explain(model, image, method="rollout", processor=processor), max(3, runs // 2))
    return {"model": name, "forward_ms": plain, "capture_ms": captured, "ratio": captured / plain, "explain_ms": full}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        "ViT-S/16 224 (384 dim, 12 layers, 6 heads, random weights)": {
            "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536,
            "image_size": 224, "patch_size": 16},
        "tiny ViT 32 (32 dim, 2 layers, 2 heads)": {
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8},
    }
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.runs} runs")
    print(f"{'model':62} {'forward':>9} {'capture':>9} {'ratio':>6} {'explain':>9}")
    for name, kwargs in models.items():
        r = bench(name, kwargs, args.runs)
        flag = "" if r["ratio"] <= 1.5 else "  (above the 1.5× target)"
        print(f"{name:62} {r['forward_ms']:8.1f}ms {r['capture_ms']:8.1f}ms {r['ratio']:5.2f}× "
              f"{r['explain_ms']:8.1f}ms{flag}")


if __name__ == "__main__":
    main()
