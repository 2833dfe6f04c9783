"""Promptable segmentation (SAM, SlimSAM): points and boxes in original pixels."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from engine.results import Segmentation, SegmentInstance
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

SAM_INPUTS = ("pixel_values", "input_points", "input_labels", "input_boxes")


def run(runner: Runner, images: list[Image.Image], opts: SegmentOptions) -> list[Segmentation]:
    """SAM / SlimSAM: the best of the three proposed masks (by predicted IoU) per prompt."""
    processor = require_processor(runner)
    n = len(images)
    kwargs: dict[str, Any] = {}
    if opts.boxes:
        kwargs["input_boxes"] = [[list(b) for b in opts.boxes]] * n
    if opts.points:
        prompt_count = len(opts.boxes) or 1  # a point prompt goes with (at most) one box
        kwargs["input_points"] = [[[[x, y] for x, y, _ in opts.points]] * prompt_count] * n
        kwargs["input_labels"] = [[[lab for _, _, lab in opts.points]] * prompt_count] * n
    inputs = processor(images=images, return_tensors="pt", **kwargs)
    outputs = runner.forward({k: inputs[k] for k in SAM_INPUTS if k in inputs})
    masks = image_processor(processor).post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    scores = to_numpy(outputs.iou_scores)  # [B, prompts, 3]
    results = []
    for i, img in enumerate(images):
        image_masks = to_numpy(masks[i])  # [prompts, 3, H, W] bool
        instances = []
        for p in range(image_masks.shape[0]):
            best = int(np.argmax(scores[i, p]))
            instances.append(
                SegmentInstance(
                    mask=image_masks[p, best].astype(bool),
                    label="object",
                    label_id=0,
                    score=float(scores[i, p, best]),
                    segment_id=p + 1,
                )
            )
        w, h = img.size
        label_map = np.full((h, w), -1, dtype=np.int32)
        for inst in instances:
            label_map[inst.mask] = 0
        results.append(
            Segmentation(
                kind="promptable",
                image_size=(w, h),
                label_map=label_map,
                instances=instances,
                labels={0: "object"},
            )
        )
    return results


FAMILY = SegmenterFamily(
    "sam",
    run,
    model_types=("sam",),
    modes=("promptable",),
    summary="SAM: one mask per prompt, the best of three by predicted IoU, post_process_masks",
)
