"""YOLO-style ONNX exports (sidecar family "yolo"): letterbox, decode, class-wise NMS,
letterbox undo; the detector family that runs them is at the end.

Ultralytics-style exports come in two layouts:
- "v5": one tensor [B, N, 5 + C] — cx, cy, w, h, objectness, class scores
  (score = objectness × class score);
- "v8" (also v9/v10-without-NMS/v11): [B, 4 + C, N] — cx, cy, w, h, class scores.
Boxes are in pixels of the letterboxed network input. The letterbox keeps the
aspect ratio and pads with grey 114, centred, exactly like Ultralytics, so that
models trained with it see what they expect.

Everything here is numpy (plus torchvision's NMS when already imported) so it runs the
same whatever backend produced the raw tensor.
"""

from __future__ import annotations

import ast
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import CatalogError, UsageError
from engine.media import resize
from engine.results import Detections
from engine.tasks.detect import DetectOptions, DetectorFamily, finish, to_numpy
from engine.tasks.detect import class_filter as class_ids_for  # decode() has an arg class_filter
from engine.tasks.nms import batched_nms

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the network input: scale, then padding."""

    scale: float  # network pixels per original pixel
    pad_x: int  # left padding in network pixels
    pad_y: int  # top padding in network pixels
    source_size: tuple[int, int]  # (width, height) of the original image
    input_size: tuple[int, int]  # (width, height) of the network input

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) x0,y0,x1,y1 boxes from network pixels back to original pixels, clipped."""
        out = np.asarray(boxes, dtype=np.float64).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        w, h = self.source_size
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out

    def to_network(self, boxes: np.ndarray) -> np.ndarray:
        """Inverse of `to_original` (without clipping): original pixels -> network pixels."""
        out = np.asarray(boxes, dtype=np.float64).copy()
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale + self.pad_x
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale + self.pad_y
        return out


def letterbox_geometry(source_size: tuple[int, int], input_size: tuple[int, int]) -> Letterbox:
    """Ultralytics' geometry: scale to fit, round the resized size, centre the padding."""
    w, h = source_size
    in_w, in_h = input_size
    scale = min(in_w / w, in_h / h)
    new_w, new_h = round(w * scale), round(h * scale)
    dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
    # Ultralytics rounds (d - 0.1) for left/top so odd padding puts the extra pixel right/bottom
    pad_x, pad_y = round(dw - 0.1), round(dh - 0.1)
    return Letterbox(
        scale=scale, pad_x=pad_x, pad_y=pad_y, source_size=(w, h), input_size=(in_w, in_h)
    )


def letterbox(
    rgb: np.ndarray, input_size: tuple[int, int], *, pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, Letterbox]:
    """Resize (H, W, 3) uint8 keeping aspect and pad to `input_size` (width, height);
    the resize is bilinear by Ultralytics' rule (OpenCV's INTER_LINEAR: half-pixel, no
    antialiasing), which YOLO models are trained with."""
    h, w = rgb.shape[:2]
    geo = letterbox_geometry((w, h), input_size)
    new_w, new_h = round(w * geo.scale), round(h * geo.scale)
    resized = (
        rgb
        if (new_w, new_h) == (w, h)
        else resize.linear(rgb, (new_w, new_h))
    )
    in_w, in_h = input_size
    canvas = np.full((in_h, in_w, 3), pad_value, dtype=np.uint8)
    canvas[geo.pad_y : geo.pad_y + new_h, geo.pad_x : geo.pad_x + new_w] = resized
    return canvas, geo


# -- the sidecar -------------------------------------------------------------------------------


