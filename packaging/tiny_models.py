"""Tiny models from fixed seeds, saved like hub checkpoints: the builders that
`ocula --self-test`'s bundled models (packaging/make_selftest_models.py, into
resources/selftest/) and the test fixtures (tests/fixtures/tiny_*.py) share.

It lives with the build tools because it is one: it makes a shipped artifact. It is
not app code (engine/ would ship it in the wheel and the frozen app, resources/ is data
the app bundles), it imports only torch, transformers and the standard library (never
`engine`, never `tests`), and the tests may depend on packaging, not the reverse.

This folder is not a Python package (`packaging` is also a PyPI distribution that
huggingface_hub imports), so users add the folder to sys.path and `import tiny_models`;
tests do it in tests/fixtures/tiny_models.py.

Every builder is deterministic: the same seed gives the same tensors, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

LABELS = {0: "cat", 1: "dog", 2: "car"}  # the detectors' classes
SEG_LABELS = {0: "sky", 1: "road", 2: "person"}  # the semantic segmenters' classes
CAPTION_IMAGE = 32  # square input edge of the tiny captioners
CAPTION_INIT = 0.5  # captioner weight std: wide enough that captions depend on the image
VIT_QK_GAIN = 2.0  # crafted ViTs: how strongly CLS prefers the brightest patch


def labels(names: dict[int, str]) -> dict:
    """id2label / label2id config arguments for `names`."""
    return {"id2label": dict(names), "label2id": {v: k for k, v in names.items()}}


def shake(model, seed: int = 0, gain: float = 1.5, bias: float = 0.3) -> None:
    """Re-draw weights ~ N(0, gain²/fan_in) and biases ~ N(0, bias²); norms left alone.

    A wider spread than transformers' near-zero init, so that outputs depend on the
    image (queries differ, scores spread around typical thresholds, boxes and masks move).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            lowered = name.lower()
            if param.numel() == 0 or "norm" in lowered or ".bn" in lowered:
                continue  # ("norm" covers batchnorm / layernorm / groupnorm)
            if param.dim() >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) * (gain / fan_in**0.5))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * bias)


def spread_heads(
    model, *, queries: str | None, box_head_scale: float = 0.3, query_scale: float = 10.0
) -> None:
    """Make a DETR-style detector's queries differ and keep box centres off the sigmoid's
    flat ends: after `shake`, layer norms make every query decode to nearly the same box,
    saturated in a corner; scaling the query embeddings up and the last box layer down
    fixes both."""
    import torch

    with torch.no_grad():
        if queries:
            model.get_parameter(queries).mul_(query_scale)
        last = model.bbox_predictor.layers[-1]
        last.weight.mul_(box_head_scale)
        last.bias.zero_()


def save(folder: str | Path, model, processor) -> Path:
    """save_pretrained both into `folder` (safetensors weights, JSON configs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# -- detect / segment ---------------------------------------------------------------------


def build_detr(folder: str | Path, *, seed: int = 0) -> Path:
    """DETR with a 2-stage ResNet (no timm, no pretrained backbone); ~13k parameters."""
    import torch
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
        **labels(LABELS),
    )
    model = DetrForObjectDetection(config).eval()
    shake(model, seed)
    spread_heads(model, queries="model.query_position_embeddings.weight")
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return save(folder, model, processor)


def segformer_config(**overrides):
    """A two-block SegFormer's config (semantic segmentation); `overrides` e.g. labels."""
    from transformers import SegformerConfig

    return SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        **overrides,
    )


def build_segformer(folder: str | Path, *, seed: int = 0) -> Path:
    """SegFormer (semantic segmentation) with SEG_LABELS and a 64×64 processor."""
    import torch
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    config = segformer_config(**labels(SEG_LABELS))
    model = SegformerForSemanticSegmentation(config).eval()
    shake(model, seed)
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})
    return save(folder, model, processor)


# -- caption ------------------------------------------------------------------------------


