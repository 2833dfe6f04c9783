"""Object detection: one entry point, model families chosen by a registry.

    results = detect(runner, images, threshold=0.5, classes=["person"])

A family is a function (runner, images, options) -> list[Detections], registered for
the model types it serves (transformers' `config.model_type`) or named by the card's
sidecar (`family = "yolo"` for YOLO-style ONNX exports, `"mtcnn"` for the face
detector). Families call the processor's own post-processing where transformers has
one, so our boxes are transformers' boxes; the runner hides whether a torch model or
its ONNX export produced the outputs.

All boxes come back in original pixels (x0, y0, x1, y1), clipped to the image, sorted
by decreasing score. Images of one size are batched together, so results never
depend on which other images shared a batch (no padding between sizes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.errors import UnsupportedModelError, UsageError
from engine.events import CancelToken, Progress, ProgressCallback
from engine.results import Box, Detections

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
class FamilyEntry:
    name: str
    run: Family
    open_vocabulary: bool = False


_FAMILIES: dict[str, FamilyEntry] = {}
_BY_MODEL_TYPE: dict[str, str] = {}


def register_family(
    name: str, *model_types: str, open_vocabulary: bool = False
) -> Callable[[Family], Family]:
    """Register a detector family for transformers model types (and/or sidecar `family`)."""

    def deco(fn: Family) -> Family:
        _FAMILIES[name] = FamilyEntry(name, fn, open_vocabulary)
        for model_type in model_types:
            _BY_MODEL_TYPE[model_type] = name
        return fn

    return deco


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
    snapshot = getattr(runner, "snapshot", None)
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


def family_for(runner: Runner) -> FamilyEntry:
    sidecar = getattr(runner.card, "sidecar", {}) or {}
    name = sidecar.get("family")
    if name is None:
        model_type = model_info(runner).model_type
        name = _BY_MODEL_TYPE.get(model_type or "")
        if name is None:
            raise UnsupportedModelError(
                f"Model '{runner.card.id}' (model type {model_type or 'unknown'}) is not a "
                f"detector Ocula knows. Known model types: {', '.join(sorted(_BY_MODEL_TYPE))}; "
                f'for a YOLO-style ONNX file set family = "yolo" in its sidecar.'
            )
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(
            f"Model '{runner.card.id}': unknown detector family '{name}'. "
            f"Known: {', '.join(sorted(_FAMILIES))}."
        ) from None


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


def _class_filter(opts: DetectOptions, id2label: dict[int, str], model_id: str) -> set[int] | None:
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
    from engine.tasks.yolo import batched_nms

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


def _image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", None) or processor


def _require_processor(runner: Runner) -> Any:
    if runner.processor is None:
        raise UnsupportedModelError(
            f"Model '{runner.card.id}' has no image processor (preprocessor_config.json); "
            f"it cannot be prepared for detection. Re-download or re-export it with its "
            f"processor files."
        )
    return runner.processor


def _numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t)


# -- families: closed-vocabulary transformers detectors -------------------------------------------


@register_family(
    "transformers-detection",
    "detr",
    "conditional_detr",
    "deformable_detr",
    "dab-detr",
    "table-transformer",
    "yolos",
    "rt_detr",
    "rt_detr_v2",
    "d_fine",
    "deimv2",
    "lw_detr",
    "rf_detr",
)
def _run_processor_detection(
    runner: Runner, images: list[Image.Image], opts: DetectOptions
) -> list[Detections]:
    """DETR-likes: the processor prepares, the processor's post_process_object_detection decodes."""
    processor = _image_processor(_require_processor(runner))
    info = model_info(runner)
    keep_ids = _class_filter(opts, info.id2label, runner.card.id)
    inputs = processor(images=images, return_tensors="pt")
    outputs = runner.forward(dict(inputs))
    target_sizes = [(img.height, img.width) for img in images]
    decoded = processor.post_process_object_detection(
        outputs, threshold=opts.threshold, target_sizes=target_sizes
    )
    return [
        finish(
            _numpy(d["scores"]),
            _numpy(d["labels"]),
            _numpy(d["boxes"]),
            image_size=img.size,
            id2label=info.id2label,
            opts=opts,
            keep_ids=keep_ids,
        )
        for d, img in zip(decoded, images)
    ]


# -- families: open vocabulary ---------------------------------------------------------------------