@dataclass(frozen=True)
class YoloSpec:
    """What the task needs to know about a YOLO-style export (from the card's sidecar)."""

    input_size: tuple[int, int] = (640, 640)  # (width, height)
    layout: str = "auto"  # v5 | v8 | auto (guessed from the output shape)
    class_names: tuple[str, ...] = ()
    input_name: str | None = None  # None: the model's only input
    output_name: str | None = None  # None: the model's first output
    pad_value: int = PAD_VALUE
    scale: float = 1 / 255  # pixel values are multiplied by this (0..1 input)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_sidecar(cls, sidecar: Mapping[str, Any], *, onnx_path: str | None = None,
                     metadata: Mapping[str, str] | None = None) -> YoloSpec:
        """`metadata`: the graph's metadata as the runner read it; else `onnx_path`'s."""
        if metadata is not None:
            meta = dict(metadata)
        else:
            meta = onnx_metadata(onnx_path) if onnx_path else {}
        size = sidecar.get("input_size")
        for key in ("input_hw", "imgsz"):  # both [height, width]; a fixed graph input wins
            if size is None and key in meta:
                hw = _parse_names_text(meta[key])
                size = [hw[1], hw[0]] if isinstance(hw, (list, tuple)) else hw
        if size is None:
            size = 640
        if isinstance(size, (int, float)):
            input_size = (int(size), int(size))
        elif isinstance(size, (list, tuple)) and len(size) == 2:
            input_size = (int(size[0]), int(size[1]))  # [width, height]
        else:
            raise CatalogError(
                f"YOLO sidecar: 'input_size' must be an int or [width, height], got {size!r}."
            )
        layout = str(sidecar.get("layout", "auto")).lower()
        if layout not in ("auto", "v5", "v8"):
            raise CatalogError(f"YOLO sidecar: 'layout' must be v5, v8 or auto, got {layout!r}.")
        names = sidecar.get("labels", sidecar.get("names", sidecar.get("class_names")))
        class_names = _names_tuple(names) if names is not None else ()
        if not class_names and "names" in meta:
            class_names = _names_tuple(meta["names"])
        return cls(
            input_size=input_size,
            layout=layout,
            class_names=class_names,
            input_name=sidecar.get("input_name"),
            output_name=sidecar.get("output_name"),
            pad_value=int(sidecar.get("pad_value", PAD_VALUE)),
            scale=float(sidecar.get("scale", 1 / 255)),
        )


def _names_tuple(names: Any) -> tuple[str, ...]:
    if isinstance(names, str):
        names = _parse_names_text(names)
    if isinstance(names, Mapping):
        by_id = {int(k): str(v) for k, v in names.items()}
        return tuple(by_id.get(i, f"class_{i}") for i in range(max(by_id, default=-1) + 1))
    return tuple(str(n) for n in names)


def _parse_names_text(text: str) -> Any:
    """Ultralytics stores names as a Python dict literal; some tools write JSON."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    raise CatalogError(
        f"YOLO model metadata 'names' is neither JSON nor a Python literal: {text[:80]!r}"
    )


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata_props (Ultralytics: names, imgsz, stride), weights not loaded.

    A static image input shape [N, 3, H, W] is added as "input_hw" (JSON [H, W]).
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable metadata means none; the loader reports bad files
        return {}
    meta = {prop.key: prop.value for prop in model.metadata_props}
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) == 1:
        dims = [
            d.dim_value if d.HasField("dim_value") else 0
            for d in inputs[0].type.tensor_type.shape.dim
        ]
        if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
            meta["input_hw"] = json.dumps([dims[2], dims[3]])
    return meta


def names_from_onnx(path: str | Path) -> tuple[str, ...]:
    """Class names from an ONNX file's metadata (`names`)."""
    names = onnx_metadata(path).get("names")
    return _names_tuple(names) if names else ()


# -- pre-processing ---------------------------------------------------------------------------


def preprocess(rgb_images: list[np.ndarray], spec: YoloSpec) -> tuple[np.ndarray, list[Letterbox]]:
    """Letterbox each (H, W, 3) uint8 image, stack to float32 NCHW scaled by `spec.scale`."""
    tensors, geos = [], []
    for rgb in rgb_images:
        boxed, geo = letterbox(rgb, spec.input_size, pad_value=spec.pad_value)
        tensors.append(boxed.transpose(2, 0, 1))
        geos.append(geo)
    batch = np.stack(tensors).astype(np.float32) * np.float32(spec.scale)
    return batch, geos


# -- decoding ---------------------------------------------------------------------------------


@dataclass
class RawDetections:
    boxes: np.ndarray  # (N, 4) x0,y0,x1,y1 in network pixels
    scores: np.ndarray  # (N,)
    class_ids: np.ndarray  # (N,) int64


def guess_layout(shape: tuple[int, ...], num_classes: int | None) -> str:
    """v5 puts boxes on the last axis; v8 on the middle one. Use class count when known."""
    if len(shape) != 3:
        raise ValueError(f"YOLO output must be [batch, a, b]; got shape {tuple(shape)}")
    _, a, b = shape
    if num_classes:
        if b == 5 + num_classes and a != 4 + num_classes:
            return "v5"
        if a == 4 + num_classes and b != 5 + num_classes:
            return "v8"
    # anchors/candidates vastly outnumber channels in every real export
    return "v8" if a < b else "v5"