def byte_vocab() -> dict[str, int]:
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


def gpt2_tokenizer():
    """Byte-level BPE over the 256 byte symbols, a few merges, and <|endoftext|>."""
    from transformers import GPT2Tokenizer

    vocab = byte_vocab()
    merges = [("Ġ", "a"), ("Ġ", "t"), ("t", "h"), ("Ġt", "h"), ("e", "r"), ("Ġ", "c"),
              ("a", "t"), ("Ġc", "at"), ("o", "n"), ("Ġ", "on")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token
    return tok


def vit_gpt2(seed: int = 2):
    """(model, processor): VisionEncoderDecoder, ViT encoder + GPT-2 decoder
    (nlpconnect/vit-gpt2 layout) with the byte-level BPE tokenizer above.

    The end-of-text embedding (tied to the LM head) is scaled ×3 so that, with seed 2,
    some captions stop early and others run to the token limit.
    """
    import torch
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        VisionTextDualEncoderProcessor,
        ViTConfig,
        ViTImageProcessor,
    )

    tok = gpt2_tokenizer()
    torch.manual_seed(seed)
    enc = ViTConfig(image_size=CAPTION_IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, initializer_range=CAPTION_INIT)
    dec = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(tok),
                     initializer_range=CAPTION_INIT,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     add_cross_attention=True, is_decoder=True)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = tok.bos_token_id
    config.pad_token_id = tok.eos_token_id
    config.eos_token_id = tok.eos_token_id
    model = VisionEncoderDecoderModel(config=config).eval()
    with torch.no_grad():  # a louder end-of-text token so some captions stop early
        model.decoder.transformer.wte.weight[tok.eos_token_id] *= 3.0
    for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(config, key))
    images = ViTImageProcessor(size={"height": CAPTION_IMAGE, "width": CAPTION_IMAGE})
    processor = VisionTextDualEncoderProcessor(image_processor=images, tokenizer=tok)
    return model, processor


# -- explain ------------------------------------------------------------------------------


def craft_vit_weights(model, qk_gain: float = VIT_QK_GAIN):
    """Overwrite a ViT-family model's weights (ViT, DeiT, DINOv2 with or without
    registers) so that every head makes the CLS token attend to the BRIGHTEST patch.

    - the patch conv writes a patch's mean brightness into channel 1 (and a constant 1
      into channel 2, so LayerNorm keeps brightness differences, not only signs);
    - the CLS token is a one-hot on channel 0; registers / distillation tokens are
      one-hots on channels 4 / 5; position embeddings are zero;
    - every head's query reads channel 0 and its key channel 1, so the score CLS->patch
      grows with the patch's brightness;
    - values carry brightness to channel 3, which the classifier reads (gradients flow
      through the attention); the MLPs are zero.
    """
    import torch

    hidden, heads = model.config.hidden_size, model.config.num_attention_heads
    head_dim = hidden // heads
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.zero_()
            leaf = name.split(".")[-1]
            owner = name.rsplit(".", 1)[0]
            if leaf == "cls_token":
                param[..., 0] = 1.0
            elif leaf == "distillation_token":
                param[..., 5] = 1.0
            elif leaf == "register_tokens":
                param[..., 4] = 1.0
            elif owner.endswith("patch_embeddings.projection"):
                if leaf == "weight":
                    param[1] = 1.0 / param[1].numel()  # mean brightness over the patch
                else:
                    param[2] = 1.0
            elif "norm" in owner and leaf == "weight" or leaf == "lambda1":
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
            elif owner.split(".")[-1] in ("classifier", "cls_classifier") and leaf == "weight":
                param[0, 3] = 1.0
                param[1, 3] = -1.0
    return model.eval()


def vit_processor(size: tuple[int, int], **options):
    """A ViT image processor that resizes to (height, width) and normalises to [-1, 1]."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        size={"height": size[0], "width": size[1]},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        **options,
    )
