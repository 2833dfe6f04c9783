"""Segmentation: semantic, panoptic, instance, promptable (SAM) and matting (alpha mattes).

    results = segment(runner, images)                         # the model's own mode
    results = segment(runner, images, mode="instance")        # Mask2Former as instances
    results = segment(runner, images, points=[(120, 80)])     # SAM, one click
    results = segment(runner, images, boxes=[(10, 10, 90, 70)])

Families are registered per transformers model type (or named by the sidecar's
`family`, e.g. "matting" for a BiRefNet-style ONNX export) with the modes they offer.
Post-processing is the processor's own (`post_process_semantic_segmentation`,
`…_panoptic_…`, `…_instance_…`, SAM's `post_process_masks`), always with the original
sizes, so every mask, label map and matte is at the original resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.errors import UnsupportedModelError, UsageError
from engine.events import CancelToken, ProgressCallback
from engine.results import Segmentation, SegmentInstance
from engine.tasks.detect import model_info, run_in_size_batches

if TYPE_CHECKING:
    from engine.media.image import LoadedImage
    from engine.runtimes.base import Runner

MODES = ("semantic", "panoptic", "instance", "promptable", "matting")


@dataclass(frozen=True)
class SegmentOptions:
    mode: str
    threshold: float = 0.5
    points: tuple[tuple[float, float, int], ...] = ()  # (x, y, 1 = foreground / 0 = background)
    boxes: tuple[tuple[float, float, float, float], ...] = ()


SegFamily = Callable[["Runner", list[Image.Image], SegmentOptions], list[Segmentation]]


@dataclass(frozen=True)
class SegFamilyEntry:
    name: str
    run: SegFamily
    modes: tuple[str, ...]  # first = default


_FAMILIES: dict[str, SegFamilyEntry] = {}
_BY_MODEL_TYPE: dict[str, str] = {}


def register_family(
    name: str, *model_types: str, modes: tuple[str, ...]
) -> Callable[[SegFamily], SegFamily]:
    def deco(fn: SegFamily) -> SegFamily:
        _FAMILIES[name] = SegFamilyEntry(name, fn, modes)
        for model_type in model_types:
            _BY_MODEL_TYPE[model_type] = name
        return fn

    return deco


def family_for(runner: Runner) -> SegFamilyEntry:
    card = runner.card
    sidecar = getattr(card, "sidecar", {}) or {}
    name = sidecar.get("family") or ("matting" if card.variant == "matting" else None)
    if name is None:
        model_type = model_info(runner).model_type
        name = _BY_MODEL_TYPE.get(model_type or "")
        if name is None:
            raise UnsupportedModelError(
                f"Model '{card.id}' (model type {model_type or 'unknown'}) is not a segmenter "
                f"Ocula knows. Known model types: {', '.join(sorted(_BY_MODEL_TYPE))}; for an "
                f'alpha-matte ONNX export set family = "matting" in its sidecar.'
            )
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(
            f"Model '{card.id}': unknown segmentation family '{name}'. "
            f"Known: {', '.join(sorted(_FAMILIES))}."
        ) from None


def _points(points: Sequence[Sequence[float]] | None) -> tuple[tuple[float, float, int], ...]:
    out = []
    for p in points or ():
        if len(p) not in (2, 3):
            raise UsageError(f"A point is (x, y) or (x, y, label); got {tuple(p)!r}.")
        label = int(p[2]) if len(p) == 3 else 1
        if label not in (0, 1):
            raise UsageError(f"A point's label is 1 (object) or 0 (background); got {label}.")
        out.append((float(p[0]), float(p[1]), label))
    return tuple(out)


def _boxes(
    boxes: Sequence[Sequence[float]] | None,
) -> tuple[tuple[float, float, float, float], ...]:
    out = []
    for b in boxes or ():
        if len(b) != 4 or b[2] <= b[0] or b[3] <= b[1]:
            raise UsageError(
                f"A box is (x0, y0, x1, y1) with x1 > x0 and y1 > y0; got {tuple(b)!r}."
            )
        out.append(tuple(float(v) for v in b))
    return tuple(out)  # type: ignore[return-value]


# -- the entry point ----------------------------------------------------------------------------


def segment(
    runner: Runner,
    images: Sequence[LoadedImage | Image.Image],
    *,
    mode: str | None = None,
    points: Sequence[Sequence[float]] | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    threshold: float = 0.5,
    batch_size: int = 4,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[Segmentation]:
    """Segment each image; one Segmentation per image, in input order, at original resolution.

    `points` ((x, y) or (x, y, label) in original pixels) and `boxes` ((x0, y0, x1, y1))
    prompt SAM-like models and apply to every image: all points form one prompt (one mask);
    each box is its own prompt (one mask per box); one box plus points form one prompt.
    """
    if batch_size < 1:
        raise UsageError("batch_size must be at least 1.")
    family = family_for(runner)
    prompts = bool(points) or bool(boxes)
    if mode is None:
        mode = runner.card.variant if runner.card.variant in family.modes else family.modes[0]
    if mode not in family.modes:
        raise UsageError(
            f"Model '{runner.card.id}' offers {', '.join(family.modes)} segmentation, not '{mode}'."
        )
    if mode == "promptable" and not prompts:
        raise UsageError(
            f"Model '{runner.card.id}' segments what you point at: give points "
            f"(--point x,y) or boxes (--box x0,y0,x1,y1)."
        )
    if prompts and mode != "promptable":
        raise UsageError(
            f"Model '{runner.card.id}' ({mode}) does not take points or boxes; "
            f"use a promptable model such as SAM."
        )
    opts = SegmentOptions(
        mode=mode, threshold=float(threshold), points=_points(points), boxes=_boxes(boxes)
    )
    if len(opts.boxes) > 1 and opts.points:
        raise UsageError(
            "Points can be combined with one box only (SAM prompts one object at a "
            "time); give several boxes without points, or one box with points."
        )
    return run_in_size_batches(lambda batch: family.run(runner, batch, opts), images,
                               batch_size=batch_size, progress=progress, cancel=cancel)


# -- helpers ------------------------------------------------------------------------------------


def _numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _processor(runner: Runner) -> Any:
    if runner.processor is None:
        raise UnsupportedModelError(
            f"Model '{runner.card.id}' has no image processor (preprocessor_config.json); "
            f"re-download or re-export it with its processor files."
        )
    return runner.processor


def _image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", None) or processor


# -- semantic -----------------------------------------------------------------------------------


@register_family(
    "semantic",
    "segformer",
    "beit",
    "data2vec-vision",
    "dpt",
    "mobilenet_v2",
    "mobilevit",
    "mobilevitv2",
    "upernet",
    "sapiens2",
    modes=("semantic",),
)
def _run_semantic(
    runner: Runner, images: list[Image.Image], opts: SegmentOptions
) -> list[Segmentation]:
    processor = _image_processor(_processor(runner))
    info = model_info(runner)
    outputs = runner.forward(dict(processor(images=images, return_tensors="pt")))
    maps = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(img.height, img.width) for img in images]
    )
    return [
        Segmentation(
            kind="semantic",
            image_size=img.size,
            label_map=_numpy(m).astype(np.int32),
            labels=dict(info.id2label),
        )
        for m, img in zip(maps, images)
    ]


@register_family("semantic_logits", modes=("semantic",))
def _run_semantic_logits(
    runner: Runner, images: list[Image.Image], opts: SegmentOptions
) -> list[Segmentation]:
    """An ONNX graph its sidecar describes (`output = "semantic_logits"`: [1, C, h, w]).

    With a preprocessor_config.json this is the semantic family (transformers' own pre- and
    post-processing); without one the sidecar says how to feed it (resize to `input_size`
    when fixed, `range`, `mean`/`std`, layout), and the logits are upsampled bilinearly to
    the image and argmaxed: what `post_process_semantic_segmentation` does.
    """
    if runner.processor is not None:
        return _run_semantic(runner, images, opts)
    import cv2

    sidecar = getattr(runner.card, "sidecar", {}) or {}
    labels = sidecar.get("labels")
    id2label = dict(enumerate(labels)) if isinstance(labels, list) else {}
    results = []
    for img in images:  # one at a time: exports are often fixed at batch 1
        outputs = runner.forward({sidecar.get("input_name") or "pixel_values":
                                  _sidecar_pixels(img, sidecar)})
        logits = _numpy(_nth_output(runner, outputs, 0)).astype(np.float32)[0]  # [C, h, w]
        upsampled = np.stack([cv2.resize(channel, img.size, interpolation=cv2.INTER_LINEAR)
                              for channel in logits])
        label_map = upsampled.argmax(axis=0).astype(np.int32)
        results.append(Segmentation(kind="semantic", image_size=img.size, label_map=label_map,
                                    labels=id2label or {i: str(i) for i in range(len(logits))}))
    return results


def _sidecar_pixels(img: Image.Image, sidecar: dict[str, Any]) -> np.ndarray:
    """One image as the sidecar's graph wants it: [1, 3, H, W] (or NHWC) float32."""
    size = sidecar.get("input_size")
    if size:
        img = img.resize((int(size[0]), int(size[1])), Image.BILINEAR)
    top = float(sidecar.get("range", [0.0, 1.0])[1])
    arr = np.asarray(img.convert("RGB"), np.float32) * (top / 255.0)
    mean = np.asarray(sidecar.get("mean", [0.0]), np.float32)
    std = np.asarray(sidecar.get("std", [1.0]), np.float32)
    arr = (arr - mean) / std
    layout = str(sidecar.get("input_layout", "NCHW")).upper()
    return (arr[None] if layout == "NHWC" else arr.transpose(2, 0, 1)[None]).astype(np.float32)


