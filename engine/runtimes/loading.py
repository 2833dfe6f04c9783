"""`load_runner(card, …)`: a model card's files on disk -> a Runner on the planned device.

Re-exported by engine.runtimes (import it from there). It lives in its own module so
that engine.runtimes.runner_cache, which loads through it, does not import the package that
imports the cache.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import OculaError
from engine.events import CancelToken, ProgressCallback
from engine.runtimes.base import Placement, Runner, loader_for

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard
    from engine.settings import Settings

log = logging.getLogger("ocula.runtimes")


def resolve_snapshot(
    card: ModelCard,
    *,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    snapshot: Path | None = None,
) -> Path:
    """The model's files on disk: `snapshot`, else `card.local_path`, else the installed
    package that ships its weights (`card.package`), else a hub download."""
    if snapshot is not None:
        path = Path(snapshot)
    elif card.package:
        from engine.catalog import packaged

        path = packaged.locate(card)
    elif card.local_path:
        path = Path(card.local_path).expanduser()
        if path.is_file() and path.exists():
            from engine.catalog.local_import import check_available

            check_available(card)  # "changed since it was imported", hashed only if touched
    else:
        from engine.hub import fetch

        # repair=False: a cached file that changed since it was verified is refused with
        # "re-run `ocula models pull ID`", never silently used (nor re-downloaded mid-job).
        path = Path(fetch(card, progress=progress, cancel=cancel, settings=settings,
                          repair=False))
    if not path.exists():
        raise OculaError(
            f"Model '{card.id}': its files are not at {path}. Re-import the model "
            f"or download it again."
        )
    return path


def load_runner(
    card: ModelCard,
    *,
    device: str = "auto",
    precision: str = "auto",
    attention: bool = False,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    snapshot: Path | None = None,
) -> Runner:
    """Fetch (if needed) and load `card` on the device/precision `engine.devices.plan` picks.

    "auto" device/precision defer to `settings.device` / `settings.precision`. Whatever
    differs from the request is in `runner.placement.fallback` (and logged), never silent.
    """
    from engine import devices
    from engine.settings import Settings

    settings = settings if settings is not None else Settings.load()
    device, precision = settings.requested_placement(device, precision)
    path = resolve_snapshot(
        card, settings=settings, progress=progress, cancel=cancel, snapshot=snapshot
    )
    placement = devices.plan(card, device=device, precision=precision)
    fast = _onnx_fast_path(card, placement, attention=attention, settings=settings)
    if fast is not None:
        return fast
    loader = loader_for(card.runtime)
    runner = loader(
        card,
        path,
        placement,
        attention=attention,
        settings=settings,
        progress=progress,
        cancel=cancel,
    )
    if runner.placement.fallback:
        log.warning("%s: %s", card.id, runner.placement.describe())
    return runner


def _onnx_fast_path(card: ModelCard, placement: Placement, *, attention: bool,
                    settings: Settings) -> Runner | None:
    """The verified ONNX export made by `ocula models optimize`, when it fits the request.

    Used for torch models planned on the CPU in fp32 without attention maps (explain needs
    the torch module); `settings.use_onnx_fast_path = False` turns it off.
    """
    if (card.runtime == "onnx" or attention or placement.device != "cpu"
            or placement.precision != "fp32" or not settings.use_onnx_fast_path):
        return None
    from engine.runtimes.optimized import find_optimized, onnx_runner_for_export

    path = find_optimized(card)
    if path is None:
        return None
    runner = onnx_runner_for_export(card, path)
    runner.notes.append(f"using the verified ONNX fast path made by `ocula models optimize` "
                        f"({path}); set use_onnx_fast_path = false to run the torch model")
    log.info("%s: %s", card.id, runner.notes[-1])
    return runner
