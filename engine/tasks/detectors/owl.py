"""OWL-ViT / OWLv2: text queries from `classes`; boxes scaled by the processor (OWLv2 pads
to a square, which its post-processing undoes given the original sizes)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.results import Detections
from engine.tasks.detect import DetectOptions, DetectorFamily, finish_decoded, require_processor

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner


def run(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    processor = require_processor(runner)
    queries = list(opts.classes or ())
    inputs = processor(text=[queries] * len(images), images=images, return_tensors="pt")
    outputs = runner.forward(dict(inputs))
    target_sizes = [(img.height, img.width) for img in images]
    decoded = processor.post_process_grounded_object_detection(
        outputs,
        threshold=opts.threshold,
        target_sizes=target_sizes,
        text_labels=[queries] * len(images),
    )
    id2label = dict(enumerate(queries))
    return finish_decoded(decoded, images, id2label=id2label, opts=opts)


FAMILY = DetectorFamily(
    "owl",
    run,
    model_types=("owlv2", "owlvit"),
    open_vocabulary=True,
    summary="OWL-ViT / OWLv2: one text query per class, post_process_grounded_object_detection",
)
