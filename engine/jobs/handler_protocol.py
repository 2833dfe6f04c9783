"""Task handlers: what a job does to each input, registered per task.

A handler loads its model once (`prepare`), processes images (one by one or in
batches), writes its per-item files through the `OutputPlan` it is given, writes
batch-level files in `finish`, and frees the model in `close`.

Video frames go through the same `process_image`/`process_batch`: the pipeline
hands each frame a `FrameOutput` that keeps writes in memory instead of on disk;
an image written with kind "overlay", "restored" or "frame" becomes that frame of
the output video. A handler can instead set `ItemResult.frame`, define
`render_frame(image, result) -> ndarray` (called after tracking, so overlays can
show track ids), or take a whole video itself with `process_video`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from engine.jobs.handler_registry import (  # noqa: F401  the registry, re-exported
    HANDLERS,
    get_handler,
    handler_options_class,
    register_handler,
    registered_tasks,
    unregister_handler,
)

if TYPE_CHECKING:
    from engine.events import CancelToken, ProgressCallback
    from engine.jobs.outputs import OutputPlan
    from engine.jobs.spec import JobSpec
    from engine.media.image import LoadedImage
    from engine.settings import Settings


@dataclass
class ItemResult:
    result: Any = None  # Caption | Detections | Segmentation | RestoredImage | AttentionMaps…
    written: list[Path] = field(default_factory=list)  # files this item produced
    frame: np.ndarray | None = None  # video only: the picture to encode for this frame
    info: dict[str, Any] = field(default_factory=dict)  # small JSON-able facts for reports


@runtime_checkable
class ItemHandler(Protocol):
    def prepare(self, spec: JobSpec, progress: ProgressCallback,
                cancel: CancelToken, settings: Settings | None = None) -> None: ...

    def process_image(self, image: LoadedImage, out: OutputPlan) -> ItemResult: ...

    def process_batch(self, images: list[LoadedImage],
                      outs: list[OutputPlan]) -> list[ItemResult]: ...

    def finish(self, spec: JobSpec, out_dir: Path) -> list[Path]: ...
    # run_job passes `outputs=` (every file this job's finished inputs wrote, from the
    # job store) when `finish` takes it: aggregate those, not the whole folder.

    def close(self) -> None: ...


class BaseHandler:
    """Defaults for the optional parts: batch = loop, nothing to finish or close."""

    batch_size: int = 1  # preferred batch; the job option `batch_size` overrides it

    def prepare(self, spec: JobSpec, progress: ProgressCallback,
                cancel: CancelToken, settings: Settings | None = None) -> None:
        """Load what the job needs. `settings`: the front end's (run_job passes them)."""
        return None

    def prepare_finish(self, spec: JobSpec, settings: Settings | None = None) -> None:
        """Only what `finish` needs, no model: an executor whose workers hold the model
        (engine.jobs.ray_executor) calls this on its driver instead of `prepare`. The
        default is `prepare` itself (a handler without a model loads nothing heavy)."""
        from engine.events import CancelToken

        self.prepare(spec, lambda progress: None, CancelToken(), settings=settings)

    def process_image(self, image: LoadedImage, out: OutputPlan) -> ItemResult:
        raise NotImplementedError

    def process_batch(self, images: list[LoadedImage],
                      outs: list[OutputPlan]) -> list[ItemResult]:
        return [self.process_image(image, out) for image, out in zip(images, outs)]

    def finish(self, spec: JobSpec, out_dir: Path,
               outputs: Iterable[Path] | None = None) -> list[Path]:
        return []

    def close(self) -> None:
        return None


def batch_of(handler: Any, images: list[LoadedImage],
             outs: list[OutputPlan]) -> list[ItemResult]:
    """process_batch when the handler has one, else a loop over process_image."""
    if hasattr(handler, "process_batch"):
        results = handler.process_batch(images, outs)
    else:
        results = [handler.process_image(image, out) for image, out in zip(images, outs)]
    if len(results) != len(images):
        raise RuntimeError(f"handler {type(handler).__name__} returned {len(results)} results "
                           f"for {len(images)} images.")
    return [r if isinstance(r, ItemResult) else ItemResult(result=r) for r in results]
