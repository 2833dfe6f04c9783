"""The MTCNN face-detection cascade in numpy, around three ONNX graphs (P-Net, R-Net, O-Net).

A port of facenet-pytorch's `detect_face` (models/utils/detect_face.py, MIT), step for step,
so that the Lite build (no torch) detects the faces the torch build does: an image pyramid
(scale 12/min_face_size, factor 0.709) through the fully convolutional P-Net, candidate
boxes from its 12-px cells (stride 2), NMS per scale at 0.5 and across scales at 0.7, box
regression, squaring and clipping, 24×24 crops through R-Net (threshold, NMS 0.7,
regression, squaring), 48×48 crops through O-Net (threshold, regression, landmarks) and a
last NMS by the smaller box's area at 0.7. Resizing is torch's `interpolate(mode="area")`
(adaptive average pooling: bin i of n over m pixels spans floor(i·m/n) to ceil((i+1)·m/n)),
done here with integral images. tests/integration/test_mtcnn_onnx.py compares the boxes
and probabilities with facenet-pytorch's MTCNN on real photos.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Net = Callable[[np.ndarray], list[np.ndarray]]  # NCHW float32 batch -> the graph's outputs


@dataclass(frozen=True)
class CascadeOptions:
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709


def _bins(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(size_out)
    start = (i * size_in) // size_out
    end = -((-(i + 1) * size_in) // size_out)  # ceil
    return start, end


def area_resize(chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float32 -> (C, h, w): torch's interpolate(mode="area") (adaptive average)."""
    c, h, w = chw.shape
    oh, ow = size
    ys, ye = _bins(h, oh)
    xs, xe = _bins(w, ow)
    integral = np.zeros((c, h + 1, w + 1), dtype=np.float64)
    integral[:, 1:, 1:] = chw.astype(np.float64).cumsum(1).cumsum(2)
    total = (integral[:, ye][:, :, xe] - integral[:, ys][:, :, xe]
             - integral[:, ye][:, :, xs] + integral[:, ys][:, :, xs])
    count = (ye - ys)[:, None] * (xe - xs)[None, :]
    return (total / count).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return ((x - np.float32(127.5)) * np.float32(0.0078125)).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept, best first. "union": torchvision's IoU NMS (no +1 on sides), "min":
    facenet's numpy NMS by the smaller area (+1 on sides)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    plus = 1.0 if method == "min" else 0.0
    x1, y1, x2, y2 = (boxes[:, k].astype(np.float64) for k in range(4))
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores, kind="stable") if method == "union" else np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _rerec(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += reg[:, 0] * w
    boxes[:, 1] += reg[:, 1] * h
    boxes[:, 2] += reg[:, 2] * w
    boxes[:, 3] += reg[:, 3] * h
    return boxes


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square crops of the (3, H, W) image at `boxes` (clipped like facenet's `pad`),
    area-resized to size×size and normalised; and which boxes gave one (a box wholly
    outside the image gives none)."""
    _, h, w = image.shape
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    valid = (ey > y - 1) & (ex > x - 1)
    out = [area_resize(image[:, y[k] - 1:ey[k], x[k] - 1:ex[k]], (size, size))
           for k in np.flatnonzero(valid)]
    crops = _normalise(np.stack(out)) if out else np.zeros((0, 3, size, size), np.float32)
    return crops, valid


def detect_faces(rgb: np.ndarray, pnet: Net, rnet: Net, onet: Net,
                 opts: CascadeOptions = CascadeOptions()) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> (boxes [N, 4] x0, y0, x1, y1 in pixels, probabilities [N])."""
    image = rgb.transpose(2, 0, 1).astype(np.float32)
    _, h, w = image.shape
    scale = 12.0 / opts.min_face_size
    side = min(h, w) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= opts.factor
        side *= opts.factor
    candidates = []
    for s in scales:
        data = _normalise(area_resize(image, (int(h * s + 1), int(w * s + 1))))[None]
        reg, probs = pnet(data)
        prob = probs[0, 1]
        ys, xs = np.nonzero(prob >= opts.thresholds[0])
        if not len(ys):
            continue
        cells = np.stack([xs, ys], axis=1).astype(np.float32)
        q1 = np.floor((2 * cells + 1) / np.float32(s))
        q2 = np.floor((2 * cells + 12) / np.float32(s))
        found = np.concatenate([q1, q2, prob[ys, xs][:, None], reg[0][:, ys, xs].T], axis=1)
        candidates.append(found[nms(found[:, :4], found[:, 4], 0.5)])
    if not candidates:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    boxes = np.concatenate(candidates)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = np.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                      boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                      boxes[:, 4]], axis=1)
    boxes = _rerec(boxes)
    for stage, (net, size) in enumerate(((rnet, 24), (onet, 48)), start=1):
        if not len(boxes):
            break
        crops, valid = _crops(image, boxes, size)
        boxes = boxes[valid]
        if not len(boxes):
            break
        outs = net(crops)
        reg, score = outs[0], outs[-1][:, 1]
        keep = score > opts.thresholds[stage]
        boxes = np.concatenate([boxes[keep, :4], score[keep][:, None]], axis=1)
        reg = reg[keep]
        if stage == 1:
            pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
            boxes = _rerec(_bbreg(boxes[pick], reg[pick]))
        else:
            boxes = _bbreg(boxes, reg)
            boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, method="min")]
    return boxes[:, :4].astype(np.float32), boxes[:, 4].astype(np.float32)
