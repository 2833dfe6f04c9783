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
from engine.vocabulary import QUANTIZED_PRECISIONS, VARIANT_PRECISIONS

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
    speed: str = "off",
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    snapshot: Path | None = None,
) -> Runner:
    """Fetch (if needed) and load `card` on the device/precision `engine.devices.plan` picks.

    `speed` "balanced" / "fast": token merging in the model's ViT encoder (torch path only,
    engine.runtimes.token_merging); a model without one is refused, never silently run off.

    "auto" device/precision defer to `settings.device` / `settings.precision`. Whatever
    differs from the request is in `runner.placement.fallback` (and logged), never silent.
    """
    from engine import devices
    from engine.catalog.requirements import require_runnable
    from engine.settings import Settings

    require_runnable(card)  # a PyTorch model on the Lite install: say so before downloading
    settings = settings if settings is not None else Settings.load()
    device, precision = settings.requested_placement(device, precision)
    if speed != "off":
        from engine.runtimes.token_merging import check_speed_runtime

        check_speed_runtime(card, speed)
    path = resolve_snapshot(
        card, settings=settings, progress=progress, cancel=cancel, snapshot=snapshot
    )
    fetch_variant_files(card, precision, path, settings=settings, progress=progress,
                        cancel=cancel)
    placement = devices.plan(card, device=device, precision=precision)
    fast = None
    if speed == "off":  # ONNX exports and variants cannot merge tokens: speed keeps torch
        fast = _cpu_variant(card, placement, precision, path, attention=attention,
                            settings=settings)
        if fast is None:
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
    if speed != "off":
        from engine.runtimes.token_merging import apply_speed

        try:
            apply_speed(runner, speed)
        except Exception:
            runner.release()
            raise
    if precision in QUANTIZED_PRECISIONS and card.runtime != "onnx":
        runner.notes.append(f"no {precision} variant of {card.id} exists yet; make one with "
                            f"`ocula models optimize {card.id} --precision {precision}`")
    if runner.placement.fallback:
        log.warning("%s: %s", card.id, runner.placement.describe())
    return runner


def fetch_variant_files(card: ModelCard, precision: str, snapshot: Path, *,
                        settings: Settings | None = None,
                        progress: ProgressCallback | None = None,
                        cancel: CancelToken | None = None) -> list[str]:
    """Download the hub-published `precision` files a card's sidecar names (`variants`)
    into its snapshot when they are not there yet: a pull fetches only the fp32 graphs.
    Returns the files fetched."""
    wanted = ((card.sidecar or {}).get("variants") or {}).get(precision, {})
    missing = [rel for rel in wanted.values() if not (snapshot / rel).is_file()]
    if not missing or not card.repo or card.local_path or not snapshot.is_dir():
        return []
    from engine.hub.fetch import fetch_repo

    fetch_repo(card.repo, card.revision, missing, progress=progress, cancel=cancel,
               settings=settings, repair=False, model_id=card.id)
    return missing


def _cpu_variant(card: ModelCard, placement: Placement, precision: str, snapshot: Path, *,
                 attention: bool, settings: Settings) -> Runner | None:
    """A measured int8/fp16 variant made by `ocula models optimize --precision`, for a CPU
    run: the one asked for by name, or for "auto" the recommended one (its quality figures
    passed; engine.quality). Torch models asked for attention maps keep their module."""
    if (placement.device != "cpu" or not settings.use_onnx_fast_path
            or (attention and card.runtime != "onnx")):
        return None
    from engine.runtimes.optimized import find_variant, onnx_runner_for_variant, recommended_variant

    if precision in ("", "auto"):
        variant = recommended_variant(card)
    elif precision in VARIANT_PRECISIONS:
        variant = find_variant(card, precision)
    else:
        return None
    if variant is None:
        return None
    runner = onnx_runner_for_variant(card, variant, snapshot=snapshot)
    runner.notes.append(f"using the {variant.summary()} (`ocula models optimize`; set "
                        f"use_onnx_fast_path = false or --precision fp32 to run the original)")
    log.info("%s: %s", card.id, runner.notes[-1])
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
