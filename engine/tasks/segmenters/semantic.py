"""Semantic segmenters (SegFormer, BEiT, DPT, UperNet…): the processor prepares; the
label map is what their post_process_semantic_segmentation computes (logits upsampled
bilinearly to the original size, argmax), by engine.media.label_upsample, which never
materialises the full-size logit stack (150 classes × 12 MP would be 7.2 GB)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.media.label_upsample import upsampled_argmax
from engine.results import Segmentation
from engine.tasks.detect import forward_prepared, model_info
from engine.tasks.segment import (
    SegmenterFamily,
    SegmentOptions,
    image_processor,
    require_processor,
    to_numpy,
)

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner


def run(
    runner: Runner, images: list[Image.Image], opts: SegmentOptions
) -> list[Segmentation]:
    processor = image_processor(require_processor(runner))
    info = model_info(runner)
    outputs = forward_prepared(runner, processor, images)
    logits = to_numpy(outputs["logits"])  # a dict of arrays (ONNX) or a ModelOutput (torch)
    maps = [upsampled_argmax(lg, (img.height, img.width)) for lg, img in zip(logits, images)]
    return [
        Segmentation(
            kind="semantic",
            image_size=img.size,
            label_map=m.astype(np.int32),
            labels=dict(info.id2label),
        )
        for m, img in zip(maps, images)
    ]


FAMILY = SegmenterFamily(
    "semantic",
    run,
    model_types=(
        "segformer",
        "beit",
        "data2vec-vision",
        "dpt",
        "mobilenet_v2",
        "mobilevit",
        "mobilevitv2",
        "upernet",
        "sapiens2",
    ),
    modes=("semantic",),
    summary="semantic segmenters: logits upsampled to the image and argmaxed "
            "(post_process_semantic_segmentation's maths, in bounded memory)",
)
