"""The only bridge from Qt to the engine's long operations.

Engine code runs on QThreadPool threads and reports through plain callbacks
(`on_event`, `progress`). Those callbacks only append to a locked buffer and ring a
"doorbell" signal when the buffer goes from empty to non-empty; the UI thread
drains the buffer at most every `COALESCE_S` seconds. So however fast a batch
runs (a 15 ms model, a chunked download), the UI does bounded work: one update
per 100 ms, never one per image, and never a `processEvents()` loop.

Cancellation uses the engine's CancelToken; pausing a job uses a
`threading.Event` that is *set while paused* (the engine waits at safe points).
"""
from __future__ import annotations

import itertools
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot

from engine.errors import Cancelled
from engine.events import CancelToken

COALESCE_S = 0.1  # UI updates from one operation: at most ten per second

_ids = itertools.count(1)

# Engine work: fn(emit, cancel, pause) -> result. `emit` takes any event object.
WorkFn = Callable[[Callable[[Any], None], CancelToken, threading.Event], Any]


@dataclass
class Failure:
    """An exception from a worker, carried to the UI thread as data."""

    exception: BaseException
    details: str  # formatted traceback, for the "details" expander only

    @property
    def message(self) -> str:
        return str(self.exception) or type(self.exception).__name__


class Operation(QObject):
    """One long engine operation run off the UI thread.

    Signals are always delivered on the UI thread (the Operation lives there):
    `events(list)` carries the coalesced events since the last delivery, in order;
    exactly one of `succeeded(result)`, `failed(Failure)`, `cancelled()` follows,
    then `done()`.
    """

    events = Signal(list)
    succeeded = Signal(object)
    failed = Signal(object)
    cancelled = Signal()
    done = Signal()
    _doorbell = Signal()
    _finished = Signal(str, object)  # outcome, payload; crosses from the worker thread

    def __init__(self, fn: WorkFn, *, label: str = "", kind: str = "job",
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.id = next(_ids)
        self.label = label
        self.kind = kind
        self.cancel_token = CancelToken()
        self.pause_event = threading.Event()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.outcome: str | None = None  # succeeded | failed | cancelled
        self.result: Any = None
        self.failure: Failure | None = None
        self.deliveries = 0  # how many times the UI received events (tests read it)
        self._fn = fn
        self._lock = threading.Lock()
        self._buffer: list[Any] = []
        self._last_drain = 0.0
        self._drain_timer = QTimer(self)
        self._drain_timer.setSingleShot(True)
        self._drain_timer.timeout.connect(self._drain)
        self._doorbell.connect(self._on_doorbell)
        self._finished.connect(self._on_finished)

    # -- control (UI thread) ------------------------------------------------------
    def start(self, pool: QThreadPool | None = None) -> None:
        self.started_at = time.monotonic()
        (pool or QThreadPool.globalInstance()).start(_Runnable(self))

    def cancel(self) -> None:
        self.pause_event.clear()  # a paused job must wake up to see the cancel
        self.cancel_token.cancel()

    def pause(self) -> None:
        self.pause_event.set()

    def resume(self) -> None:
        self.pause_event.clear()

    @property
    def paused(self) -> bool:
        return self.pause_event.is_set()

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.outcome is None

    # -- worker side (any thread) -----------------------------------------------------
    def emit_event(self, event: Any) -> None:
        with self._lock:
            ring = not self._buffer
            self._buffer.append(event)
        if ring:
            self._doorbell.emit()

    def _run(self) -> None:
        try:
            result = self._fn(self.emit_event, self.cancel_token, self.pause_event)
        except Cancelled:
            self._finished.emit("cancelled", None)
        except BaseException as exc:  # noqa: BLE001 — every failure must reach the UI
            if self.cancel_token.cancelled:
                self._finished.emit("cancelled", None)
            else:
                self._finished.emit("failed", Failure(exc, traceback.format_exc()))
        else:
            if self.cancel_token.cancelled and _looks_cancelled(result):
                self._finished.emit("cancelled", result)
            else:
                self._finished.emit("succeeded", result)

    # -- UI side ------------------------------------------------------------------------
    @Slot()
    def _on_doorbell(self) -> None:
        wait = COALESCE_S - (time.monotonic() - self._last_drain)
        if wait <= 0:
            self._drain()
        elif not self._drain_timer.isActive():
            self._drain_timer.start(int(wait * 1000) + 1)

    @Slot()
    def _drain(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
        self._last_drain = time.monotonic()
        if batch:
            self.deliveries += 1
            self.events.emit(batch)

    @Slot(str, object)
    def _on_finished(self, outcome: str, payload: Any) -> None:
        self._drain_timer.stop()
        self._drain()  # the last events arrive before the outcome
        self.finished_at = time.monotonic()
        self.outcome = outcome
        if outcome == "succeeded":
            self.result = payload
            self.succeeded.emit(payload)
        elif outcome == "failed":
            self.failure = payload
            self.failed.emit(payload)
        else:
            self.result = payload
            self.cancelled.emit()
        self.done.emit()


def _looks_cancelled(result: Any) -> bool:
    return bool(getattr(result, "cancelled", False))


class _Runnable(QRunnable):
    def __init__(self, operation: Operation) -> None:
        super().__init__()
        self.operation = operation
        self.setAutoDelete(True)

    def run(self) -> None:  # on a pool thread
        self.operation._run()


# -- the engine operations the GUI starts --------------------------------------------------


@dataclass
class Pools:
    """Separate pools so a long download never blocks a job, nor a job the UI's quick calls."""

    jobs: QThreadPool = field(default_factory=QThreadPool)
    downloads: QThreadPool = field(default_factory=QThreadPool)
    calls: QThreadPool = field(default_factory=QThreadPool)

    def __post_init__(self) -> None:
        self.jobs.setMaxThreadCount(1)  # one model at a time: memory, not CPU, is the limit
        self.downloads.setMaxThreadCount(3)
        self.calls.setMaxThreadCount(2)

    def wait(self, msecs: int = 30_000) -> bool:
        return all(p.waitForDone(msecs) for p in (self.jobs, self.downloads, self.calls))


@dataclass(frozen=True)
class PlacementEvent:
    """Where a job's model runs: `engine.devices.plan` before loading (planned=True), or
    what a handler reported from its loaded runner (planned=False)."""

    text: str
    planned: bool = True


def planned_placement(card: Any, device: str, precision: str) -> str:
    """The placement load_runner will ask for (settings resolve "auto" first)."""
    from engine.devices import plan
    from engine.settings import Settings

    settings = Settings.load()
    if device == "auto":
        device = settings.device or "auto"
    if precision == "auto":
        precision = settings.precision or "auto"
    return plan(card, device=device, precision=precision).describe()


_frozen_backends: set[str] = set()
_freeze_lock = threading.Lock()


def load_backend(runtime: str) -> None:
    """Import a runtime's backend (torch + transformers, onnxruntime…) off the UI thread,
    then move every object alive to Python's permanent GC generation (`gc.freeze`).

    Why: with torch and transformers loaded the process holds ~400,000 objects, and a
    full garbage collection walks all of them while holding the GIL — 0.4–0.7 s in which
    the UI thread cannot run (measured: mid-batch automatic collections, and the
    engine's gc.collect() when a job releases its model). Frozen objects are skipped by
    every later collection. Done once per backend, right after its import, when nearly
    nothing alive is garbage; desktop.app unfreezes at exit.
    """
    import importlib

    from engine.runtimes import BACKEND_MODULES

    module = BACKEND_MODULES.get(runtime)
    with _freeze_lock:
        if module is None or runtime in _frozen_backends:
            return
        importlib.import_module(module)
        import gc

        gc.freeze()
        _frozen_backends.add(runtime)


def job_operation(spec: Any, *, store: Any = None, label: str = "",
                  parent: QObject | None = None) -> Operation:
    """An engine job (`engine.jobs.run_job`); its JobEvents arrive through `events`,
    preceded by a PlacementEvent."""

    def work(emit: Callable[[Any], None], cancel: CancelToken, pause: threading.Event) -> Any:
        try:
            from engine.catalog.catalog import load_catalog

            card = load_catalog(strict=False).resolve(spec.model)
            emit(PlacementEvent(planned_placement(card, spec.device, spec.precision)))
            load_backend(card.runtime)
        except Exception:  # noqa: BLE001 — the job itself reports a bad model or device
            pass
        import engine.tasks.handlers  # noqa: F401  registers the task handlers
        from engine.jobs import run_job

        return run_job(spec, on_event=emit, cancel=cancel, pause=pause, store=store)

    return Operation(work, label=label or f"{spec.task} · {spec.model}", kind="job", parent=parent)


def resume_operation(job_id: str, *, store: Any = None, label: str = "",
                     parent: QObject | None = None) -> Operation:
    """Resume an interrupted engine job from the job store."""

    def work(emit: Callable[[Any], None], cancel: CancelToken, pause: threading.Event) -> Any:
        try:
            from engine.catalog.catalog import load_catalog
            from engine.jobs.store import JobStore

            model = (store or JobStore()).spec(job_id).model
            load_backend(load_catalog(strict=False).resolve(model).runtime)
        except Exception:  # noqa: BLE001 — resume_job reports a missing job or model
            pass
        import engine.tasks.handlers  # noqa: F401
        from engine.jobs import resume_job

        return resume_job(job_id, on_event=emit, cancel=cancel, pause=pause, store=store)

    return Operation(work, label=label or f"resume {job_id}", kind="job", parent=parent)


def download_operation(card: Any, *, settings: Any = None,
                       parent: QObject | None = None) -> Operation:
    """`engine.hub.fetch` for one model card; Progress events arrive through `events`."""

    def work(emit: Callable[[Any], None], cancel: CancelToken, pause: threading.Event) -> Any:
        from engine.hub import fetch

        return fetch(card, progress=emit, cancel=cancel, settings=settings)

    return Operation(work, label=card.name, kind="download", parent=parent)


def call_operation(fn: Callable[..., Any], *args: Any, label: str = "",
                   parent: QObject | None = None, **kwargs: Any) -> Operation:
    """A one-shot engine call (hub search, model load, an attention map) off the UI thread."""

    def work(emit: Callable[[Any], None], cancel: CancelToken, pause: threading.Event) -> Any:
        return fn(*args, **kwargs)

    return Operation(work, label=label or getattr(fn, "__name__", "call"), kind="call",
                     parent=parent)
