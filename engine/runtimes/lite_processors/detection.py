"""DETR-family processors and their box decoding, in numpy.

DETR / Conditional / Deformable DETR and YOLOS: shortest/longest-edge resize (YOLOS rounds
both sides down to a multiple of 16), normalize, pad bottom/right to the batch's largest
image with a pixel mask; decoded by softmax over the classes minus the no-object class.
RT-DETR: fixed 640×640 resize, no normalize, no pad; decoded by sigmoid and a top-k over
queries × classes (`use_focal_loss`), as transformers does.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.runtimes.lite_processors.base import (
    BILINEAR,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    LiteImageProcessor,
    output_field,
    target_hw,
)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def center_to_corners(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def scale_boxes(boxes: np.ndarray, target_sizes: Sequence[Sequence[int]] | None) -> np.ndarray:
    sizes = target_hw(target_sizes, len(boxes))
    if sizes is None:
        return boxes
    scale = np.asarray([[w, h, w, h] for h, w in sizes], dtype=np.float32)
    return boxes * scale[:, None, :]


class DetrLikeProcessor(LiteImageProcessor):
    defaults = {"size": {"shortest_edge": 800, "longest_edge": 1333}, "resample": BILINEAR,
                "image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD,
                "do_pad": True}
    default_to_square = False
    model_input_names = ("pixel_values", "pixel_mask")

    def __init__(self, config: dict) -> None:
        config = dict(config)
        if "pad_and_return_pixel_mask" in config and "do_pad" not in config:
            config["do_pad"] = config["pad_and_return_pixel_mask"]
        super().__init__(config)

    def normalized_size(self, config: dict) -> dict | None:
        size = config.get("size")
        if size is None:
            return dict(self.merged_default("size"))
        from engine.runtimes.lite_processors.base import size_dict

        return size_dict(size, default_to_square=False, max_size=config.get("max_size", 1333))

    def pad_batch(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        out = super().pad_batch(arrays)
        th, tw = out["pixel_values"].shape[-2:]
        mask = np.zeros((len(arrays), th, tw), dtype=np.int64)
        for i, a in enumerate(arrays):
            mask[i, :a.shape[1], :a.shape[2]] = 1
        out["pixel_mask"] = mask
        return out

    def post_process_object_detection(self, outputs: Any, threshold: float = 0.5,
                                      target_sizes: Sequence[Sequence[int]] | None = None
                                      ) -> list[dict[str, np.ndarray]]:
        logits = output_field(outputs, "logits").astype(np.float32)
        boxes = scale_boxes(center_to_corners(output_field(outputs, "pred_boxes")
                                              .astype(np.float32)), target_sizes)
        prob = softmax(logits)[..., :-1]
        scores, labels = prob.max(-1), prob.argmax(-1)
        return [{"scores": s[s > threshold], "labels": lab[s > threshold], "boxes": b[s > threshold]}
                for s, lab, b in zip(scores, labels, boxes)]


class DetrImageProcessor(DetrLikeProcessor):
    serves = ("DetrImageProcessor", "ConditionalDetrImageProcessor", "DeformableDetrImageProcessor")


class YolosImageProcessor(DetrLikeProcessor):
    """YOLOS sizes: DETR's rule with both sides rounded down to a multiple of 16, and the
    portrait/landscape tie broken the other way (transformers' get_size_with_aspect_ratio_yolos)."""

    serves = ("YolosImageProcessor",)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        size = self.size or {}
        short, long = size.get("shortest_edge"), size.get("longest_edge")
        if not (short and long):
            return super().output_size(h, w)
        short, raw = int(short), None
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * short > int(long):
            raw = int(long) * lo / hi
            short = int(round(raw))
        if w < h:
            ow, oh = short, (int(raw * h / w) if raw is not None else int(short * h / w))
        elif (h <= w and h == short) or (w <= h and w == short):
            oh, ow = h, w
        else:
            oh, ow = short, (int(raw * w / h) if raw is not None else int(short * w / h))
        return oh - oh % 16, ow - ow % 16


class RTDetrImageProcessor(DetrLikeProcessor):
    serves = ("RTDetrImageProcessor",)
    defaults = {"size": {"height": 640, "width": 640}, "do_normalize": False, "do_pad": False}

    def normalized_size(self, config: dict) -> dict | None:
        return LiteImageProcessor.normalized_size(self, config)

    def post_process_object_detection(self, outputs: Any, threshold: float = 0.5,
                                      target_sizes: Sequence[Sequence[int]] | None = None,
                                      use_focal_loss: bool = True) -> list[dict[str, np.ndarray]]:
        logits = output_field(outputs, "logits").astype(np.float32)
        boxes = scale_boxes(center_to_corners(output_field(outputs, "pred_boxes")
                                              .astype(np.float32)), target_sizes)
        n, queries, classes = logits.shape
        if use_focal_loss:
            flat = sigmoid(logits).reshape(n, -1)
            index = np.argsort(-flat, axis=1, kind="stable")[:, :queries]
            scores = np.take_along_axis(flat, index, axis=1)
            labels, index = index % classes, index // classes
            boxes = np.take_along_axis(boxes, index[..., None].repeat(4, axis=-1), axis=1)
        else:
            prob = softmax(logits)[..., :-1]
            scores, labels = prob.max(-1), prob.argmax(-1)
        return [{"scores": s[s > threshold], "labels": lab[s > threshold], "boxes": b[s > threshold]}
                for s, lab, b in zip(scores, labels, boxes)]


PROCESSORS = (DetrImageProcessor, YolosImageProcessor, RTDetrImageProcessor)
