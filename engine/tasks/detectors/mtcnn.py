"""MTCNN face detector (facenet-pytorch, weights ship inside the package).

The runner is engine.runtimes.facenet_backend (runtime "facenet-pytorch"): its forward
takes {"image": PIL} and returns boxes [N, 4] and scores [N] (numpy) in original pixels.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from engine.results import Detections
from engine.tasks.detect import DetectOptions, DetectorFamily, class_filter, finish, to_numpy

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner


def run(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    return finish_faces(runner, images, opts, lambda img: _torch_faces(runner, img))


def _torch_faces(runner: Runner, img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    outputs = runner.forward({"image": img})
    return to_numpy(outputs.boxes), to_numpy(outputs.scores)


def finish_faces(runner: Runner, images: list[Image.Image], opts: DetectOptions,
                 faces: Callable[[Image.Image], tuple[np.ndarray, np.ndarray]]) -> list[Detections]:
    """One label ("face", or the sidecar's), boxes already in original pixels: threshold,
    then the shared finish. Shared by the torch (facenet-pytorch) and ONNX cascades."""
    labels = (getattr(runner.card, "sidecar", {}) or {}).get("labels") or ["face"]
    id2label = {0: str(labels[0])}
    keep_ids = class_filter(opts, id2label, runner.card.id)
    results = []
    for img in images:
        boxes, scores = faces(img)
        keep = scores > opts.threshold
        results.append(finish(scores[keep], np.zeros(int(keep.sum()), np.int64), boxes[keep],
                              image_size=img.size, id2label=id2label, opts=opts,
                              keep_ids=keep_ids))
    return results


FAMILY = DetectorFamily(
    "mtcnn",
    run,
    sidecar_families=("mtcnn",),
    summary="MTCNN faces from facenet-pytorch: one label, boxes already in original pixels",
)
