"""SegFormer's processor and semantic decoding: logits upsampled to the original size
(bilinear, align_corners=False, as torch's interpolate) then argmax — in numpy/OpenCV, by
engine.media.label_upsample (bounded memory at any photo size)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.media.label_upsample import upsampled_argmax
from engine.runtimes.lite_processors.base import (
    BILINEAR,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    LiteImageProcessor,
    output_field,
    target_hw,
)


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
        return [upsampled_argmax(lg, size) for lg, size in zip(logits, sizes)]


PROCESSORS = (SegformerImageProcessor,)
