"""SegFormer's processor and semantic decoding: logits upsampled to the original size
(bilinear, align_corners=False, as torch's interpolate) then argmax — in numpy/OpenCV."""
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

CV_MAX_CHANNELS = 128  # OpenCV (5.x) wraps at most this many channels in one array


def resize_bilinear(chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float32 -> (C, h, w): torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False) — half-pixel centres, no antialiasing (OpenCV's INTER_LINEAR)."""
    import cv2

    h, w = size
    if chw.shape[1:] == (h, w):
        return chw.astype(np.float32, copy=False)
    hwc = np.ascontiguousarray(chw.transpose(1, 2, 0), dtype=np.float32)
    parts = []
    for start in range(0, hwc.shape[2], CV_MAX_CHANNELS):
        part = cv2.resize(hwc[:, :, start:start + CV_MAX_CHANNELS], (w, h),
                          interpolation=cv2.INTER_LINEAR)
        parts.append(part[:, :, None] if part.ndim == 2 else part)
    return np.concatenate(parts, axis=2).transpose(2, 0, 1)


class SegformerImageProcessor(LiteImageProcessor):
    serves = ("SegformerImageProcessor",)
    defaults = {"size": {"height": 512, "width": 512}, "resample": BILINEAR,
                "image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD}

    def post_process_semantic_segmentation(self, outputs: Any,
                                           target_sizes: Sequence[Sequence[int]] | None = None
                                           ) -> list[np.ndarray]:
        """One (H, W) int64 label map per image, at its target size (else the logits' size)."""
        logits = output_field(outputs, "logits").astype(np.float32)
        sizes = target_hw(target_sizes, len(logits))
        if sizes is None:
            return [m for m in logits.argmax(axis=1)]
        return [resize_bilinear(lg, size).argmax(axis=0) for lg, size in zip(logits, sizes)]


PROCESSORS = (SegformerImageProcessor,)
