"""MTCNN face detector (facenet-pytorch, weights ship inside the package).

The runner is engine.runtimes.facenet_backend (runtime "facenet-pytorch"): its forward
takes {"image": PIL} and returns boxes [N, 4] and scores [N] (numpy) in original pixels.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.results import Detections
from engine.tasks.detect import DetectOptions, DetectorFamily, class_filter, finish, to_numpy

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner


def run(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    labels = (getattr(runner.card, "sidecar", {}) or {}).get("labels") or ["face"]
    id2label = {0: str(labels[0])}
    keep_ids = class_filter(opts, id2label, runner.card.id)
    results = []
    for img in images:
        outputs = runner.forward({"image": img})
        scores = to_numpy(outputs.scores)
        keep = scores > opts.threshold
        results.append(
            finish(
                scores[keep],
                np.zeros(int(keep.sum()), np.int64),
                to_numpy(outputs.boxes)[keep],
                image_size=img.size,
                id2label=id2label,
                opts=opts,
                keep_ids=keep_ids,
            )
        )
    return results


FAMILY = DetectorFamily(
    "mtcnn",
    run,
    sidecar_families=("mtcnn",),
    summary="MTCNN faces from facenet-pytorch: one label, boxes already in original pixels",
)