# -- panoptic / instance (Mask2Former, MaskFormer) -----------------------------------------------


@register_family(
    "universal", "mask2former", "maskformer", modes=("panoptic", "instance", "semantic")
)
def _run_universal(
    runner: Runner, images: list[Image.Image], opts: SegmentOptions
) -> list[Segmentation]:
    processor = _image_processor(_processor(runner))
    info = model_info(runner)
    outputs = runner.forward(dict(processor(images=images, return_tensors="pt")))
    sizes = [(img.height, img.width) for img in images]
    if opts.mode == "semantic":
        maps = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        return [
            Segmentation(
                kind="semantic",
                image_size=img.size,
                label_map=_numpy(m).astype(np.int32),
                labels=dict(info.id2label),
            )
            for m, img in zip(maps, images)
        ]
    if opts.mode == "panoptic":
        decoded = processor.post_process_panoptic_segmentation(
            outputs, threshold=opts.threshold, target_sizes=sizes, label_ids_to_fuse=set()
        )
    else:
        # binary maps keep overlapping instances whole (a segment-id map would cut them)
        decoded = processor.post_process_instance_segmentation(
            outputs, threshold=opts.threshold, target_sizes=sizes, return_binary_maps=True
        )
    return [_universal_result(d, img, opts.mode, info.id2label) for d, img in zip(decoded, images)]


