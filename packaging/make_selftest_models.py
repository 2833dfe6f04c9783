"""Build the tiny models that `ocula --self-test` runs, into resources/selftest/.

    .venv/bin/python packaging/make_selftest_models.py [--out resources/selftest]

Each model is randomly initialised from a fixed seed (or given hand-set weights) and
saved the way a download or a user's checkpoint is saved, so the self-test loads it
through the same import -> catalog -> runtime path as a real model:

    caption/   VisionEncoderDecoder (ViT encoder + GPT-2 decoder), byte-level BPE tokenizer
    detect/    DETR with a 2-stage ResNet backbone (no timm, no pretrained backbone)
    segment/   SegFormer (semantic)
    restore/   Real-ESRGAN Compact (SRVGGNetCompact) 2x, a single safetensors checkpoint (spandrel)
    restore-onnx/  a 2x nearest-neighbour Resize graph + model.toml sidecar (ONNX Runtime)
    explain/   ViT classifier whose CLS token attends to the brightest patch (hand-set weights)
    caption-onnx/, detect-onnx/, segment-onnx/, explain-onnx/  the four torch models above
               exported with engine.export_onnx (verified against torch), for the Lite build

Two models have weights that make their answer known in advance, so the self-test
checks a result, not only that something ran:
- restore (both): the output is exactly the nearest-neighbour 2x upscale of the input
  (Compact's last conv is zero, and it adds its body to that upscale);
- explain: attention rollout peaks on the brightest patch of the image.

The builders shared with the test fixtures (captioner, DETR, SegFormer, the crafted
ViT's weights) are in packaging/tiny_models.py, so the self-test runs the very models
the tests check. Everything is safetensors (no pickles) and the folder stays under 5 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # there when run as a script, not when loaded by file path
    sys.path.append(str(HERE))
import tiny_models

ROOT = HERE.parent
DEFAULT_OUT = ROOT / "resources" / "selftest"
IMAGE = tiny_models.CAPTION_IMAGE  # input edge of the captioner and the explain ViT
MANIFEST = "manifest.json"


# -- caption, detect, segment: the tests' own tiny models --------------------------------


def build_captioner(folder: Path, seed: int = 2) -> Path:
    return tiny_models.save(folder, *tiny_models.vit_gpt2(seed))


def build_detector(folder: Path, seed: int = 0) -> Path:
    return tiny_models.build_detr(folder, seed=seed)


def build_segmenter(folder: Path, seed: int = 0) -> Path:
    return tiny_models.build_segformer(folder, seed=seed)


# -- restore -------------------------------------------------------------------------------


def build_restorer(folder: Path, seed: int = 0) -> Path:
    """Compact 2x with its last conv zeroed: output == nearest-neighbour 2x upscale."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    last = max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    state[f"body.{last}.weight"].zero_()
    state[f"body.{last}.bias"].zero_()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "compact-2x.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def build_onnx_restorer(folder: Path) -> Path:
    """One ONNX Resize node (nearest, 2x), written with onnx.helper: no exporter, so the
    bytes do not depend on the torch version. It proves ONNX Runtime loads in the bundle."""
    import onnx
    from onnx import TensorProto, helper

    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
    node = helper.make_node(
        "Resize",
        ["input", "", "scales"],
        ["output"],
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    graph = helper.make_graph(
        [node],
        "nearest2x",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, [1, 3, "out_height", "out_width"]
            )
        ],
        initializer=[scales],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ocula-selftest"
    )
    model.ir_version = 8  # readable by every onnxruntime we support (>= 1.18)
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nearest2x.onnx"
    path.write_bytes(model.SerializeToString())
    path.with_suffix(".toml").write_text(
        'task = "restore"\nname = "selftest-nearest2x"\noutput = "image"\nscale = 2\n'
        'range = [0, 1]\nlayout = "NCHW"\n',
        encoding="utf-8",
    )
    return path


# -- explain -------------------------------------------------------------------------------


def build_explainer(folder: Path) -> Path:
    """A 2-layer ViT classifier whose every head makes CLS attend to the brightest patch
    (tiny_models.craft_vit_weights: the tests' crafted ViTs are made the same way)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=IMAGE,
        patch_size=8,
        num_labels=2,
        id2label={0: "bright", 1: "dark"},
        label2id={"bright": 0, "dark": 1},
    )
    model = tiny_models.craft_vit_weights(ViTForImageClassification(config))
    return tiny_models.save(folder, model, tiny_models.vit_processor((IMAGE, IMAGE)))


# -- the same models as ONNX exports (the Lite build has no torch) ---------------------


def build_onnx_export(folder: Path) -> Path:
    """`folder` = <task>-onnx: export the torch model built in <task>/ with Ocula's own
    exporter (engine.export_onnx, verified against torch on the self-test image), so the
    Lite build's self-test runs the very models the full build's does."""
    import os
    import tempfile

    from PIL import Image

    source = folder.parent / folder.name.removesuffix("-onnx")
    with tempfile.TemporaryDirectory() as home:
        saved = os.environ.get("OCULA_HOME")
        os.environ["OCULA_HOME"] = home
        try:
            from engine.catalog.local_import import import_model
            from engine.export_onnx import export_to_folder
            from engine.runtimes import load_runner
            from engine.selftest import synthetic_image

            card = import_model(source, name=f"selftest-{source.name}")
            runner = load_runner(card, device="cpu", precision="fp32",
                                 attention=source.name == "explain")
            folder.mkdir(parents=True, exist_ok=True)
            export_to_folder(runner, Image.fromarray(synthetic_image()), folder)
        finally:
            if saved is None:
                os.environ.pop("OCULA_HOME", None)
            else:
                os.environ["OCULA_HOME"] = saved
    (folder / "tuning.json").unlink(missing_ok=True)
    return folder  # imported as a folder: graphs + config + processor files


BUILDERS = {
    "caption": build_captioner,
    "detect": build_detector,
    "segment": build_segmenter,
    "restore": build_restorer,
    "restore-onnx": build_onnx_restorer,
    "explain": build_explainer,
    "caption-onnx": build_onnx_export,  # the ONNX ones after the torch models they export
    "detect-onnx": build_onnx_export,
    "segment-onnx": build_onnx_export,
    "explain-onnx": build_onnx_export,
}


def build_all(out: Path = DEFAULT_OUT, only: list[str] | None = None) -> dict:
    """(Re)build every model under `out` (or those named in `only`); returns the manifest."""
    import transformers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / MANIFEST).read_text(encoding="utf-8")) if (out / MANIFEST).is_file() else {}
    manifest: dict = {
        "generated_by": "packaging/make_selftest_models.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "models": dict(old.get("models", {})) if only else {},
    }
    for task, build in BUILDERS.items():
        if only and task not in only:
            continue
        target = out / task
        if target.exists():
            shutil.rmtree(target)
        path = build(target)
        files = sorted(p for p in target.rglob("*") if p.is_file())
        for file in files:
            file.chmod(0o644)  # save_pretrained writes 0600; a bundle is read by every user
        manifest["models"][task] = {
            "path": str(path.relative_to(out)),
            "bytes": sum(p.stat().st_size for p in files),
        }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", help="comma-separated models to rebuild (e.g. caption-onnx)")
    args = parser.parse_args(argv)
    manifest = build_all(args.out, args.only.split(",") if args.only else None)
    total = sum(m["bytes"] for m in manifest["models"].values())
    for task, info in manifest["models"].items():
        print(f"{task:8} {info['bytes'] / 1e3:8.1f} kB  {info['path']}")
    print(f"total    {total / 1e3:8.1f} kB  in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
