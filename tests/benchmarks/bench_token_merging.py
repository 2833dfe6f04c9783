"""Token merging (`--speed off|balanced|fast`) on a real-sized ViT-B/16 at 224, torch on the CPU.

    .venv/bin/python tests/benchmarks/bench_token_merging.py [--runs 5] [--threads 2]

Throughput of the encoder forward (SDPA attention, as a user loads it) at batch 1 and 8, the
three settings timed alternately so load changes hit all alike, best of the runs, from the wall
clock and from the process's CPU time; the ratio to off next to the encoder FLOPs ratio the
setting aims at. On cores other processes share, waiting OpenMP threads spin and inflate the
CPU time too: run it on an idle machine, or with --threads 1 for ratios that load barely moves. Agreement with off on the skimage sample photos:
cosine of the final CLS token, and the Pearson correlation of the attention-rollout map
(engine.explain capture, the merged layers mapped back onto the 14×14 patch grid).

Weights are transformers' random initialisation (ViTConfig defaults: 768 wide, 12 layers, 12
heads): fine for speed, which depends on shapes only. Agreement on random weights says little
about a trained model (ToMe reports ≈0.2-0.4 % ImageNet top-1 lost at r=8 and ≈1-2 % at r=16
for off-the-shelf ViT-B/16s): random attention is nearly uniform, so rollout maps are almost flat
and their correlation is noisy, and the CLS cosine measures only how far merging moves the
features of an untrained network.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SPEEDS = ("off", "balanced", "fast")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _paired_s(fns: dict, runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall seconds, process CPU seconds) of each run of each function, run alternately.
    CPU seconds (all threads) are what the forward costs even when other processes share the
    cores; wall seconds are what a user waits on an idle machine."""
    for fn in fns.values():
        fn()  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def _photos(count: int):
    from PIL import Image
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
    return [Image.fromarray(getattr(data, name)()).convert("RGB") for name in names[:count]]


def _rollout_map(model, pixel_values):
    from engine.explain import methods
    from engine.explain.torch_capture import capture

    captured = capture(model, pixel_values)
    joint = methods.rollout(captured.attentions, head_fusion="mean", discard_ratio=0.0,
                            start_layer=0, keep=captured.layout.special.get("cls", ()))
    return joint[captured.layout.cls_index, captured.layout.patch_slice]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per setting at batch 1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--photos", type=int, default=4, help="images for the agreement figures")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from engine.runtimes.token_merging import apply_token_merging, encoder_flops

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    base = ViTModel(ViTConfig(attn_implementation="sdpa"), add_pooling_layer=False).eval()
    models = {"off": base}
    merging = {}
    for speed in SPEEDS[1:]:
        models[speed] = copy.deepcopy(base)
        merging[speed] = apply_token_merging(models[speed], speed)
    r = {"off": 0, **{speed: m.r for speed, m in merging.items()}}
    sizes = {"tokens": 197, "protected": 1, "layers": 12, "width": 768, "mlp_width": 3072}
    flops_ratio = {s: encoder_flops(r=0, **sizes) / encoder_flops(r=r[s], **sizes) for s in SPEEDS}

    print(f"CPU: {_cpu_name()}, torch {torch.__version__}, {args.threads} threads; "
          f"load average {load_before:.2f} at the start")
    print("ViT-B/16 224 (ViTConfig defaults, random init), SDPA attention, fp32\n")
    throughput: dict[int, dict[str, float]] = {}
    cpu_throughput: dict[int, dict[str, float]] = {}
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224)
        runs = args.runs if batch == 1 else max(2, args.runs // 2)

        def forward(model, x=x):
            with torch.inference_mode():
                model(pixel_values=x)

        wall, cpu = _paired_s({s: (lambda m=models[s]: forward(m)) for s in SPEEDS}, runs)
        # best of the runs: on shared cores it is the run least slowed by other processes
        throughput[batch] = {s: batch / min(t) for s, t in wall.items()}
        # images per second of `threads` cores' CPU time: the idle-machine rate if they scale
        cpu_throughput[batch] = {s: batch * args.threads / min(t) for s, t in cpu.items()}
    with (torch.inference_mode(), merging["fast"].tracing() as traced_fast,
          merging["balanced"].tracing() as traced_bal):
        models["fast"](pixel_values=torch.zeros(1, 3, 224, 224))
        models["balanced"](pixel_values=torch.zeros(1, 3, 224, 224))
    tokens_out = {"off": 197, "balanced": traced_bal.trace.tokens_per_layer[-1],
                  "fast": traced_fast.trace.tokens_per_layer[-1]}
    for label, table in (("wall clock", throughput), ("CPU time", cpu_throughput)):
        print(f"images/s from {label}")
        print(f"{'speed':9} {'r':>3} {'tokens out':>10} {'FLOPs ratio':>11}", end="")
        for batch in (1, 8):
            print(f" | b{batch} img/s {'ratio':>6}", end="")
        print()
        for s in SPEEDS:
            print(f"{s:9} {r[s]:>3} {tokens_out[s]:>10} {flops_ratio[s]:>10.2f}×", end="")
            for batch in (1, 8):
                value = table[batch][s]
                print(f" | {value:>9.2f} {value / table[batch]['off']:>5.2f}×", end="")
            print()

    processor = ViTImageProcessor(size={"height": 224, "width": 224})
    photos = _photos(args.photos)
    pixels = processor(images=photos, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        cls = {s: models[s](pixel_values=pixels).last_hidden_state[:, 0] for s in SPEEDS}
    rollout = {s: [_rollout_map(models[s], pixels[i:i + 1]) for i in range(len(photos))]
               for s in SPEEDS}
    print(f"\nagreement with off on {len(photos)} skimage photos (random weights: see the docstring)")
    print(f"{'speed':9} {'CLS cosine (min / mean)':>24} {'rollout corr (min / mean)':>27}")
    for s in SPEEDS[1:]:
        cosine = torch.nn.functional.cosine_similarity(cls[s], cls["off"], dim=-1).numpy()
        corr = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(rollout[s], rollout["off"])])
        print(f"{s:9} {cosine.min():>12.4f} / {cosine.mean():.4f} {corr.min():>15.4f} / {corr.mean():.4f}")
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load_after:.2f} at the end (other processes on these cores slow every "
          f"setting alike; the ratios are paired)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