def _universal_result(
    decoded: dict, img: Image.Image, mode: str, id2label: dict[int, str]
) -> Segmentation:
    w, h = img.size
    seg = _numpy(decoded["segmentation"]) if decoded["segmentation"] is not None else None
    label_map = np.full((h, w), -1, dtype=np.int32)
    instances = []
    for info in decoded["segments_info"]:
        if seg is None:
            break
        if mode == "instance" and seg.ndim == 3:
            mask = seg[len(instances)] > 0.5
        else:
            mask = seg == info["id"]
        label_id = int(info["label_id"])
        instances.append(
            SegmentInstance(
                mask=mask,
                label=id2label.get(label_id, str(label_id)),
                label_id=label_id,
                score=float(info["score"]),
                segment_id=int(info["id"]),
            )
        )
    for inst in sorted(instances, key=lambda i: i.score):  # overlaps: the best instance on top
        label_map[inst.mask] = inst.label_id
    return Segmentation(
        kind=mode,
        image_size=(w, h),
        label_map=label_map,
        instances=instances,
        labels=dict(id2label),
    )


# -- promptable (SAM) ---------------------------------------------------------------------------

_SAM_INPUTS = ("pixel_values", "input_points", "input_labels", "input_boxes")


@register_family("sam", "sam", modes=("promptable",))
def _run_sam(runner: Runner, images: list[Image.Image], opts: SegmentOptions) -> list[Segmentation]:
    """SAM / SlimSAM: the best of the three proposed masks (by predicted IoU) per prompt."""
    processor = _processor(runner)
    n = len(images)
    kwargs: dict[str, Any] = {}
    if opts.boxes:
        kwargs["input_boxes"] = [[list(b) for b in opts.boxes]] * n
    if opts.points:
        prompt_count = len(opts.boxes) or 1  # a point prompt goes with (at most) one box
        kwargs["input_points"] = [[[[x, y] for x, y, _ in opts.points]] * prompt_count] * n
        kwargs["input_labels"] = [[[lab for _, _, lab in opts.points]] * prompt_count] * n
    inputs = processor(images=images, return_tensors="pt", **kwargs)
    outputs = runner.forward({k: inputs[k] for k in _SAM_INPUTS if k in inputs})
    masks = _image_processor(processor).post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    scores = _numpy(outputs.iou_scores)  # [B, prompts, 3]
    results = []
    for i, img in enumerate(images):
        image_masks = _numpy(masks[i])  # [prompts, 3, H, W] bool
        instances = []
        for p in range(image_masks.shape[0]):
            best = int(np.argmax(scores[i, p]))
            instances.append(
                SegmentInstance(
                    mask=image_masks[p, best].astype(bool),
                    label="object",
                    label_id=0,
                    score=float(scores[i, p, best]),
                    segment_id=p + 1,
                )
            )
        w, h = img.size
        label_map = np.full((h, w), -1, dtype=np.int32)
        for inst in instances:
            label_map[inst.mask] = 0
        results.append(
            Segmentation(
                kind="promptable",
                image_size=(w, h),
                label_map=label_map,
                instances=instances,
                labels={0: "object"},
            )
        )
    return results


