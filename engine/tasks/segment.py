"""Segmentation: semantic, panoptic, instance, promptable (SAM) and matting (alpha mattes).

    results = segment(runner, images)                         # the model's own mode
    results = segment(runner, images, mode="instance")        # Mask2Former as instances
    results = segment(runner, images, points=[(120, 80)])     # SAM, one click
    results = segment(runner, images, boxes=[(10, 10, 90, 70)])

Families are modules of engine/tasks/segmenters/ (one per family, listed in its
`FAMILY_MODULES`), each stating a `SegmenterFamily`: the transformers model types it
serves (or the sidecar `family` that names it, e.g. "matting" for a BiRefNet-style ONNX
export) and the modes it offers.
Post-processing is the processor's own (`post_process_semantic_segmentation`,
`…_panoptic_…`, `…_instance_…`, SAM's `post_process_masks`), always with the original
sizes, so every mask, label map and matte is at the original resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.errors import UnsupportedModelError, UsageError
from engine.events import CancelToken, ProgressCallback
from engine.results import Segmentation
from engine.tasks.detect import model_info, run_in_size_batches
from engine.tasks.family_table import FamilyTable, TaskFamily
from engine.tasks.segmenters import FAMILY_MODULES

if TYPE_CHECKING:
    from engine.media.image import LoadedImage
    from engine.runtimes.base import Runner

MODES = ("semantic", "panoptic", "instance", "promptable", "matting")


@dataclass(frozen=True)
class SegmentOptions:
    mode: str
    threshold: float = 0.5
    points: tuple[tuple[float, float, int], ...] = ()  # (x, y, 1 = foreground / 0 = background)
    boxes: tuple[tuple[float, float, float, float], ...] = ()


SegFamily = Callable[["Runner", list[Image.Image], SegmentOptions], list[Segmentation]]


@dataclass(frozen=True)
class SegmenterFamily(TaskFamily):
    """A segmenter family as data (see engine.tasks.family_table): `run(runner, images, opts)`,
    the model types / sidecar families / card variants it serves, and the modes it offers
    (the first is its default)."""

    modes: tuple[str, ...] = ("semantic",)


# The families: one module each, listed in engine/tasks/segmenters/__init__.py, imported on
# the first lookup (the first segment()).
FAMILIES: FamilyTable[SegmenterFamily] = FamilyTable("segmenter", FAMILY_MODULES)


def register_family(family: SegmenterFamily, *, replace: bool = False) -> SegmenterFamily:
    """Add a segmenter family (a plug-in's); a name, model type, sidecar family or variant
    already taken raises DuplicateRegistrationError naming both."""
    return FAMILIES.register(family, replace=replace, stacklevel=2)


def family_for(runner: Runner) -> SegmenterFamily:
    return FAMILIES.for_runner(
        runner, lambda r: model_info(r).model_type,
        hint='for an alpha-matte ONNX export set family = "matting" in its sidecar.')


def _points(points: Sequence[Sequence[float]] | None) -> tuple[tuple[float, float, int], ...]:
    out = []
    for p in points or ():
        if len(p) not in (2, 3):
            raise UsageError(f"A point is (x, y) or (x, y, label); got {tuple(p)!r}.")
        label = int(p[2]) if len(p) == 3 else 1
        if label not in (0, 1):
            raise UsageError(f"A point's label is 1 (object) or 0 (background); got {label}.")
        out.append((float(p[0]), float(p[1]), label))
    return tuple(out)


def _boxes(
    boxes: Sequence[Sequence[float]] | None,
) -> tuple[tuple[float, float, float, float], ...]:
    out = []
    for b in boxes or ():
        if len(b) != 4 or b[2] <= b[0] or b[3] <= b[1]:
            raise UsageError(
                f"A box is (x0, y0, x1, y1) with x1 > x0 and y1 > y0; got {tuple(b)!r}."
            )
        out.append(tuple(float(v) for v in b))
    return tuple(out)  # type: ignore[return-value]


# -- the entry point ----------------------------------------------------------------------------


def segment(
    runner: Runner,
    images: Sequence[LoadedImage | Image.Image],
    *,
    mode: str | None = None,
    points: Sequence[Sequence[float]] | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    threshold: float = 0.5,
    batch_size: int = 4,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[Segmentation]:
    """Segment each image; one Segmentation per image, in input order, at original resolution.

    `points` ((x, y) or (x, y, label) in original pixels) and `boxes` ((x0, y0, x1, y1))
    prompt SAM-like models and apply to every image: all points form one prompt (one mask);
    each box is its own prompt (one mask per box); one box plus points form one prompt.
    """
    if batch_size < 1:
        raise UsageError("batch_size must be at least 1.")
    family = family_for(runner)
    prompts = bool(points) or bool(boxes)
    if mode is None:
        mode = runner.card.variant if runner.card.variant in family.modes else family.modes[0]
    if mode not in family.modes:
        raise UsageError(
            f"Model '{runner.card.id}' offers {', '.join(family.modes)} segmentation, not '{mode}'."
        )
    if mode == "promptable" and not prompts:
        raise UsageError(
            f"Model '{runner.card.id}' segments what you point at: give points "
            f"(--point x,y) or boxes (--box x0,y0,x1,y1)."
        )
    if prompts and mode != "promptable":
        raise UsageError(
            f"Model '{runner.card.id}' ({mode}) does not take points or boxes; "
            f"use a promptable model such as SAM."
        )
    opts = SegmentOptions(
        mode=mode, threshold=float(threshold), points=_points(points), boxes=_boxes(boxes)
    )
    if len(opts.boxes) > 1 and opts.points:
        raise UsageError(
            "Points can be combined with one box only (SAM prompts one object at a "
            "time); give several boxes without points, or one box with points."
        )
    return run_in_size_batches(lambda batch: family.run(runner, batch, opts), images,
                               batch_size=batch_size, progress=progress, cancel=cancel)


# -- helpers ------------------------------------------------------------------------------------


def to_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def require_processor(runner: Runner) -> Any:
    if runner.processor is None:
        raise UnsupportedModelError(
            f"Model '{runner.card.id}' has no image processor (preprocessor_config.json); "
            f"re-download or re-export it with its processor files."
        )
    return runner.processor


def image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", None) or processor


def nth_output(runner: Runner, outputs: Any, index: int) -> Any:
    """The graph's n-th output (ONNX aliases added after the graph's own names are skipped)."""
    names_of = getattr(runner, "output_names", None)
    names = names_of() if callable(names_of) else list(outputs.keys())
    return outputs[names[index]]
