"""Object detection: one entry point, model families chosen by a registry.

    results = detect(runner, images, threshold=0.5, classes=["person"])

A family is a module of engine/tasks/detectors/ (one per family, listed in its
`FAMILY_MODULES`) stating a `DetectorFamily`: a function (runner, images, options) ->
list[Detections], the model types it serves (transformers' `config.model_type`) or the
sidecar `family` that names it (`"yolo"` for YOLO-style ONNX exports, `"mtcnn"` for the
face detector), and its capabilities. Families call the processor's own post-processing
where transformers has one, so our boxes are transformers' boxes; the runner hides
whether a torch model or its ONNX export produced the outputs. This module keeps the
entry point and what the families share (`finish`, `class_filter`, `model_info`).

All boxes come back in original pixels (x0, y0, x1, y1), clipped to the image, sorted
by decreasing score. Images of one size are batched together, so results never
depend on which other images shared a batch (no padding between sizes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.errors import UnsupportedModelError, UsageError
from engine.events import CancelToken, Progress, ProgressCallback
from engine.results import Box, Detections
from engine.tasks.detectors import FAMILY_MODULES
from engine.tasks.family_table import FamilyTable, TaskFamily

if TYPE_CHECKING:
    from engine.media.image import LoadedImage
    from engine.runtimes.base import Runner


@dataclass(frozen=True)
class DetectOptions:
    threshold: float = 0.5
    nms_iou: float | None = None  # None: the family's default (YOLO 0.45; DETR-likes need none)
    max_detections: int = 100
    classes: tuple[str, ...] | None = None  # filter (closed vocabulary) or text queries (open)


Family = Callable[["Runner", list[Image.Image], DetectOptions], list[Detections]]


@dataclass(frozen=True)
class DetectorFamily(TaskFamily):
    """A detector family as data (see engine.tasks.family_table): `run(runner, images, opts)`,
    the model types / sidecar families it serves, and whether it is open-vocabulary
    (then `classes` are the text queries, and required)."""

    open_vocabulary: bool = False


# The families: one module each, listed in engine/tasks/detectors/__init__.py, imported on
# the first lookup (the first detect()).
FAMILIES: FamilyTable[DetectorFamily] = FamilyTable("detector", FAMILY_MODULES)


def register_family(family: DetectorFamily, *, replace: bool = False) -> DetectorFamily:
    """Add a detector family (a plug-in's); a name or model type already taken raises
    DuplicateRegistrationError naming both."""
    return FAMILIES.register(family, replace=replace, stacklevel=2)


# -- what a runner is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    model_type: str | None
    id2label: dict[int, str]


def model_info(runner: Runner) -> ModelInfo:
    """model_type and label map from the loaded module's config, else the folder's config.json.

    ONNX exports carry no config object, so their card's folder (the export sits next to
    the config.json it was exported from) is read instead; sidecar `labels` override.
    """
    config: Any = None
    module = getattr(runner, "module", None)
    if module is not None:
        config = getattr(module, "config", None)
    config = config if config is not None else getattr(runner, "config", None)
    model_type = getattr(config, "model_type", None) if config is not None else None
    id2label = dict(getattr(config, "id2label", None) or {}) if config is not None else {}
    if config is None:
        raw = _config_json(runner)
        model_type = raw.get("model_type")
        id2label = raw.get("id2label") or {}
    sidecar = getattr(runner.card, "sidecar", {}) or {}
    model_type = sidecar.get("model_type", model_type)
    labels = sidecar.get("labels")
    if isinstance(labels, dict):
        id2label = labels
    elif isinstance(labels, (list, tuple)):
        id2label = dict(enumerate(labels))
    return ModelInfo(model_type, {int(k): str(v) for k, v in id2label.items()})


def _config_json(runner: Runner) -> dict[str, Any]:
    local = getattr(runner.card, "local_path", None)
    candidates = []
    if local:
        path = Path(local)
        candidates.append((path.parent if path.is_file() else path) / "config.json")
    for attr in ("snapshot", "folder"):  # a torch snapshot; the folder an ONNX graph came from
        snapshot = getattr(runner, attr, None)
        if snapshot:
            path = Path(snapshot)
            candidates.append((path.parent if path.is_file() else path) / "config.json")
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return {}


def family_for(runner: Runner) -> DetectorFamily:
    return FAMILIES.for_runner(
        runner, lambda r: model_info(r).model_type,
        hint='for a YOLO-style ONNX file set family = "yolo" in its sidecar.')


# -- the entry point ----------------------------------------------------------------------------


def detect(
    runner: Runner,
    images: Sequence[LoadedImage | Image.Image],
    *,
    threshold: float = 0.5,
    nms_iou: float | None = None,
    max_detections: int = 100,
    classes: Sequence[str] | None = None,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[Detections]:
    """Detect objects in each image; one Detections per image, in input order."""
    if batch_size < 1:
        raise UsageError("batch_size must be at least 1.")
    if max_detections < 1:
        raise UsageError("max_detections must be at least 1.")
    family = family_for(runner)
    opts = DetectOptions(
        threshold=float(threshold),
        nms_iou=nms_iou,
        max_detections=int(max_detections),
        classes=tuple(classes) if classes else None,
    )
    if family.open_vocabulary and not opts.classes:
        raise UsageError(
            f"Model '{runner.card.id}' is open-vocabulary: say what to look for "
            f'with classes (e.g. --classes "cat,red car").'
        )
    return run_in_size_batches(lambda batch: family.run(runner, batch, opts), images,
                               batch_size=batch_size, progress=progress, cancel=cancel)


def run_in_size_batches(run: Callable[[list[Image.Image]], list[Any]],
                        images: Sequence[LoadedImage | Image.Image], *, batch_size: int,
                        progress: ProgressCallback | None = None,
                        cancel: CancelToken | None = None) -> list[Any]:
    """Run `run` over same-size batches (so a result never depends on its batch-mates);
    results come back in input order. Shared by detection and segmentation."""
    pils = [as_pil(img) for img in images]
    results: list[Any] = [None] * len(pils)
    done = 0
    for group in size_batches(pils, batch_size):
        if cancel is not None:
            cancel.raise_if_cancelled()
        for index, result in zip(group, run([pils[i] for i in group])):
            results[index] = result
        done += len(group)
        if progress is not None:
            progress(Progress(stage="infer", done=done, total=len(pils), unit="images"))
    return results


def as_pil(image: LoadedImage | Image.Image) -> Image.Image:
    """8-bit RGB Pillow image (a LoadedImage already has EXIF orientation applied)."""
    rgb = getattr(image, "rgb", None)
    if rgb is not None:
        return rgb
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    raise TypeError(f"expected a LoadedImage or a PIL image, got {type(image).__name__}")


def size_batches(images: Sequence[Image.Image], batch_size: int) -> list[list[int]]:
    """Indices grouped by image size, in first-seen order, each group cut to batch_size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.size, []).append(i)
    return [
        idx[k : k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)
    ]


