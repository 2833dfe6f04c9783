"""Lite (numpy) processors vs transformers' for the ONNX path, side by side in one run.

    .venv/bin/python tests/benchmarks/bench_lite.py [--repeats 20]

1. Pre-processing per image, DETR config (shortest edge 800, longest 1333) and SegFormer
   (512²) on real photos: Ocula's numpy processor vs transformers' torchvision backend (the
   default with torch installed) vs its PIL backend (what the numpy one reproduces exactly).
2. Start-up: a fresh process importing what an ONNX detect job needs, with the numpy
   processors (Lite) vs importing transformers' processor stack (the previous ONNX path).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "detr": {"image_processor_type": "DetrImageProcessor",
             "size": {"shortest_edge": 800, "longest_edge": 1333}, "do_pad": True},
    "segformer": {"image_processor_type": "SegformerImageProcessor",
                  "size": {"height": 512, "width": 512}},
}


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def preprocessing(repeats: int) -> dict:
    import transformers
    from skimage import data

    from engine.runtimes.lite_processors import load_image_processor

    photos = [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()),
              Image.fromarray(data.coffee())]
    out = {}
    for name, config in CONFIGS.items():
        folder = Path(tempfile.mkdtemp())
        (folder / "preprocessor_config.json").write_text(json.dumps(config))
        lite = load_image_processor(folder)
        tv = transformers.AutoImageProcessor.from_pretrained(folder, backend="torchvision")
        pil = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
        row = {}
        for label, proc, kwargs in (("lite", lite, {}), ("torchvision", tv, {"return_tensors": "pt"}),
                                    ("pil", pil, {"return_tensors": "np"})):
            row[label] = timed(lambda p=proc, k=kwargs: [p(images=[im], **k) for im in photos],
                               repeats) / len(photos)
        out[name] = row
    return out


PROBE_LITE = ("import time; t=time.perf_counter(); import onnxruntime, engine.tasks.detect, "
              "engine.runtimes.lite_processors as lp; lp.supported_classes(); "
              "print(time.perf_counter()-t)")
PROBE_TRANSFORMERS = ("import time; t=time.perf_counter(); import onnxruntime, engine.tasks.detect, "
                      "transformers; from transformers import DetrImageProcessor; "
                      "print(time.perf_counter()-t)")


def startup(repeats: int) -> dict:
    def run(code: str) -> float:
        values = [float(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                       text=True, check=True).stdout) for _ in range(repeats)]
        return statistics.median(values) * 1e3
    return {"lite_ms": run(PROBE_LITE), "transformers_ms": run(PROBE_TRANSFORMERS)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    pre = preprocessing(args.repeats)
    for name, row in pre.items():
        print(f"{name:10} per image: lite {row['lite']:.1f} ms, transformers torchvision "
              f"{row['torchvision']:.1f} ms ({row['torchvision'] / row['lite']:.2f}x lite), "
              f"transformers PIL {row['pil']:.1f} ms ({row['pil'] / row['lite']:.2f}x lite)")
    up = startup(max(3, args.repeats // 4))
    print(f"imports for an ONNX detect job: lite {up['lite_ms']:.0f} ms, with transformers' "
          f"processors {up['transformers_ms']:.0f} ms ({up['transformers_ms'] / up['lite_ms']:.1f}x)")


if __name__ == "__main__":
    main()