def decode(
    raw: np.ndarray,
    *,
    layout: str,
    threshold: float,
    num_classes: int | None = None,
    class_filter: set[int] | None = None,
) -> list[RawDetections]:
    """Turn one raw output batch into per-image candidates above `threshold` (before NMS)."""
    raw = np.asarray(raw, dtype=np.float32)
    if layout == "auto":
        layout = guess_layout(raw.shape, num_classes)
    if layout == "v8":
        raw = raw.transpose(0, 2, 1)  # -> [B, N, 4 + C]
        cls_start = 4
    else:
        cls_start = 5
    results = []
    for pred in raw:
        class_scores = pred[:, cls_start:]
        if layout == "v5":
            class_scores = class_scores * pred[:, 4:5]
        if class_filter is not None:
            masked = np.full_like(class_scores, -np.inf)
            idx = [c for c in class_filter if c < class_scores.shape[1]]
            masked[:, idx] = class_scores[:, idx]
            class_scores = masked
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(pred)), class_ids]
        keep = scores > threshold
        cx, cy, w, h = (pred[keep, i] for i in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        results.append(
            RawDetections(
                boxes=boxes.reshape(-1, 4),
                scores=scores[keep],
                class_ids=class_ids[keep].astype(np.int64),
            )
        )
    return results


def postprocess(
    raw: np.ndarray,
    geos: list[Letterbox],
    spec: YoloSpec,
    *,
    threshold: float,
    nms_iou: float = 0.45,
    max_detections: int = 300,
    class_filter: set[int] | None = None,
) -> list[RawDetections]:
    """Decode, NMS, keep the best `max_detections`, map boxes to original pixels."""
    num_classes = len(spec.class_names) or None
    decoded = decode(
        raw,
        layout=spec.layout,
        threshold=threshold,
        num_classes=num_classes,
        class_filter=class_filter,
    )
    out = []
    for det, geo in zip(decoded, geos):
        keep = batched_nms(det.boxes, det.scores, det.class_ids, nms_iou)
        keep = keep[np.argsort(-det.scores[keep], kind="stable")][:max_detections]
        boxes = geo.to_original(det.boxes[keep]) if len(keep) else np.zeros((0, 4))
        out.append(
            RawDetections(boxes=boxes, scores=det.scores[keep], class_ids=det.class_ids[keep])
        )
    return out


# -- the family ---------------------------------------------------------------------------------


# One spec per loaded runner: the sidecar and the graph's metadata do not change while it
# is loaded, and reading them per batch cost a graph parse each time.
_SPECS: weakref.WeakKeyDictionary[Any, YoloSpec] = weakref.WeakKeyDictionary()


def yolo_spec(runner: Runner) -> YoloSpec:
    spec = _SPECS.get(runner)
    if spec is None:
        sidecar = getattr(runner.card, "sidecar", {}) or {}
        reader = getattr(runner, "graph_metadata", None)
        metadata = reader() if reader is not None else None
        local = getattr(runner.card, "local_path", None)
        onnx_path = local if local and str(local).lower().endswith(".onnx") else None
        if metadata is not None and onnx_path is None:
            metadata = None  # same as before: only an imported .onnx file's metadata is read
        spec = YoloSpec.from_sidecar(sidecar, onnx_path=onnx_path, metadata=metadata)
        try:
            _SPECS[runner] = spec
        except TypeError:  # a runner that cannot be weakly referenced: no cache
            pass
    return spec


def run(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    """Letterbox -> ONNX -> decode v5/v8 -> class-wise NMS -> undo letterbox (original pixels)."""
    spec = yolo_spec(runner)
    id2label = dict(enumerate(spec.class_names))
    keep_ids = class_ids_for(opts, id2label, runner.card.id) if id2label else None
    if opts.classes and not id2label:
        raise UsageError(
            f"Model '{runner.card.id}' has no class names (sidecar `labels` or ONNX "
            f"metadata `names`), so it cannot filter by class."
        )
    iou = opts.nms_iou if opts.nms_iou is not None else 0.45
    results = []
    # one image per call: most YOLO exports have a fixed batch dimension of 1
    for img in images:
        batch, geos = preprocess([np.asarray(img)], spec)
        outputs = runner.forward_arrays({spec.input_name or "images": batch})
        raw = outputs[spec.output_name] if spec.output_name else next(iter(outputs.values()))
        (dets,) = postprocess(
            to_numpy(raw),
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


FAMILY = DetectorFamily(
    "yolo",
    run,
    sidecar_families=("yolo",),
    summary="YOLO-style ONNX exports (v5 / v8 layouts): letterbox, decode, class-wise NMS",
)