# -- shared post-processing ---------------------------------------------------------------------


def class_filter(opts: DetectOptions, id2label: dict[int, str], model_id: str) -> set[int] | None:
    if not opts.classes:
        return None
    by_name = {name.lower(): i for i, name in id2label.items()}
    unknown = [c for c in opts.classes if c.lower() not in by_name]
    if unknown:
        sample = ", ".join(list(id2label.values())[:12])
        raise UsageError(
            f"Model '{model_id}' has no class {', '.join(map(repr, unknown))}. "
            f"Its classes include: {sample}…"
        )
    return {by_name[c.lower()] for c in opts.classes}


def finish(
    scores: np.ndarray,
    label_ids: np.ndarray,
    boxes: np.ndarray,
    *,
    image_size: tuple[int, int],
    id2label: dict[int, str],
    opts: DetectOptions,
    keep_ids: set[int] | None = None,
    label_names: Sequence[str] | None = None,
    nms_iou: float | None = None,
) -> Detections:
    """Clip, filter, optional class-wise NMS, sort by score, cap, and wrap as Detections."""
    from engine.tasks.nms import batched_nms

    w, h = image_size
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    label_ids = np.asarray(label_ids, dtype=np.int64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    keep = np.ones(len(scores), dtype=bool)
    if keep_ids is not None:
        keep &= np.isin(label_ids, list(keep_ids))
    idx = np.flatnonzero(keep)
    iou = nms_iou if nms_iou is not None else opts.nms_iou
    if iou is not None and len(idx):
        idx = idx[batched_nms(boxes[idx], scores[idx], label_ids[idx], float(iou))]
    idx = idx[np.argsort(-scores[idx], kind="stable")][: opts.max_detections]
    out = []
    for i in idx:
        name = (
            label_names[i]
            if label_names is not None
            else id2label.get(int(label_ids[i]), str(int(label_ids[i])))
        )
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        out.append(
            Box(x0, y0, x1, y1, label=name, score=float(scores[i]), label_id=int(label_ids[i]))
        )
    return Detections(boxes=out, image_size=(w, h), labels=dict(id2label))


def image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", None) or processor


def require_processor(runner: Runner) -> Any:
    if runner.processor is None:
        raise UnsupportedModelError(
            f"Model '{runner.card.id}' has no image processor (preprocessor_config.json); "
            f"it cannot be prepared for detection. Re-download or re-export it with its "
            f"processor files."
        )
    return runner.processor


def forward_prepared(runner: Runner, processor: Any, images: Sequence[Image.Image]) -> Any:
    """Prepare `images` with the model's processor and run it. A numpy processor (the ONNX
    path: engine.runtimes.lite_processors) feeds the runner's numpy entry point, so the
    batch never becomes a torch tensor; transformers' processors feed torch tensors."""
    from engine.runtimes.lite_processors.base import LiteImageProcessor

    if isinstance(processor, LiteImageProcessor) and hasattr(runner, "forward_arrays"):
        return runner.forward_arrays(processor(images=list(images)))
    return runner.forward(dict(processor(images=list(images), return_tensors="pt")))


def to_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t)


def finish_decoded(decoded: Sequence[Mapping[str, Any]], images: Sequence[Image.Image], *,
                   id2label: dict[int, str], opts: DetectOptions,
                   keep_ids: set[int] | None = None) -> list[Detections]:
    """`finish` for each image of transformers' post-processing output
    ({"scores", "labels", "boxes"} per image, in original pixels)."""
    return [finish(to_numpy(d["scores"]), to_numpy(d["labels"]), to_numpy(d["boxes"]),
                   image_size=img.size, id2label=id2label, opts=opts, keep_ids=keep_ids)
            for d, img in zip(decoded, images)]
