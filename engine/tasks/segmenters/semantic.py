"""Semantic segmenters (SegFormer, BEiT, DPT, UperNet…): the processor prepares, its
post_process_semantic_segmentation upsamples to the original size and argmaxes."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

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
    maps = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(img.height, img.width) for img in images]
    )
    return [
        Segmentation(
            kind="semantic",
            image_size=img.size,
            label_map=to_numpy(m).astype(np.int32),
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
    summary="semantic segmenters decoded by post_process_semantic_segmentation",
)
