"""What a model family offers, keyed by transformers `model_type` or spandrel architecture id.

One table instead of an `elif model_type == ...` chain: hub inference and local import
look a family up here to learn its attention support, the seed system it stands for and,
for ONNX exports, the output layout the task post-processing expects.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.catalog.card import AttentionSupport

FULL = AttentionSupport.FULL
CROSS = AttentionSupport.CROSS
WINDOWED = AttentionSupport.WINDOWED
GRADCAM = AttentionSupport.GRADCAM


@dataclass(frozen=True)
class Family:
    attention: AttentionSupport
    seed: str = ""
    onnx_output: str | None = None  # sidecar `output` for an ONNX export of this family


SEED_CPTR = "CPTR: words-to-patches cross-attention"
SEED_GIT = "Florence-2 / GiT: one ViT for many tasks"
SEED_SWIN = "Swin / Mask2Former"
SEED_SWIN2SR = "Swin2SR"
SEED_DINO = "DINO / DINOv2 with registers"
SEED_VIT = "ViT: an image is worth 16x16 words"
SEED_DETR = "DETR: detection as set prediction"
SEED_OPEN_VOCAB = "OWL-ViT / Grounding DINO: open-vocabulary detection"
SEED_SAM = "SAM: promptable segmentation"
SEED_SEGFORMER = "SegFormer: hierarchical transformer segmentation"
SEED_ESRGAN = "Real-ESRGAN: convolutional restoration baseline"

# transformers model_type -> family. Anything absent falls back to Grad-CAM (torch) or
# nothing (ONNX), which is always safe: the GUI only greys out methods.
TRANSFORMERS_FAMILIES: dict[str, Family] = {
    # plain ViTs: global self-attention over patches
    "vit": Family(FULL, SEED_VIT, "hidden_states"),
    "deit": Family(FULL, SEED_VIT, "hidden_states"),
    "beit": Family(FULL, SEED_VIT),
    "data2vec-vision": Family(FULL, SEED_VIT),
    "vit_mae": Family(FULL, SEED_VIT),
    "vit_msn": Family(FULL, SEED_VIT),
    "ijepa": Family(FULL, SEED_VIT),
    "dinov2": Family(FULL, SEED_DINO, "hidden_states"),
    "dinov2_with_registers": Family(FULL, SEED_DINO, "hidden_states"),
    "clip": Family(FULL, SEED_VIT),
    "siglip": Family(FULL, SEED_VIT),
    "yolos": Family(FULL, SEED_DETR, "detr"),
    "owlvit": Family(FULL, SEED_OPEN_VOCAB),
    "owlv2": Family(FULL, SEED_OPEN_VOCAB),
    # captioners: words attend to patches
    "vision-encoder-decoder": Family(CROSS, SEED_CPTR, "seq2seq"),
    "blip": Family(CROSS, SEED_CPTR),
    "blip-2": Family(CROSS, SEED_CPTR),
    "instructblip": Family(CROSS, SEED_CPTR),
    "git": Family(CROSS, SEED_GIT),
    "florence2": Family(CROSS, SEED_GIT),
    "idefics3": Family(CROSS, SEED_GIT),
    "smolvlm": Family(CROSS, SEED_GIT),
    "paligemma": Family(CROSS, SEED_GIT),
    "pix2struct": Family(CROSS, SEED_CPTR),
    # DETR decoders: object queries cross-attend to the whole feature map
    "detr": Family(CROSS, SEED_DETR, "detr"),
    "conditional_detr": Family(CROSS, SEED_DETR, "detr"),
    "table-transformer": Family(CROSS, SEED_DETR, "detr"),
    # deformable attention samples a few points: no dense maps, so Grad-CAM
    "deformable_detr": Family(GRADCAM, SEED_DETR),
    "rt_detr": Family(GRADCAM, SEED_DETR, "rtdetr"),
    "rt_detr_v2": Family(GRADCAM, SEED_DETR, "rtdetr"),
    "d_fine": Family(GRADCAM, SEED_DETR, "rtdetr"),
    # windowed attention
    "swin": Family(WINDOWED, SEED_SWIN),
    "swinv2": Family(WINDOWED, SEED_SWIN),
    "donut-swin": Family(WINDOWED, SEED_SWIN),
    "maskformer-swin": Family(WINDOWED, SEED_SWIN),
    "swin2sr": Family(WINDOWED, SEED_SWIN2SR, "image"),
    "sam": Family(WINDOWED, SEED_SAM, "sam"),
    "sam2": Family(WINDOWED, SEED_SAM),
    "vitdet": Family(WINDOWED, SEED_VIT),
    "dinat": Family(WINDOWED, SEED_SWIN),
    "nat": Family(WINDOWED, SEED_SWIN),
    # SegFormer's attention uses spatially reduced keys: no square maps to roll out
    "segformer": Family(GRADCAM, SEED_SEGFORMER, "semantic_logits"),
}

# Families whose attention is that of their backbone (`config.backbone_config.model_type`).
BACKBONE_FAMILIES: dict[str, str] = {
    "mask2former": SEED_SWIN,
    "maskformer": SEED_SWIN,
    "oneformer": SEED_SWIN,
    "upernet": SEED_SWIN,
    "grounding-dino": SEED_OPEN_VOCAB,
    "mm-grounding-dino": SEED_OPEN_VOCAB,
}

# spandrel architecture ids with (shifted-)window attention; the rest are convolutional.
SPANDREL_WINDOWED = {
    "SwinIR", "Swin2SR", "HAT", "DAT", "DRCT", "ATD", "GRL", "RGT", "IPT",
    "Uformer", "SRFormer", "MoESR",
}
SPANDREL_SEEDS = {
    "ESRGAN": SEED_ESRGAN,
    "RealCUGAN": SEED_ESRGAN,
    "Compact": SEED_ESRGAN,
    "Swin2SR": SEED_SWIN2SR,
    "SwinIR": SEED_SWIN2SR,
    "HAT": SEED_SWIN2SR,
    "DAT": SEED_SWIN2SR,
}


def transformers_family(config: dict | None) -> Family:
    """The family of a transformers config (a config.json dict); Grad-CAM when unknown."""
    config = config or {}
    model_type = str(config.get("model_type") or "")
    if model_type in TRANSFORMERS_FAMILIES:
        return TRANSFORMERS_FAMILIES[model_type]
    if model_type in BACKBONE_FAMILIES:
        backbone = config.get("backbone_config") or {}
        inner = TRANSFORMERS_FAMILIES.get(str(backbone.get("model_type") or ""))
        attention = inner.attention if inner else GRADCAM
        # a query decoder over a global backbone is still no dense full map; keep windowed/gradcam
        if attention is FULL:
            attention = GRADCAM
        return Family(attention, BACKBONE_FAMILIES[model_type])
    return Family(GRADCAM)


def spandrel_family(architecture_id: str) -> Family:
    attention = WINDOWED if architecture_id in SPANDREL_WINDOWED else GRADCAM
    return Family(attention, SPANDREL_SEEDS.get(architecture_id, ""), "image")


# transformers auto-class mapping -> (Ocula task, variant). Order matters: a class can sit
# in several mappings (GitForCausalLM is also a causal LM; SamModel is also a base model).
_AUTO_MAPPINGS: tuple[tuple[str, str, str | None], ...] = (
    ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "caption", None),
    ("MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES", "caption", None),
    ("MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES", "detect", "open-vocab"),
    ("MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES", "detect", None),
    ("MODEL_FOR_MASK_GENERATION_MAPPING_NAMES", "segment", "promptable"),
    ("MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES", "segment", None),  # checkpoint decides
    ("MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES", "segment", "instance"),
    ("MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES", "segment", "semantic"),
    ("MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES", "segment", None),
    ("MODEL_FOR_IMAGE_MATTING_MAPPING_NAMES", "segment", "matting"),
    ("MODEL_FOR_IMAGE_TO_IMAGE_MAPPING_NAMES", "restore", None),
    ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "features", None),
    ("MODEL_FOR_IMAGE_MAPPING_NAMES", "features", None),
)


def task_for_architecture(architecture: str) -> tuple[str, str | None] | None:
    """(task, variant) for a transformers class name such as 'RTDetrForObjectDetection'.

    Read from transformers' own auto-class tables (imported lazily), so a class is known
    exactly when the installed transformers can build it. None when no task fits.
    """
    from transformers.models.auto import modeling_auto  # lazy: ~1 s import

    for table_name, task, variant in _AUTO_MAPPINGS:
        table = getattr(modeling_auto, table_name, None) or {}
        for value in table.values():
            names = value if isinstance(value, (tuple, list)) else (value,)
            if architecture in names:
                return task, variant
    return None
