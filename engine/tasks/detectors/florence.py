"""Florence-2 (one ViT for many tasks): `<OD>` for closed-set detection, or
`<OPEN_VOCABULARY_DETECTION>` with the class names as the text input. Florence-2
gives no scores (all 1.0), so the threshold keeps everything it names."""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.results import Box, Detections
from engine.tasks.detect import DetectOptions, DetectorFamily

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner


def run(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    from engine.tasks.caption import florence_task

    if opts.classes:
        per_class = [florence_task(runner, images, "<OPEN_VOCABULARY_DETECTION>",
                                   text_input=name) for name in opts.classes]
        merged = []
        for i in range(len(images)):
            boxes = [b for results in per_class if isinstance(results[i], Detections)
                     for b in results[i].boxes]
            merged.append(relabel(boxes, images[i].size, list(opts.classes)))
    else:
        merged = [d for d in florence_task(runner, images, "<OD>")]
    return [Detections(boxes=[b for b in d.boxes if b.score >= opts.threshold]
                       [:opts.max_detections], image_size=d.image_size, labels=d.labels)
            for d in merged]


def relabel(boxes: list[Box], size: tuple[int, int], names: list[str]) -> Detections:
    labels = dict(enumerate(dict.fromkeys(names + [b.label for b in boxes])))
    ids = {name: i for i, name in labels.items()}
    for box in boxes:
        box.label_id = ids[box.label]
    return Detections(boxes=boxes, image_size=size, labels=labels)


FAMILY = DetectorFamily(
    "florence2",
    run,
    model_types=("florence2",),
    summary="Florence-2: <OD>, or <OPEN_VOCABULARY_DETECTION> once per class given",
)
