"""The product's shared words, defined once: tasks, devices, precisions, output formats.

Every front end (CLI, GUI), the job spec and the engine modules import these instead
of keeping their own lists, so a device the doctor accepts is a device a job accepts.
A base module: it imports nothing from the engine but engine.errors.
"""
from __future__ import annotations

from engine.errors import UsageError

# What a job does with its inputs, and what a model can do (a backbone only explains).
JOB_TASKS = ("caption", "detect", "segment", "restore", "explain")
MODEL_TASKS = ("caption", "detect", "segment", "restore", "features")
TASK_LABELS = {"caption": "Caption", "detect": "Detect", "segment": "Segment",
               "restore": "Restore", "explain": "Explain", "features": "Features"}

# Devices: families the placement planner knows (ONNX Runtime providers included), with
# the short names people type. "cuda:N" picks a GPU.
DEVICE_FAMILIES = ("auto", "cpu", "cuda", "mps", "directml", "coreml", "tensorrt")
DEVICE_ALIASES = {"gpu": "cuda", "dml": "directml", "trt": "tensorrt"}
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # what a picker offers first (others typed)

PRECISIONS = ("fp32", "fp16", "bf16")  # compute dtypes of a loaded model (torch or ONNX)
# int8 exists only as a quantized ONNX variant (`ocula models optimize ID --precision int8`,
# or a hub repo's `onnx/model_quantized.onnx`); asked of a model without one, it runs fp32.
QUANTIZED_PRECISIONS = ("int8",)
PRECISION_CHOICES = ("auto", *PRECISIONS, *QUANTIZED_PRECISIONS)
# What `ocula models optimize --precision` makes: the verified fp32 export, or a variant.
OPTIMIZE_PRECISIONS = ("fp32", "int8", "fp16")
VARIANT_PRECISIONS = ("int8", "fp16")

# Output formats per job task: (all known, the default set).
FORMATS: dict[str, tuple[str, ...]] = {
    "caption": ("txt", "jsonl"),
    "detect": ("coco", "yolo", "voc", "csv", "overlay"),
    "segment": ("labelmap", "overlay", "coco", "cutout", "alpha"),
    "restore": ("image",),
    "explain": ("overlay", "npy", "sheet"),
}
DEFAULT_FORMATS: dict[str, tuple[str, ...]] = {
    "caption": ("txt", "jsonl"),
    "detect": ("coco", "overlay"),
    "segment": ("labelmap", "overlay", "coco", "cutout"),
    "restore": ("image",),
    "explain": ("overlay", "npy", "sheet"),
}
IMAGE_FORMATS = ("png", "jpg", "webp", "tiff")
VIDEO_CODECS = ("h264", "h265", "vp9", "ffv1")
VIDEO_FRAME_SELECTIONS = ("all", "keyframes", "scenes")
SEGMENT_MODES = ("semantic", "panoptic", "instance", "promptable", "matting")
# ViT-family encoders on the torch path: token merging (engine.runtimes.token_merging)
SPEED_MODES = ("off", "balanced", "fast")

# Attention-map methods (engine.explain implements each) and the names users may type.
EXPLAIN_METHODS = (
    "raw",  # one layer's attention, one head or heads fused
    "rollout",  # Abnar & Zuidema 2020
    "relevance",  # Chefer et al. 2021 gradient-weighted relevance
    "cls_similarity",  # cosine(CLS feature, patch features), last layer
    "patch_similarity",  # cosine(clicked patch, other patches): click-to-segment
    "dino",  # DINO-style last-layer CLS map per head, mass-thresholded
    "cross_attention",  # captioners: one map per generated token
    "detr",  # DETR decoder cross-attention, one map per detected object
    "gradcam",  # convolutional fallback (Selvaraju et al. 2017)
    "windowed",  # Swin-style window attention stitched onto the image
    "discover",  # unsupervised object discovery (TokenCut / LOST): a mask and one box
    "class_attention",  # last-layer CLS attention weighted by its gradient toward a class
)
EXPLAIN_METHOD_ALIASES = {"cls-similarity": "cls_similarity",
                          "patch-similarity": "patch_similarity",
                          "cross-attention": "cross_attention"}
EXPLAIN_METHOD_WORDS = ("cross", "similarity")  # resolved per model (engine.explain.api)
HEAD_FUSIONS = ("mean", "max", "min")


def split_device(device: str | None) -> tuple[str, int | None]:
    """'cuda:1' -> ('cuda', 1); 'GPU' -> ('cuda', None). Unknown names raise UsageError."""
    text = (device or "auto").strip().lower()
    family, sep, index = text.partition(":")
    family = DEVICE_ALIASES.get(family, family)
    if family not in DEVICE_FAMILIES:
        raise UsageError(f"Device '{device}' is not understood. Use auto, cpu, cuda, cuda:N, "
                         f"mps, directml, coreml or tensorrt (see `ocula doctor`).")
    if sep and not index.isdigit():
        raise UsageError(f"Device '{device}' is not understood: the part after ':' must be "
                         f"a GPU number, e.g. cuda:0.")
    return family, int(index) if sep else None


def normalize_device(device: str | None) -> str:
    """The canonical spelling of a device name ('GPU:1' -> 'cuda:1')."""
    family, index = split_device(device)
    return family if index is None else f"{family}:{index}"


def normalize_precision(precision: str | None) -> str:
    text = (precision or "auto").strip().lower()
    if text not in PRECISION_CHOICES:
        raise UsageError(f"Precision '{precision}' is not one of {', '.join(PRECISION_CHOICES)}.")
    return text
