"""What each model can explain, so the GUI greys out the rest before running anything.

Answers from a ModelCard, a transformers config, a torch module or an ONNX
attention model, with the same vocabulary as `engine.catalog.card.AttentionSupport`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.catalog.card import AttentionSupport

_SELF = ("raw", "rollout", "relevance", "cls_similarity", "patch_similarity", "dino", "discover",
         "class_attention")
_SELF_NO_CLS = ("raw", "rollout", "relevance", "patch_similarity", "discover")

FULL_TYPES = {
    "vit", "vit_msn", "vit_mae", "deit", "dinov2", "dinov2_with_registers", "beit", "data2vec-vision",
    "clip", "clip_vision_model", "yolos",
}
NO_CLS_TYPES = {"siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model"}
CAPTIONER_TYPES = {"vision-encoder-decoder", "blip", "git"}
DETECTOR_TYPES = {"detr"}
WINDOWED_TYPES = {"swin", "swinv2", "swin2sr", "donut-swin"}
CONV_TYPES = {
    "convnext", "convnextv2", "resnet", "regnet", "bit", "mobilenet_v1", "mobilenet_v2", "efficientnet",
    "van", "poolformer", "mlp-mixer", "resnetv2", "dinat",
}


@dataclass(frozen=True)
class ExplainCapabilities:
    support: AttentionSupport
    methods: tuple[str, ...]  # what `explain(..., method=…)` accepts for this model
    reason: str  # one sentence for the GUI's tooltip on greyed-out methods
    model_type: str = ""

    def allows(self, method: str) -> bool:
        return method in self.methods


def _for_model_type(model_type: str, config: Any = None) -> ExplainCapabilities:
    if model_type in FULL_TYPES:
        return ExplainCapabilities(AttentionSupport.FULL, _SELF,
                                   "global self-attention: every method over the patch tokens", model_type)
    if model_type in NO_CLS_TYPES:
        return ExplainCapabilities(AttentionSupport.FULL, _SELF_NO_CLS,
                                   "global self-attention without a CLS token: maps show the attention "
                                   "patches receive; no CLS similarity, no DINO maps", model_type)
    if model_type in CAPTIONER_TYPES:
        encoder = config
        if model_type == "vision-encoder-decoder" and config is not None:
            encoder = getattr(config, "encoder", None)
        encoder_type = getattr(encoder, "model_type", "") if model_type == "vision-encoder-decoder" else ""
        if encoder_type in WINDOWED_TYPES:
            return ExplainCapabilities(AttentionSupport.CROSS, ("cross_attention",),
                                       "captioner with a windowed encoder: per-token cross-attention only",
                                       model_type)
        return ExplainCapabilities(AttentionSupport.CROSS, _SELF + ("cross_attention",),
                                   "captioner: encoder self-attention plus one cross-attention map per "
                                   "generated token", model_type)
    if model_type in DETECTOR_TYPES:
        return ExplainCapabilities(AttentionSupport.CROSS, ("raw", "rollout", "detr"),
                                   "DETR: encoder self-attention over the CNN feature map and one decoder "
                                   "cross-attention map per detected object", model_type)
    if model_type in WINDOWED_TYPES:
        return ExplainCapabilities(AttentionSupport.WINDOWED, ("windowed",),
                                   "windowed attention (Swin): per-window maps stitched onto the image; "
                                   "no global CLS attention, so no rollout or relevance", model_type)
    if model_type in CONV_TYPES:
        return ExplainCapabilities(AttentionSupport.GRADCAM, ("gradcam",),
                                   "no attention layers: Grad-CAM on the last convolutional stage", model_type)
    return ExplainCapabilities(AttentionSupport.NONE, (), f"no attention-map support for '{model_type or 'this model'}'",
                               model_type)


_SUPPORT_DEFAULTS = {
    AttentionSupport.FULL: _SELF,
    AttentionSupport.CROSS: _SELF + ("cross_attention", "detr"),
    AttentionSupport.WINDOWED: ("windowed",),
    AttentionSupport.GRADCAM: ("gradcam",),
    AttentionSupport.NONE: (),
}


def capabilities(model_or_config: Any) -> ExplainCapabilities:
    """What `explain` can do for a ModelCard, transformers config, torch module, Runner
    or ONNX attention model."""
    from engine.catalog.card import ModelCard

    if isinstance(model_or_config, ModelCard):
        card = model_or_config
        support = AttentionSupport(card.attention)
        if card.runtime == "onnx" and support in (AttentionSupport.FULL, AttentionSupport.CROSS):
            return ExplainCapabilities(AttentionSupport.FULL, ("raw", "rollout", "dino", "discover"),
                                       "ONNX model: attention Softmax outputs and keys exposed from the graph "
                                       "(no gradients)", card.architecture or "")
        return ExplainCapabilities(support, _SUPPORT_DEFAULTS[support],
                                   f"from the model card ({support.value})", card.architecture or "")
    onnx_methods = getattr(model_or_config, "explain_methods", None)
    if onnx_methods is not None:  # OnnxAttentionModel
        return ExplainCapabilities(AttentionSupport.FULL, tuple(onnx_methods),
                                   "ONNX model: attention Softmax outputs and token tensors exposed "
                                   "from the graph (no gradients)", "onnx")
    module = getattr(model_or_config, "module", None)
    if module is not None and not callable(getattr(model_or_config, "named_modules", None)):
        model_or_config = module  # a Runner
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", "") or ""
    if not model_type and callable(getattr(model_or_config, "named_modules", None)):
        import torch

        has_conv = any(isinstance(mod, torch.nn.Conv2d) for mod in model_or_config.modules())
        if has_conv:
            return ExplainCapabilities(AttentionSupport.GRADCAM, ("gradcam",),
                                       "plain torch module with convolutions: Grad-CAM on the last "
                                       "4-D activation", type(model_or_config).__name__)
    return _for_model_type(model_type, config)