@register_family("owl", "owlv2", "owlvit", open_vocabulary=True)
def _run_owl(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    """OWL-ViT / OWLv2: text queries from `classes`; boxes scaled by the processor (OWLv2 pads
    to a square, which its post-processing undoes given the original sizes)."""
    processor = _require_processor(runner)
    queries = list(opts.classes or ())
    inputs = processor(text=[queries] * len(images), images=images, return_tensors="pt")
    outputs = runner.forward(dict(inputs))
    target_sizes = [(img.height, img.width) for img in images]
    decoded = processor.post_process_grounded_object_detection(
        outputs,
        threshold=opts.threshold,
        target_sizes=target_sizes,
        text_labels=[queries] * len(images),
    )
    id2label = dict(enumerate(queries))
    return [
        finish(
            _numpy(d["scores"]),
            _numpy(d["labels"]),
            _numpy(d["boxes"]),
            image_size=img.size,
            id2label=id2label,
            opts=opts,
        )
        for d, img in zip(decoded, images)
    ]


@register_family("grounding-dino", "grounding-dino", "mm-grounding-dino", open_vocabulary=True)
def _run_grounding_dino(
    runner: Runner, images: list[Image.Image], opts: DetectOptions
) -> list[Detections]:
    """Grounding DINO: phrases come back as text; those equal to a query get its index."""
    processor = _require_processor(runner)
    queries = list(opts.classes or ())
    inputs = processor(images=images, text=[queries] * len(images), return_tensors="pt")
    outputs = runner.forward(dict(inputs))
    target_sizes = [(img.height, img.width) for img in images]
    decoded = processor.post_process_grounded_object_detection(
        outputs,
        input_ids=inputs["input_ids"],
        threshold=opts.threshold,
        text_threshold=opts.threshold,
        target_sizes=target_sizes,
    )
    by_text = {q.lower().strip(): i for i, q in enumerate(queries)}
    results = []
    for d, img in zip(decoded, images):
        names = [str(t) for t in d["text_labels"]]
        ids = np.array([by_text.get(n.lower().strip(), -1) for n in names], dtype=np.int64)
        results.append(
            finish(
                _numpy(d["scores"]),
                ids,
                _numpy(d["boxes"]),
                image_size=img.size,
                id2label=dict(enumerate(queries)),
                opts=opts,
                label_names=names,
                nms_iou=opts.nms_iou,
            )
        )
    return results


# -- families: YOLO-style ONNX exports -------------------------------------------------------------


def yolo_spec(runner: Runner):
    from engine.tasks.yolo import YoloSpec

    local = getattr(runner.card, "local_path", None)
    onnx_path = local if local and str(local).lower().endswith(".onnx") else None
    return YoloSpec.from_sidecar(getattr(runner.card, "sidecar", {}) or {}, onnx_path=onnx_path)


@register_family("florence2", "florence2")
def _run_florence(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    """Florence-2 (one ViT for many tasks): `<OD>` for closed-set detection, or
    `<OPEN_VOCABULARY_DETECTION>` with the class names as the text input. Florence-2
    gives no scores (all 1.0), so the threshold keeps everything it names."""
    from engine.tasks.caption import florence_task

    if opts.classes:
        per_class = [florence_task(runner, images, "<OPEN_VOCABULARY_DETECTION>",
                                   text_input=name) for name in opts.classes]
        merged = []
        for i in range(len(images)):
            boxes = [b for results in per_class if isinstance(results[i], Detections)
                     for b in results[i].boxes]
            merged.append(_relabel(boxes, images[i].size, list(opts.classes)))
    else:
        merged = [d for d in florence_task(runner, images, "<OD>")]
    return [Detections(boxes=[b for b in d.boxes if b.score >= opts.threshold]
                       [:opts.max_detections], image_size=d.image_size, labels=d.labels)
            for d in merged]


def _relabel(boxes: list[Box], size: tuple[int, int], names: list[str]) -> Detections:
    labels = dict(enumerate(dict.fromkeys(names + [b.label for b in boxes])))
    ids = {name: i for i, name in labels.items()}
    for box in boxes:
        box.label_id = ids[box.label]
    return Detections(boxes=boxes, image_size=size, labels=labels)


@register_family("yolo")
def _run_yolo(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    """Letterbox -> ONNX -> decode v5/v8 -> class-wise NMS -> undo letterbox (original pixels)."""
    from engine.tasks import yolo

    spec = yolo_spec(runner)
    id2label = dict(enumerate(spec.class_names))
    keep_ids = _class_filter(opts, id2label, runner.card.id) if id2label else None
    if opts.classes and not id2label:
        raise UsageError(
            f"Model '{runner.card.id}' has no class names (sidecar `labels` or ONNX "
            f"metadata `names`), so it cannot filter by class."
        )
    iou = opts.nms_iou if opts.nms_iou is not None else 0.45
    results = []
    # one image per call: most YOLO exports have a fixed batch dimension of 1
    for img in images:
        batch, geos = yolo.preprocess([np.asarray(img)], spec)
        outputs = runner.forward({spec.input_name or "images": batch})
        raw = outputs[spec.output_name] if spec.output_name else next(iter(outputs.values()))
        (dets,) = yolo.postprocess(
            _numpy(raw),
            geos,
            spec,
            threshold=opts.threshold,
            nms_iou=iou,
            max_detections=opts.max_detections,
            class_filter=keep_ids,
        )
        names = [id2label.get(int(c), f"class_{int(c)}") for c in dets.class_ids]
        results.append(
            finish(
                dets.scores,
                dets.class_ids,
                dets.boxes,
                image_size=img.size,
                id2label=id2label,
                opts=opts,
                label_names=names,
            )
        )
    return results


# -- family: MTCNN face detector (facenet-pytorch, weights ship inside the package) -------------
# The runner is engine.runtimes.facenet_backend (runtime "facenet-pytorch"): its forward takes
# {"image": PIL} and returns boxes [N, 4] and scores [N] (numpy) in original pixels.


@register_family("mtcnn")
def _run_mtcnn(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    labels = (getattr(runner.card, "sidecar", {}) or {}).get("labels") or ["face"]
    id2label = {0: str(labels[0])}
    keep_ids = _class_filter(opts, id2label, runner.card.id)
    results = []
    for img in images:
        outputs = runner.forward({"image": img})
        scores = _numpy(outputs.scores)
        keep = scores > opts.threshold
        results.append(
            finish(
                scores[keep],
                np.zeros(int(keep.sum()), np.int64),
                _numpy(outputs.boxes)[keep],
                image_size=img.size,
                id2label=id2label,
                opts=opts,
                keep_ids=keep_ids,
            )
        )
    return results
