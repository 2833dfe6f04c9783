"""Real-sized architectures on the CPU: torch fp32 vs every ONNX variant, side by side.

The tiny random models of bench_tasks.py hide what decides speed at real size (the
framework's kernels, not Python overhead). Here each architecture has its published
size (random weights: speed does not depend on them) and runs through the same task
code a job uses:

    ViT-B/16 224          encoder forward (the features/explain backbone), batch 1
    DETR-R50 800x1066     detect()
    SegFormer-B0 512      segment()
    Swin2SR-classical x2  restore() on 256x256, whole image
    ViT-GPT2              caption(), 20 new tokens

Variants per model: torch fp32 (eager), ORT fp32 (`ocula models optimize`), ORT int8 and
ORT fp16 (`ocula models optimize --precision int8|fp16`), and torch with token merging
(`--speed balanced|fast`) where the model has a ViT encoder. Each row prints the time
(task rows: variants timed in interleaved rounds, fastest run of each; the bare ViT row:
median per variant), the speed-up over torch fp32, the achieved GFLOP/s (FLOPs counted once on the torch
forward with torch.utils.flop_counter) and the machine's fp32 peak, so the distance to the
limit is visible.

    .venv/bin/python tests/benchmarks/bench_real_sized.py [--only vit,detr,...] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_tasks import card_for, interleaved, timed  # noqa: E402

MODELS = ("vit", "detr", "segformer", "swin2sr", "vitgpt2")


# -- the machine ---------------------------------------------------------------------------


def cpu_facts(threads: int) -> dict:
    """Model name, clock and a theoretical fp32 peak for `threads` cores.

    Peak = cores x clock x fp32 FLOPs per cycle. FLOPs per cycle: 2 FMA pipes x vector
    lanes x 2 (multiply + add); lanes are 16 for AVX-512 on Intel (two 512-bit FMA units
    on server parts), 8 for AMD Zen 4 (AVX-512 runs on 256-bit pipes) and for AVX2. This
    is the textbook figure; turbo clocks can exceed the nominal MHz read here.
    """
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    def field(name: str) -> str:
        for line in text.splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
        return ""
    flags = set(field("flags").split())
    model = field("model name")
    mhz = float(field("cpu MHz") or 0.0)
    amd = "AMD" in model or field("vendor_id") == "AuthenticAMD"
    if "avx512f" in flags and not amd:
        lanes = 16
    else:
        lanes = 8 if ("avx2" in flags or "avx512f" in flags) else 4
    flops_per_cycle = 2 * lanes * 2
    peak = threads * mhz * 1e6 * flops_per_cycle / 1e9
    return {"model": model, "mhz": mhz, "avx512": "avx512f" in flags,
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
            "fp32_flops_per_cycle": flops_per_cycle, "fp32_peak_gflops": peak,
            "int8_peak_gops": peak * 4 if ("avx512_vnni" in flags or "avx_vnni" in flags) else None}


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of `fn` (torch ops only), as torch's flop counter counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn()
    return float(counter.get_total_flops())


# -- the models (published sizes, random weights) --------------------------------------------


def photo(width: int, height: int):
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((width, height))


def build_vit(work: Path) -> dict:
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(), add_pooling_layer=False).eval()  # ViT-B/16 224
    pixels = torch.randn(1, 3, 224, 224)
    path = work / "vit-b16.onnx"
    torch.onnx.export(model, (pixels,), str(path), input_names=["pixel_values"],
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False)
    return {"module": model, "pixels": pixels, "onnx": path}


def build_detr(work: Path) -> Path:
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(0)
    backbone = ResNetConfig(out_features=["stage4"])  # ResNet-50 (bottleneck, 3-4-6-3)
    config = DetrConfig(backbone_config=backbone, use_timm_backbone=False,
                        use_pretrained_backbone=False, num_labels=91)  # d_model 256, 6+6 layers
    folder = work / "detr-r50"
    DetrForObjectDetection(config).eval().save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333}).save_pretrained(folder)
    return folder


def build_segformer(work: Path) -> Path:
    import torch
    from transformers import (SegformerConfig, SegformerForSemanticSegmentation,
                              SegformerImageProcessor)

    torch.manual_seed(0)
    folder = work / "segformer-b0"
    SegformerForSemanticSegmentation(SegformerConfig(num_labels=150)).eval().save_pretrained(
        folder)  # the default config is MiT-B0
    SegformerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(folder)
    return folder


def build_swin2sr(work: Path) -> Path:
    import torch
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution, Swin2SRImageProcessor

    torch.manual_seed(0)
    folder = work / "swin2sr-classical-x2"
    # caidas/swin2SR-classical-sr-x2-64: embed 180, 6 stages x 6 blocks, window 8, x2
    config = Swin2SRConfig(upscale=2, upsampler="pixelshuffle", img_size=64)
    Swin2SRForImageSuperResolution(config).eval().save_pretrained(folder)
    Swin2SRImageProcessor().save_pretrained(folder)
    return folder


def build_vitgpt2(work: Path) -> Path:
    import torch
    from transformers import (AutoTokenizer, GPT2Config, ViTConfig, ViTImageProcessor,
                              VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

    from tests.fixtures.tiny_captioners import vit_gpt2

    torch.manual_seed(0)
    folder = work / "vit-gpt2"
    tiny = vit_gpt2().save(work / "vit-gpt2-tokenizer")  # tokenizer files (no hub here)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    decoder = GPT2Config(vocab_size=len(tokenizer), add_cross_attention=True,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)  # GPT-2 124M layout
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), decoder)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.eos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = VisionEncoderDecoderModel(config).eval()
    model.generation_config.eos_token_id = None  # always 20 tokens: a fixed amount of work
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


# -- variants ---------------------------------------------------------------------------------


def onnx_variants(card, torch_runner) -> dict[str, object]:
    """ORT runners per precision, made by the same code as `ocula models optimize`."""
    from engine.export_onnx import optimize, sample_image
    from engine.runtimes.optimized import onnx_runner_for_export

    runners: dict[str, object] = {}
    path = optimize(card, torch_runner, sample_image())
    runners["ort fp32"] = onnx_runner_for_export(card, path)
    for precision in ("int8", "fp16"):
        made = quantized_runner(card, torch_runner, precision)
        if made is not None:
            runners[f"ort {precision}"] = made
    return runners


def quantized_runner(card, torch_runner, precision: str):
    """The `optimize --precision` variant's runner (made and measured by the engine, on its
    bundled calibration set), with its quality verdict printed; None where it cannot be."""
    from engine.export_quantize import calibration_images, make_variant
    from engine.runtimes.optimized import onnx_runner_for_variant
    from engine.settings import Settings

    images, _ = calibration_images(None, limit=4)
    try:
        variant = make_variant(card, precision, images, settings=Settings())
    except Exception as exc:  # a variant this architecture cannot have: say so, go on
        print(f"    ({precision}: {exc})")
        return None
    print(f"    {precision}: {variant.verdict}")
    return onnx_runner_for_variant(card, variant)


def merging_runners(card) -> dict[str, object]:
    """Torch runners with token merging (`--speed balanced|fast`)."""
    from engine.runtimes import load_runner

    return {f"torch {speed}": load_runner(card, device="cpu", precision="fp32", speed=speed)
            for speed in ("balanced", "fast")}


# -- one row per variant --------------------------------------------------------------------


def rows_for(name: str, work: Path, repeats: int) -> tuple[float, dict[str, float]]:
    """(torch FLOPs of one call, {variant: seconds})."""
    from engine.runtimes import load_runner

    work.mkdir(parents=True, exist_ok=True)

    if name == "vit":
        import numpy as np
        import onnxruntime as ort
        import torch

        built = build_vit(work)
        module, pixels = built["module"], built["pixels"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(built["onnx"]), options,
                                       providers=["CPUExecutionProvider"])
        feed = {"pixel_values": pixels.numpy().astype(np.float32)}

        def torch_call():
            with torch.inference_mode():
                return module(pixel_values=pixels)

        times = {"torch fp32": timed(torch_call, repeats),
                 "ort fp32": timed(lambda: session.run(None, feed), repeats)}
        from engine.runtimes.token_merging import apply_token_merging

        for speed in ("balanced", "fast"):
            merging = apply_token_merging(module, speed)
            times[f"torch {speed}"] = timed(torch_call, repeats)
            merging.remove()
        for label, path in vit_quantized(built["onnx"]).items():
            quant = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            times[label] = timed(lambda quant=quant: quant.run(None, feed), repeats)
        return count_flops(torch_call), times

    from engine.tasks.caption import caption
    from engine.tasks.detect import detect
    from engine.tasks.restore import restore
    from engine.tasks.segment import segment

    if name == "detr":
        folder, task, image = build_detr(work), "detect", photo(1066, 800)
        call = lambda r: detect(r, [image], threshold=0.5)  # noqa: E731
    elif name == "segformer":
        folder, task, image = build_segformer(work), "segment", photo(512, 512)
        call = lambda r: segment(r, [image])  # noqa: E731
    elif name == "swin2sr":
        from engine.media.image import from_pil

        folder, task, image = build_swin2sr(work), "restore", photo(256, 256)
        loaded = from_pil(image)
        call = lambda r: restore(r, loaded, tile_size=None)  # noqa: E731
    else:
        folder, task, image = build_vitgpt2(work), "caption", photo(224, 224)
        call = lambda r: caption(r, [image], max_new_tokens=20)  # noqa: E731
    card = card_for(folder, task, "transformers")
    torch_runner = load_runner(card, device="cpu", precision="fp32")
    flops = count_flops(lambda: call(torch_runner))
    runners = {"torch fp32": torch_runner}
    if name == "vitgpt2":
        runners.update(merging_runners(card))
    runners.update(onnx_variants(card, torch_runner))
    times = interleaved({label: (lambda r=r: call(r)) for label, r in runners.items()},
                        repeats)
    return flops, times


def vit_quantized(path: Path) -> dict[str, Path]:
    """The encoder's int8 and fp16 variants, made with the recipes `optimize` uses for ViTs."""
    from engine.catalog.card import ModelCard
    from engine.runtimes.quantize import make_graph_variant, recipe_for

    card = ModelCard(id="bench-vit-b16", name="ViT-B/16", tasks=("features",), runtime="onnx",
                     local_path=str(path))
    out = {}
    for precision in ("int8", "fp16"):
        recipe, _ = recipe_for(card, precision, model_type="vit")
        out[f"ort {precision}"] = make_graph_variant(
            path, path.with_name(f"vit-b16.{precision}.onnx"), recipe)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(MODELS))
    args = parser.parse_args()
    home = None  # our own OCULA_HOME holds every export and variant: removed at the end
    if "OCULA_HOME" not in os.environ:
        home = os.environ["OCULA_HOME"] = tempfile.mkdtemp(prefix="ocula-bench-home-")
    os.environ["OCULA_ONNX_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    facts = cpu_facts(args.threads)
    print(f"CPU: {facts['model']} at {facts['mhz']:.0f} MHz, {args.threads} threads, "
          f"AVX-512 {facts['avx512']}, VNNI {facts['vnni']}; fp32 peak "
          f"{facts['fp32_peak_gflops']:.0f} GFLOP/s"
          + (f", int8 peak {facts['int8_peak_gops']:.0f} GOP/s" if facts["int8_peak_gops"]
             else ""))
    report = {"cpu": facts, "threads": args.threads, "models": {}}
    work = Path(tempfile.mkdtemp(prefix="ocula-bench-real-"))
    try:
        for name in [n.strip() for n in args.only.split(",") if n.strip()]:
            if name not in MODELS:
                raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
            flops, times = rows_for(name, work / name, args.repeats)
            base = times["torch fp32"]
            print(f"{name}: {flops / 1e9:.1f} GFLOP per call (torch count)")
            for label, seconds in times.items():
                print(f"  {label:15} {1000 * seconds:9.1f} ms   x{base / seconds:5.2f} vs torch"
                      f"   {flops / seconds / 1e9:7.1f} GFLOP/s equivalent")
            report["models"][name] = {"gflop": flops / 1e9,
                                      "ms": {k: 1000 * v for k, v in times.items()}}
        print(json.dumps(report))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
