"""Explain mode: attention maps on the image, driven by the Explain settings.

The model is loaded once (with eager attention) and kept while the user moves
the layer/head sliders, changes method, clicks a patch or a caption word. Every
request runs off the UI thread; while one runs, only the newest pending request
is kept (sliders can move faster than a model runs). Maps that are already
computed per token (caption words, detected objects) are switched without
running the model again.
"""
from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from desktop.views.error_dialogs import describe
from desktop.workers import Operation, Pools, call_operation


def _load(card: Any, device: str, precision: str, settings: Any, speed: str = "off") -> Any:
    """The model with attention capture (token-merged at `speed`), from the process-wide
    cache the jobs use."""
    from desktop.workers import load_backend
    from engine.runtimes.runner_cache import shared_runner_cache

    load_backend(card.runtime)  # import + gc.freeze, see there
    if settings is not None:
        device, precision = settings.requested_placement(device, precision)
    return shared_runner_cache(settings).get_or_load(
        card, device=device, precision=precision, attention=True, speed=speed,
        settings=settings)


# One map at a time: the side-by-side compare runs a second controller on the same runner and
# the same capture cache, and two forwards of one model at once only compete for the CPU.
_EXPLAIN_LOCK = threading.Lock()


def _explain(runner: Any, path: Any, options: dict[str, Any]) -> Any:
    """The explain task's route (engine.explain.with_options), as `ocula explain` takes it."""
    from engine.explain.with_options import explain_with_options
    from engine.media.image import read_image

    image = read_image(path).rgb
    with _EXPLAIN_LOCK:
        return explain_with_options(runner, image, options)


def supported_methods(card: Any) -> tuple[list[str], str]:
    """(methods, reason) for a card, from engine.explain.capabilities."""
    from engine.explain import capabilities

    caps = capabilities(card)
    return list(caps.methods), caps.reason


class ExplainController(QObject):
    """Owns the loaded runner and the latest AttentionMaps for the explain view."""

    mapsReady = Signal(object)  # AttentionMaps
    heatmapChanged = Signal(object)  # numpy (H, W) or None
    placementKnown = Signal(str)
    failed = Signal(str)
    busyChanged = Signal(bool)

    def __init__(self, pools: Pools, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pools = pools
        self.runner: Any = None
        self.runner_key: tuple | None = None
        self.maps: Any = None
        self.token_index: int | None = None
        self.pending: tuple | None = None
        self.current: Operation | None = None
        self.requests = 0  # explain runs started (tests read it)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(120)
        self._debounce.timeout.connect(self._start_pending)

    @property
    def busy(self) -> bool:
        return self.current is not None and self.current.running

    def request(self, card: Any, path: Any, options: dict[str, Any], *, device: str = "auto",
                precision: str = "auto", settings: Any = None, immediate: bool = False) -> None:
        """Ask for a map; the newest request wins."""
        self.pending = (card, path, dict(options), device, precision, settings)
        if immediate:
            self._debounce.stop()
            self._start_pending()
        else:
            self._debounce.start()

    def _start_pending(self) -> None:
        if self.pending is None or self.busy:
            return
        card, path, options, device, precision, settings = self.pending
        self.pending = None
        speed = options.get("speed") or "off"
        key = (card.id, device, precision, speed)
        if self.runner is not None and self.runner_key == key:
            self._run_explain(path, options)
            return
        self.release()
        op = call_operation(_load, card, device, precision, settings, speed,
                            label=f"load {card.name}", parent=self)
        op.succeeded.connect(lambda runner, k=key, p=path, o=options:
                             self._on_loaded(runner, k, p, o))
        op.failed.connect(self._on_failed)
        op.done.connect(self._after)
        self._begin(op)

    def _on_loaded(self, runner: Any, key: tuple, path: Any, options: dict[str, Any]) -> None:
        self.runner, self.runner_key = runner, key
        self.placementKnown.emit(runner.placement.describe())
        if self.pending is None:  # nothing newer: run what this load was for
            self.pending = (None, path, options, None, None, None)

    def _run_explain(self, path: Any, options: dict[str, Any]) -> None:
        self.requests += 1
        op = call_operation(_explain, self.runner, path, options, label="explain", parent=self)
        op.succeeded.connect(self._on_maps)
        op.failed.connect(self._on_failed)
        op.done.connect(self._after)
        self._begin(op)

    def _begin(self, op: Operation) -> None:
        self.current = op
        self.busyChanged.emit(True)
        op.start(self.pools.calls)

    def _after(self) -> None:
        self.current = None
        self.busyChanged.emit(False)
        if self.pending is not None:
            card = self.pending[0]
            if card is None:  # the request a finished load was for
                _, path, options, *_ = self.pending
                self.pending = None
                self._run_explain(path, options)
            else:
                self._start_pending()

    def _on_maps(self, maps: Any) -> None:
        self.maps = maps
        self.token_index = None
        # the whole map first, then the maps: a listener may pick one word's map at once
        self.heatmapChanged.emit(maps.heatmap)
        self.mapsReady.emit(maps)

    def _on_failed(self, failure: Any) -> None:
        self.failed.emit(describe(failure.exception))

    def select_token(self, index: int) -> bool:
        """Show the map of one caption word / detected object, if the maps have it."""
        if self.maps is None or not self.maps.per_token or not 0 <= index < len(
                self.maps.per_token):
            return False
        self.token_index = index
        self.heatmapChanged.emit(self.maps.per_token[index].heatmap)
        return True

    def release(self) -> None:
        """Forget the model here; the shared runner cache owns (and evicts) it."""
        self.runner, self.runner_key, self.maps = None, None, None
