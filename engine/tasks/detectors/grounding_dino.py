"""Grounding DINO: phrases come back as text; those equal to a query get its index."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.results import Detections
from engine.tasks.detect import DetectOptions, DetectorFamily, finish, require_processor, to_numpy

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner


def run(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    processor = require_processor(runner)
    queries = list(opts.classes or ())
    inputs = processor(images=images, text=[queries] * len(images), return_tensors="pt")
    outputs = runner.forward(dict(inputs))
    target_sizes = [(img.height, img.width) for img in images]
    decoded = processor.post_process_grounded_object_detection(
        outputs,
        input_ids=inputs["input_ids"],
        threshold=opts.threshold,
        text_threshold=opts.threshold,
        target_sizes=target_sizes,
    )
    by_text = {q.lower().strip(): i for i, q in enumerate(queries)}
    results = []
    for d, img in zip(decoded, images):
        names = [str(t) for t in d["text_labels"]]
        ids = np.array([by_text.get(n.lower().strip(), -1) for n in names], dtype=np.int64)
        results.append(
            finish(
                to_numpy(d["scores"]),
                ids,
                to_numpy(d["boxes"]),
                image_size=img.size,
                id2label=dict(enumerate(queries)),
                opts=opts,
                label_names=names,
                nms_iou=opts.nms_iou,
            )
        )
    return results


FAMILY = DetectorFamily(
    "grounding-dino",
    run,
    model_types=("grounding-dino", "mm-grounding-dino"),
    open_vocabulary=True,
    summary="Grounding DINO: the classes as one text prompt, phrases matched back to classes",
)
