"""Task benchmarks, measured side by side in one run (figures go to docs/benchmarks.md).

1. Engine throughput on 32 images vs a minimal hand-written loop around the same model
   (processor -> model -> transformers' post-processing): target >= 0.9.
   Also the whole job (read files, run, write per-image JSON + COCO) vs the same loop
   plus reading the files.
2. ONNX Runtime vs torch eager on CPU for the same model, per task: detection (DETR),
   segmentation (SegFormer), restoration (Real-ESRGAN Compact), captioning (ViT-GPT2).

Models are small random-weight configs (no hub here); "small" ones are sized so the
model, not Python overhead, dominates. Run:
    .venv/bin/python tests/benchmarks/bench_tasks.py [--threads N] [--repeats R]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(calls: dict, repeats: int) -> dict:
    """{label: seconds} for several variants timed in rounds (one run of each per round,
    after one warm-up each), the least disturbed (fastest) run of each. On a shared VM the
    machine's speed drifts by tens of per cent within minutes; variants timed one after
    the other would carry that drift into their ratios, rounds spread it over all."""
    for fn in calls.values():
        fn()
    times: dict = {label: [] for label in calls}
    for _ in range(repeats):
        for label, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {label: min(values) for label, values in times.items()}


def card_for(path: Path, task: str, runtime: str, **extra):
    from engine.catalog.card import ModelCard, Source

    return ModelCard(id=f"bench-{task}-{runtime}", name=path.name, tasks=(task,),
                     runtime=runtime, local_path=str(path), source=Source.LOCAL, **extra)


def build_small_detr(folder: Path) -> Path:
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(0)
    backbone = ResNetConfig(num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128],
                            depths=[1, 1, 1], layer_type="basic", out_features=["stage3"])
    config = DetrConfig(backbone_config=backbone, use_timm_backbone=False,
                        use_pretrained_backbone=False, d_model=128, encoder_layers=2,
                        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                        encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=50,
                        id2label={i: f"c{i}" for i in range(10)})
    model = DetrForObjectDetection(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 320, "longest_edge": 480}).save_pretrained(folder)
    return folder


def bench_throughput(work: Path, repeats: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from engine.jobs import JobSpec, JobStore, run_job
    from engine.runtimes import load_runner
    from engine.tasks.detect import detect

    folder = build_small_detr(work / "detr")
    rng = np.random.default_rng(0)
    photos = work / "photos"
    photos.mkdir()
    for i in range(32):
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(
            photos / f"{i:02d}.png")
    paths = sorted(photos.glob("*.png"))
    pils = [Image.open(p).convert("RGB") for p in paths]
    runner = load_runner(card_for(folder, "detect", "transformers"), device="cpu",
                         precision="fp32")
    model, processor = runner.module, runner.processor
    batch = 8

    def hand_loop(images):
        out = []
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            inputs = processor(images=chunk, return_tensors="pt")
            with torch.inference_mode():
                outputs = model(**inputs)
            out += processor.post_process_object_detection(
                outputs, threshold=0.5, target_sizes=[(im.height, im.width) for im in chunk])
        return out

    def engine_api():
        return detect(runner, pils, threshold=0.5, batch_size=batch)

    def loop_with_io():
        return hand_loop([Image.open(p).convert("RGB") for p in paths])

    store = JobStore(work / "jobs.sqlite")
    # the job resolves the folder as a local model through the catalog's import
    from engine.catalog.local_import import import_model

    job_card = import_model(folder, task="detect", name="bench detr")
    folder_ref = job_card.id

    def engine_job_ref():
        out = work / f"out-{time.monotonic_ns()}"
        run_job(JobSpec("detect", folder_ref, [str(photos)], str(out),
                        options={"threshold": 0.5, "batch_size": batch, "formats": ["coco"]}),
                store=store)

    t_loop = timed(lambda: hand_loop(pils), repeats)
    t_api = timed(engine_api, repeats)
    t_loop_io = timed(loop_with_io, repeats)
    t_job = timed(engine_job_ref, repeats)
    return {
        "images": len(pils),
        "hand_loop_img_s": len(pils) / t_loop,
        "engine_detect_img_s": len(pils) / t_api,
        "ratio_detect_vs_loop": t_loop / t_api,
        "hand_loop_with_reads_img_s": len(pils) / t_loop_io,
        "engine_job_img_s": len(pils) / t_job,
        "ratio_job_vs_loop_with_reads": t_loop_io / t_job,
    }


def bench_onnx_vs_torch(work: Path, repeats: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from engine.export_onnx import onnx_runner_for_export, optimize, sample_image
    from engine.media.image import from_pil
    from engine.runtimes import load_runner
    from engine.tasks.caption import caption
    from engine.tasks.detect import detect
    from engine.tasks.restore import restore
    from engine.tasks.segment import segment
    from tests.fixtures.tiny_captioners import vit_gpt2
    from tests.fixtures.tiny_detectors import export_onnx

    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    results = {}

    # detection: DETR, torch vs its ONNX export through the same task code
    detr = build_small_detr(work / "detr-onnx")
    onnx_path = export_onnx(detr, "DetrForObjectDetection", height=320, width=416)
    torch_r = load_runner(card_for(detr, "detect", "transformers"), device="cpu",
                          precision="fp32")
    onnx_r = load_runner(card_for(onnx_path, "detect", "onnx",
                                  sidecar={"model_type": "detr"}), device="cpu",
                         precision="fp32")
    results["detect"] = _pair(lambda: detect(torch_r, [photo], threshold=0.3),
                              lambda: detect(onnx_r, [photo], threshold=0.3), repeats)

    # segmentation: SegFormer
    from transformers import (SegformerConfig, SegformerForSemanticSegmentation,
                              SegformerImageProcessor)

    torch.manual_seed(0)
    seg_dir = work / "segformer"
    SegformerForSemanticSegmentation(SegformerConfig(
        num_labels=8, hidden_sizes=[32, 64, 96, 128], decoder_hidden_size=128,
        depths=[1, 1, 1, 1])).eval().save_pretrained(seg_dir)
    SegformerImageProcessor(size={"height": 256, "width": 256}).save_pretrained(seg_dir)
    seg_onnx = export_onnx(seg_dir, "SegformerForSemanticSegmentation", height=256, width=256,
                           output_names=("logits",))
    seg_t = load_runner(card_for(seg_dir, "segment", "transformers"), device="cpu",
                        precision="fp32")
    seg_o = load_runner(card_for(seg_onnx, "segment", "onnx",
                                 sidecar={"model_type": "segformer"}), device="cpu",
                        precision="fp32")
    results["segment"] = _pair(lambda: segment(seg_t, [photo]),
                               lambda: segment(seg_o, [photo]), repeats)

    # restoration: Real-ESRGAN Compact (spandrel), exported by `optimize`
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    ckpt = work / "compact.safetensors"
    save_file(Compact(num_in_ch=3, num_out_ch=3, num_feat=32, num_conv=8, upscale=2)
              .state_dict(), str(ckpt))
    rest_card = card_for(ckpt, "restore", "spandrel")
    rest_t = load_runner(rest_card, device="cpu", precision="fp32")
    rest_o = onnx_runner_for_export(rest_card, optimize(rest_card, rest_t, sample_image()))
    loaded = from_pil(photo)
    results["restore"] = _pair(lambda: restore(rest_t, loaded, tile_size=None),
                               lambda: restore(rest_o, loaded, tile_size=None), repeats)

    # captioning: ViT-GPT2 (tiny), encoder + merged decoder with KV cache
    cap_dir = vit_gpt2().save(work / "vit-gpt2")
    cap_card = card_for(cap_dir, "caption", "transformers")
    cap_t = load_runner(cap_card, device="cpu", precision="fp32")
    cap_o = onnx_runner_for_export(cap_card, optimize(cap_card, cap_t, sample_image()))
    results["caption"] = _pair(lambda: caption(cap_t, [photo], max_new_tokens=20),
                               lambda: caption(cap_o, [photo], max_new_tokens=20), repeats)
    return results


def _pair(torch_fn, onnx_fn, repeats: int) -> dict:
    t_torch = timed(torch_fn, repeats)
    t_onnx = timed(onnx_fn, repeats)
    return {"torch_ms": 1000 * t_torch, "onnx_ms": 1000 * t_onnx,
            "onnx_speedup": t_torch / t_onnx}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import os

    os.environ.setdefault("OCULA_HOME", tempfile.mkdtemp(prefix="ocula-bench-home-"))
    os.environ["OCULA_ONNX_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="ocula-bench-"))
    try:
        throughput = bench_throughput(work / "t", args.repeats)
        print("Throughput, 32 images (320x240), small DETR, batch 8:")
        print(f"  hand-written loop        {throughput['hand_loop_img_s']:7.2f} img/s")
        print(f"  engine detect()          {throughput['engine_detect_img_s']:7.2f} img/s   "
              f"ratio {throughput['ratio_detect_vs_loop']:.3f}")
        print(f"  loop + reading files     {throughput['hand_loop_with_reads_img_s']:7.2f} img/s")
        print(f"  engine job (read+write)  {throughput['engine_job_img_s']:7.2f} img/s   "
              f"ratio {throughput['ratio_job_vs_loop_with_reads']:.3f}")
        pairs = bench_onnx_vs_torch(work / "o", args.repeats)
        print("ONNX Runtime vs torch eager, CPU, one image, same task code:")
        for task, row in pairs.items():
            print(f"  {task:8} torch {row['torch_ms']:8.1f} ms   onnx {row['onnx_ms']:8.1f} ms   "
                  f"onnx speed-up {row['onnx_speedup']:.2f}x")
        print(json.dumps({"throughput": throughput, "onnx_vs_torch": pairs,
                          "threads": args.threads}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
