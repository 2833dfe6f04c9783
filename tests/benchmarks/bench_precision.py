"""ViT-B/16 224 (random weights, transformers config) on the CPU, batch 1: torch fp32 eager,
ORT fp32, ORT int8 (the dynamic-int8 recipe of `ocula models optimize --precision int8`)
and ORT fp16 (the fp16 recipe), side by side, with the output correlation to torch.

    .venv/bin/python tests/benchmarks/bench_precision.py [--threads 2] [--runs 8]

Runs in about 1-2 minutes on 2 cores (the export and the quantization included).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _median_ms(fn, runs: int) -> float:
    fn()
    fn()  # warm-up: allocations, kernel choice
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from transformers import ViTConfig, ViTModel

    from engine.quality import pearson
    from engine.runtimes.quantize import RECIPES, make_graph_variant

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(image_size=224, patch_size=16, hidden_size=768,
                               num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, attn_implementation="eager"),
                     add_pooling_layer=False).eval()
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        reference = model(pixels).last_hidden_state.numpy()
    rows = [("torch fp32 (eager)", _median_ms(lambda: model(pixels), args.runs), 1.0)]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "vit-b16.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (pixels,), str(fp32), input_names=["pixel_values"],
                              output_names=["last_hidden_state"], opset_version=17, dynamo=False)
        graphs = {"ORT fp32": fp32}
        for label, recipe in (("ORT int8 (dynamic)", "dynamic-int8"), ("ORT fp16", "fp16")):
            graphs[label] = make_graph_variant(fp32, Path(tmp) / f"{recipe}.onnx",
                                               RECIPES.get(recipe))
        for label, path in graphs.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {"pixel_values": pixels.numpy()}
            got = session.run(None, feed)[0]
            rows.append((label, _median_ms(lambda s=session, f=feed: s.run(None, f), args.runs),
                         pearson(got, reference)))
    torch_ms = rows[0][1]
    print(f"ViT-B/16 224, batch 1, {args.threads} threads, {platform.processor() or platform.machine()}"
          f", onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(f"{'variant':22} {'ms':>8} {'x torch fp32':>13} {'pearson':>9}")
    for label, ms, corr in rows:
        print(f"{label:22} {ms:8.1f} {torch_ms / ms:13.2f} {corr:9.5f}")


if __name__ == "__main__":
    main()
