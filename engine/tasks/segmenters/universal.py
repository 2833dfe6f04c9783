"""Panoptic / instance / semantic segmentation with one model (Mask2Former, MaskFormer)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.results import Segmentation, SegmentInstance
from engine.tasks.detect import model_info
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
    outputs = runner.forward(dict(processor(images=images, return_tensors="pt")))
    sizes = [(img.height, img.width) for img in images]
    if opts.mode == "semantic":
        maps = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        return [
            Segmentation(
                kind="semantic",
                image_size=img.size,
                label_map=to_numpy(m).astype(np.int32),
                labels=dict(info.id2label),
            )
            for m, img in zip(maps, images)
        ]
    if opts.mode == "panoptic":
        decoded = processor.post_process_panoptic_segmentation(
            outputs, threshold=opts.threshold, target_sizes=sizes, label_ids_to_fuse=set()
        )
    else:
        # binary maps keep overlapping instances whole (a segment-id map would cut them)
        decoded = processor.post_process_instance_segmentation(
            outputs, threshold=opts.threshold, target_sizes=sizes, return_binary_maps=True
        )
    return [universal_result(d, img, opts.mode, info.id2label) for d, img in zip(decoded, images)]


def universal_result(
    decoded: dict, img: Image.Image, mode: str, id2label: dict[int, str]
) -> Segmentation:
    w, h = img.size
    seg = to_numpy(decoded["segmentation"]) if decoded["segmentation"] is not None else None
    label_map = np.full((h, w), -1, dtype=np.int32)
    instances = []
    for info in decoded["segments_info"]:
        if seg is None:
            break
        if mode == "instance" and seg.ndim == 3:
            mask = seg[len(instances)] > 0.5
        else:
            mask = seg == info["id"]
        label_id = int(info["label_id"])
        instances.append(
            SegmentInstance(
                mask=mask,
                label=id2label.get(label_id, str(label_id)),
                label_id=label_id,
                score=float(info["score"]),
                segment_id=int(info["id"]),
            )
        )
    for inst in sorted(instances, key=lambda i: i.score):  # overlaps: the best instance on top
        label_map[inst.mask] = inst.label_id
    return Segmentation(
        kind=mode,
        image_size=(w, h),
        label_map=label_map,
        instances=instances,
        labels=dict(id2label),
    )


FAMILY = SegmenterFamily(
    "universal",
    run,
    model_types=("mask2former", "maskformer"),
    modes=("panoptic", "instance", "semantic"),
    summary="Mask2Former / MaskFormer: the processor's panoptic, instance or semantic "
            "post-processing",
)
