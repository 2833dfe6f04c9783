"""Class-wise non-maximum suppression over numpy boxes (x0, y0, x1, y1).

torchvision's kernel where it is already imported, else numpy (the same boxes, tested
against torchvision). Shared by detect's `finish` and the YOLO decoder.
"""

from __future__ import annotations

import sys

import numpy as np


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; returns kept indices by decreasing score (same rule as torchvision)."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes.T
    areas = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        ix0 = np.maximum(x0[i], x0[rest])
        iy0 = np.maximum(y0[i], y0[rest])
        ix1 = np.minimum(x1[i], x1[rest])
        iy1 = np.minimum(y1[i], y1[rest])
        inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-wise NMS: boxes of different classes never suppress each other."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if "torchvision.ops" in sys.modules:  # already paid for (transformers loads it): use its kernel
        import torch
        from torchvision.ops import batched_nms as tv_batched_nms

        keep = tv_batched_nms(
            torch.as_tensor(boxes, dtype=torch.float32),
            torch.as_tensor(scores, dtype=torch.float32),
            torch.as_tensor(class_ids),
            iou_threshold,
        )
        return keep.numpy().astype(np.int64)
    # importing torchvision.ops costs seconds (it pulls in torch._dynamo), so the ONNX path
    # stays on the numpy NMS, which keeps the same boxes (tested against torchvision)
    return batched_nms_numpy(boxes, scores, class_ids, iou_threshold)


def batched_nms_numpy(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    # offsetting each class far apart is torchvision's own trick for class-wise NMS
    offset = (boxes.max() + 1) * class_ids.astype(np.float64)
    return nms_numpy(boxes + offset[:, None], scores, iou_threshold)