# -- matting (alpha mattes from ONNX exports such as BiRefNet) ------------------------------------


@dataclass(frozen=True)
class MattingSpec:
    """Sidecar of a matting export: input size (width, height), normalisation, I/O names."""

    input_size: tuple[int, int] = (1024, 1024)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_name: str | None = None
    output_name: str | None = None
    output_index: int = -1  # BiRefNet lists coarse-to-fine outputs: the last is the finest
    activation: str = "sigmoid"  # sigmoid | none (the graph already outputs 0..1)

    @classmethod
    def from_sidecar(cls, sidecar: dict[str, Any]) -> MattingSpec:
        size = sidecar.get("input_size", sidecar.get("size", 1024))
        input_size = (
            (int(size), int(size))
            if isinstance(size, (int, float))
            else (int(size[0]), int(size[1]))
        )
        activation = str(sidecar.get("activation", "sigmoid")).lower()
        if activation not in ("sigmoid", "none"):
            raise UsageError(
                f"Matting sidecar: activation must be sigmoid or none, got {activation!r}."
            )
        return cls(
            input_size=input_size,
            mean=tuple(float(v) for v in sidecar.get("mean", cls.mean)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in sidecar.get("std", cls.std)),  # type: ignore[arg-type]
            input_name=sidecar.get("input_name"),
            output_name=sidecar.get("output_name"),
            output_index=int(sidecar.get("output_index", -1)),
            activation=activation,
        )


def matting_input(images: list[Image.Image], spec: MattingSpec) -> np.ndarray:
    """Resize (bilinear) to the network size, scale to 0..1, normalise, NCHW float32."""
    mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 3)
    std = np.asarray(spec.std, np.float32).reshape(1, 1, 3)
    batch = []
    for img in images:
        resized = img.resize(spec.input_size, Image.BILINEAR)
        arr = (np.asarray(resized, np.float32) / 255.0 - mean) / std
        batch.append(arr.transpose(2, 0, 1))
    return np.stack(batch).astype(np.float32)


def matte_to_original(raw: np.ndarray, size: tuple[int, int], activation: str) -> np.ndarray:
    """(h, w) network matte -> (H, W) float32 in [0, 1] at the original size (bilinear)."""
    import cv2

    values = raw.astype(np.float32)
    if activation == "sigmoid":
        values = 1.0 / (1.0 + np.exp(-values))
    resized = cv2.resize(values, size, interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def _nth_output(runner: Runner, outputs: Any, index: int) -> Any:
    """The graph's n-th output (ONNX aliases added after the graph's own names are skipped)."""
    names_of = getattr(runner, "output_names", None)
    names = names_of() if callable(names_of) else list(outputs.keys())
    return outputs[names[index]]


@register_family("matting", modes=("matting",))
def _run_matting(
    runner: Runner, images: list[Image.Image], opts: SegmentOptions
) -> list[Segmentation]:
    spec = MattingSpec.from_sidecar(getattr(runner.card, "sidecar", {}) or {})
    results = []
    # one image per call: matting exports are usually fixed at batch 1
    for img in images:
        outputs = runner.forward({spec.input_name or "pixel_values": matting_input([img], spec)})
        raw = (
            outputs[spec.output_name]
            if spec.output_name
            else _nth_output(runner, outputs, spec.output_index)
        )
        raw = _numpy(raw).astype(np.float32)
        matte = raw.reshape(raw.shape[-2:]) if raw.ndim > 2 else raw  # [1,1,h,w] -> [h,w]
        alpha = matte_to_original(matte, img.size, spec.activation)
        results.append(
            Segmentation(kind="matting", image_size=img.size, alpha=alpha, labels={0: "foreground"})
        )
    return results
