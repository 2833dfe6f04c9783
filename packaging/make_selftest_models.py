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

Two models have weights that make their answer known in advance, so the self-test
checks a result, not only that something ran:
- restore (both): the output is exactly the nearest-neighbour 2x upscale of the input
  (Compact's last conv is zero, and it adds its body to that upscale);
- explain: attention rollout peaks on the brightest patch of the image.

Everything is safetensors (no pickles) and the whole folder stays well under 5 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "resources" / "selftest"
IMAGE = 32  # input edge of the captioner and the explain ViT
LABELS = {0: "cat", 1: "dog", 2: "car"}
SEG_LABELS = {0: "sky", 1: "road", 2: "person"}
MANIFEST = "manifest.json"


def _labels(names: dict[int, str]) -> dict:
    return {"id2label": dict(names), "label2id": {v: k for k, v in names.items()}}


def _shake(model: torch.nn.Module, seed: int, gain: float = 1.5, bias: float = 0.3) -> None:
    """Re-draw weights with a wider spread than transformers' near-zero init, so that
    outputs depend on the image (scores spread, boxes and masks move)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            lowered = name.lower()
            if param.numel() == 0 or "norm" in lowered or ".bn" in lowered:
                continue
            if param.dim() >= 2:
                param.copy_(
                    torch.randn(param.shape, generator=gen) * (gain / param[0].numel() ** 0.5)
                )
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * bias)


def _save(folder: Path, model, processor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


# -- caption -------------------------------------------------------------------------------


def _byte_vocab() -> dict[str, int]:
    """GPT-2's byte -> printable-symbol table (the byte-level BPE alphabet), in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return {symbols[b]: b for b in range(256)}


def build_captioner(folder: Path, seed: int = 2) -> Path:
    from transformers import (
        GPT2Config,
        GPT2Tokenizer,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        VisionTextDualEncoderProcessor,
        ViTConfig,
        ViTImageProcessor,
    )

    vocab = _byte_vocab()
    merges = [
        ("Ġ", "a"),
        ("Ġ", "t"),
        ("t", "h"),
        ("Ġt", "h"),
        ("e", "r"),
        ("Ġ", "c"),
        ("a", "t"),
        ("Ġc", "at"),
        ("o", "n"),
        ("Ġ", "on"),
    ]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token

    torch.manual_seed(seed)
    enc = ViTConfig(
        image_size=IMAGE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=0.5,
    )
    dec = GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        vocab_size=len(tok),
        initializer_range=0.5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        add_cross_attention=True,
        is_decoder=True,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = tok.bos_token_id
    config.pad_token_id = tok.eos_token_id
    config.eos_token_id = tok.eos_token_id
    model = VisionEncoderDecoderModel(config=config).eval()
    with torch.no_grad():  # a louder end-of-text token so some captions stop early
        model.decoder.transformer.wte.weight[tok.eos_token_id] *= 3.0
    for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(config, key))
    images = ViTImageProcessor(size={"height": IMAGE, "width": IMAGE})
    processor = VisionTextDualEncoderProcessor(image_processor=images, tokenizer=tok)
    return _save(folder, model, processor)


# -- detect --------------------------------------------------------------------------------


def build_detector(folder: Path, seed: int = 0) -> Path:
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(seed)
    backbone = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage2"],
    )
    config = DetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=12,
        **_labels(LABELS),
    )
    model = DetrForObjectDetection(config).eval()
    _shake(model, seed)
    with torch.no_grad():  # distinct queries, box centres off the sigmoid's flat ends
        model.get_parameter("model.query_position_embeddings.weight").mul_(10.0)
        last = model.bbox_predictor.layers[-1]
        last.weight.mul_(0.3)
        last.bias.zero_()
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return _save(folder, model, processor)


# -- segment -------------------------------------------------------------------------------


def build_segmenter(folder: Path, seed: int = 0) -> Path:
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        **_labels(SEG_LABELS),
    )
    model = SegformerForSemanticSegmentation(config).eval()
    _shake(model, seed)
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})
    return _save(folder, model, processor)


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


def build_explainer(folder: Path, hidden: int = 16, heads: int = 2, qk_gain: float = 2.0) -> Path:
    """A 2-layer ViT classifier whose every head makes CLS attend to the brightest patch.

    The patch conv writes a patch's mean brightness into channel 1 (and 1 into channel
    2, so LayerNorm keeps brightness differences); CLS is a one-hot on channel 0; queries
    read channel 0 and keys channel 1, so the CLS->patch score grows with brightness.
    """
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        image_size=IMAGE,
        patch_size=8,
        num_labels=2,
        id2label={0: "bright", 1: "dark"},
        label2id={"bright": 0, "dark": 1},
    )
    model = ViTForImageClassification(config)
    head_dim = hidden // heads
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.zero_()
            leaf = name.split(".")[-1]
            owner = name.rsplit(".", 1)[0]
            if leaf == "cls_token":
                param[..., 0] = 1.0
            elif owner.endswith("patch_embeddings.projection"):
                if leaf == "weight":
                    param[1] = 1.0 / param[1].numel()
                else:
                    param[2] = 1.0
            elif "norm" in owner and leaf == "weight":
                param.fill_(1.0)
            elif owner.endswith("q_proj") and leaf == "weight":
                for h in range(heads):
                    param[h * head_dim, 0] = qk_gain
            elif owner.endswith("k_proj") and leaf == "weight":
                for h in range(heads):
                    param[h * head_dim, 1] = qk_gain
            elif owner.endswith("v_proj") and leaf == "weight":
                for h in range(heads):
                    param[h * head_dim + 1, 1] = 1.0
            elif owner.endswith("o_proj") and leaf == "weight":
                for h in range(heads):
                    param[3, h * head_dim + 1] = 0.1
            elif owner.endswith("classifier") and leaf == "weight":
                param[0, 3] = 1.0
                param[1, 3] = -1.0
    processor = ViTImageProcessor(
        size={"height": IMAGE, "width": IMAGE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return _save(folder, model.eval(), processor)


BUILDERS = {
    "caption": build_captioner,
    "detect": build_detector,
    "segment": build_segmenter,
    "restore": build_restorer,
    "restore-onnx": build_onnx_restorer,
    "explain": build_explainer,
}


def build_all(out: Path = DEFAULT_OUT) -> dict:
    """(Re)build every model under `out`; returns the manifest it writes."""
    import transformers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "generated_by": "packaging/make_selftest_models.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "models": {},
    }
    for task, build in BUILDERS.items():
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
    args = parser.parse_args(argv)
    manifest = build_all(args.out)
    total = sum(m["bytes"] for m in manifest["models"].values())
    for task, info in manifest["models"].items():
        print(f"{task:8} {info['bytes'] / 1e3:8.1f} kB  {info['path']}")
    print(f"total    {total / 1e3:8.1f} kB  in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
