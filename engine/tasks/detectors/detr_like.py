"""DETR-likes: the processor prepares, the processor's post_process_object_detection decodes."""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.results import Detections
from engine.tasks.detect import (
    DetectOptions,
    DetectorFamily,
    class_filter,
    finish_decoded,
    forward_prepared,
    image_processor,
    model_info,
    require_processor,
)

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner


def run(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    processor = image_processor(require_processor(runner))
    info = model_info(runner)
    keep_ids = class_filter(opts, info.id2label, runner.card.id)
    outputs = forward_prepared(runner, processor, images)
    target_sizes = [(img.height, img.width) for img in images]
    decoded = processor.post_process_object_detection(
        outputs, threshold=opts.threshold, target_sizes=target_sizes
    )
    return finish_decoded(decoded, images, id2label=info.id2label, opts=opts,
                          keep_ids=keep_ids)


FAMILY = DetectorFamily(
    "transformers-detection",
    run,
    model_types=(
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
    ),
    summary="closed-vocabulary transformers detectors decoded by post_process_object_detection",
)
