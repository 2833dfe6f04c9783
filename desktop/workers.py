"""The only bridge from Qt to the engine's long operations.

Every operation is an engine handle (`engine.jobs.executors.LocalHandle`: its cancel and
pause tokens, its result, error and outcome); jobs come from the engine's own
`LocalJobExecutor` in "deferred" mode. An `Operation` adds only the Qt side: it runs the
handle on a QThreadPool thread and turns what happens into signals on the UI thread.

Engine code reports through plain callbacks (`on_event`, `progress`). Those callbacks
only append to a locked buffer and ring a "doorbell" signal when the buffer goes from
empty to non-empty; the UI thread drains the buffer at most every `COALESCE_S`
seconds. So however fast a batch runs (a 15 ms model, a chunked download), the UI does
bounded work: one update per 100 ms, never one per image, and never a
`processEvents()` loop.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot

from engine.events import CancelToken

Emit = Callable[[Any], None]  # takes any event object

if TYPE_CHECKING:  # engine.jobs loads numpy and PIL: not before the window is shown
    from engine.jobs.job_events import Failure, PauseSource
    from engine.jobs.executors import LocalHandle

    # Engine work: fn(emit, cancel, pause) -> result.
    WorkFn = Callable[[Emit, CancelToken, PauseSource], Any]

COALESCE_S = 0.1  # UI updates from one operation: at most ten per second

_ids = itertools.count(1)


class Operation(QObject):
    """One long engine operation (an engine handle) run off the UI thread.

    Give it `work(emit, cancel, pause)`, or `handle`: a function that takes this
    operation's `emit` and returns a LocalHandle not yet run (LocalJobExecutor's "deferred"
    mode); `prepare(emit)` runs first on the same pool thread (loading a backend).

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
    _finished = Signal()  # crosses from the worker thread once the handle is done

    def __init__(self, work: WorkFn | None = None, *, label: str = "", kind: str = "job",
                 handle: Callable[[Emit], LocalHandle] | None = None,
                 prepare: Callable[[Emit], None] | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        from engine.jobs.executors import LocalHandle

        self.id = next(_ids)
        self.label = label
        self.kind = kind
        if handle is not None:
            self.handle = handle(self.emit_event)
        elif work is not None:
            self.handle = LocalHandle(
                label, lambda h: work(self.emit_event, h.cancel_token, h.pause_token))
        else:
            raise TypeError("Operation needs work or handle")
        self._prepare = prepare
        self.started_at: float | None = None
        self.finished_at: float | None = None
        # set on the UI thread, when the outcome's signal is emitted
        self.outcome: str | None = None  # succeeded | failed | cancelled
        self.result: Any = None
        self.failure: Failure | None = None
        self.deliveries = 0  # how many times the UI received events (tests read it)
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
        self.handle.cancel()

    def pause(self) -> None:
        self.handle.pause()

    def resume(self) -> None:
        self.handle.resume()

    @property
    def cancel_token(self) -> CancelToken:
        return self.handle.cancel_token

    @property
    def paused(self) -> bool:
        return self.handle.pause_token.paused

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
            if self._prepare is not None and not self.handle.cancel_token.cancelled:
                try:
                    self._prepare(self.emit_event)
                except Exception:  # noqa: BLE001 — the work itself reports what is wrong
                    pass
            self.handle.run()  # never raises: the outcome is on the handle
        finally:
            self._finished.emit()

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

    @Slot()
    def _on_finished(self) -> None:
        self._drain_timer.stop()
        self._drain()  # the last events arrive before the outcome
        self.finished_at = time.monotonic()
        handle = self.handle
        outcome = self.outcome = handle.outcome  # run() is over: never None here
        if outcome == "succeeded":
            self.result = handle.result
            self.succeeded.emit(handle.result)
        elif outcome == "failed":
            self.failure = handle.failure  # engine.jobs.job_events.Failure, with the traceback
            self.failed.emit(self.failure)
        else:
            self.result = None if handle.error is not None else handle.result
            self.cancelled.emit()
        self.done.emit()


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

    device, precision = Settings.load().requested_placement(device, precision)
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


JOB_IMPORTS: tuple[str, ...] = ()  # the built-in handlers load on first use


def _job_runner(store: Any, executor: Any = None) -> Any:
    """The job pool's executor: local, or the one a spec's `executor` names (Ray)."""
    from engine.jobs.executors import LocalJobExecutor, executor_for

    if executor is None:
        return LocalJobExecutor(store, mode="deferred", imports=JOB_IMPORTS)
    return executor_for(executor, store, mode="deferred", imports=JOB_IMPORTS)


def job_operation(spec: Any, *, store: Any = None, label: str = "",
                  parent: QObject | None = None) -> Operation:
    """An engine job (LocalJobExecutor.submit); its JobEvents arrive through `events`,
    preceded by a PlacementEvent."""

    def prepare(emit: Emit) -> None:
        from engine.catalog.catalog import load_catalog

        card = load_catalog(strict=False).resolve(spec.model)
        emit(PlacementEvent(planned_placement(card, spec.device, spec.precision)))
        load_backend(card.runtime)

    runner = _job_runner(store, spec.executor)
    return Operation(handle=lambda emit: runner.submit(spec, on_event=emit), prepare=prepare,
                     label=label or f"{spec.task} · {spec.model}", kind="job", parent=parent)


def resume_operation(job_id: str, *, store: Any = None, label: str = "",
                     parent: QObject | None = None, executor: Any = None) -> Operation:
    """Resume an interrupted engine job from the job store, on this machine or on the
    executor `executor` (an ExecutorChoice) names."""
    runner = _job_runner(store, executor)

    def prepare(emit: Emit) -> None:
        from engine.catalog.catalog import load_catalog

        model = runner.store.spec(job_id).model
        load_backend(load_catalog(strict=False).resolve(model).runtime)

    return Operation(handle=lambda emit: runner.resume(job_id, on_event=emit), prepare=prepare,
                     label=label or f"resume {job_id}", kind="job", parent=parent)


def download_operation(card: Any, *, settings: Any = None,
                       parent: QObject | None = None) -> Operation:
    """`engine.hub.fetch` for one model card; Progress events arrive through `events`."""

    def work(emit: Emit, cancel: CancelToken, pause: PauseSource) -> Any:
        from engine.hub import fetch

        return fetch(card, progress=emit, cancel=cancel, settings=settings)

    return Operation(work, label=card.name, kind="download", parent=parent)


def call_operation(fn: Callable[..., Any], *args: Any, label: str = "",
                   parent: QObject | None = None, **kwargs: Any) -> Operation:
    """A one-shot engine call (hub search, model load, an attention map) off the UI thread."""

    def work(emit: Emit, cancel: CancelToken, pause: PauseSource) -> Any:
        return fn(*args, **kwargs)

    return Operation(work, label=label or getattr(fn, "__name__", "call"), kind="call",
                     parent=parent)
