"""run_job / resume_job: the one loop the CLI and the GUI both drive.

Inputs are expanded into the job store, the task handler loads its model once, a
reader thread decodes the next images while the handler works on the current
batch, outcomes are committed with the next batch's "running" mark (one commit
per batch), and per-input problems are recorded while the rest continue. Videos
go through engine.jobs.video_job (decode, inference, encode concurrently).

`JobRun` is the per-item bookkeeping (store, events, outputs, report); another executor
reuses it and replaces only how a batch's results are computed (engine.jobs.ray_executor
overrides `_prepare`, `_process_all` and `_release`; `read_input` and `compute_batch` are
the two steps its workers run).
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import Cancelled, InputError, OutputDiskFullError
from engine.events import CancelToken, Progress
from engine.jobs import folder_lock
from engine.jobs.handler_protocol import ItemResult, batch_of, get_handler
from engine.jobs.job_events import EventCallback, Failure, JobEvent, JobSummary, PauseSource
from engine.jobs.outputs import (
    OutputPlan,
    check_output_dir,
    cleanup_partial,
    cleanup_stale_temporaries,
    remove_written,
)
from engine.jobs.processes import process_alive
from engine.jobs.spec import JobSpec
from engine.jobs.store import ItemRecord, JobStore
from engine.media.image import LoadedImage, read_image, read_image_bytes
from engine.media.inputs import expand_inputs
from engine.media.remote import is_url, read_url
from engine.settings import Settings

MAX_FAILURES_IN_SUMMARY = 1000
_PROGRESS_EVERY_S = 0.2
# errnos that mean "the output disk is full": the job stops (resumable), it does not
# fail input after input. EFBIG: the file-size limit (RLIMIT_FSIZE) or the file system's.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})
# Batch files the handlers and the report write at the top of the output folder.
JOB_FILE_NAMES = frozenset({"ocula-report.json", "ocula-report.html", "detections.coco.json",
                            "detections.csv", "classes.txt", "segments.coco.json",
                            "captions.jsonl"})
log = logging.getLogger("ocula.jobs")


def run_job(spec: JobSpec, *, on_event: EventCallback | None = None,
            cancel: CancelToken | None = None, pause: PauseSource | None = None,
            store: JobStore | None = None, job_id: str | None = None,
            settings: Settings | None = None, job_run: Callable[..., JobRun] | None = None
            ) -> JobSummary:
    """Queue `spec` in the job store and run it to the end (or until cancelled).

    Returns a JobSummary (state "finished" or "cancelled"; `summary.cancelled`).
    Per-input failures are in the summary and the report; errors that stop the
    whole job (no handler, the model cannot load) are raised after the job is
    marked "failed" in the store, so it can be resumed once fixed.

    `settings`: the front end's (device defaults, image limit, model cache). Without
    them the user's saved settings are read here, once for the whole job. `job_run`: the
    JobRun class (or factory) of another executor (engine.jobs.executors.job_run_for).
    """
    store = store or JobStore()
    job_id = store.create_job(spec, job_id=job_id)
    return (job_run or JobRun)(store, job_id, on_event, cancel, pause, settings).execute()


def resume_job(job_id: str, *, on_event: EventCallback | None = None,
               cancel: CancelToken | None = None, pause: PauseSource | None = None,
               store: JobStore | None = None, settings: Settings | None = None,
               job_run: Callable[..., JobRun] | None = None) -> JobSummary:
    """Continue a job that was interrupted, cancelled or failed, where it stopped (with
    any executor: the store, not the executor, knows what is done)."""
    store = store or JobStore()
    if not store.has_job(job_id):
        raise InputError(f"no job '{job_id}' in {store.path}; see `ocula jobs list`.")
    row = store.job_row(job_id)
    pid = row.get("pid")
    if row["state"] == "running" and pid and pid != os.getpid() and _alive(pid):
        raise InputError(f"job '{job_id}' is still running in process {pid}; cancel it "
                         f"there first.")
    return (job_run or JobRun)(store, job_id, on_event, cancel, pause, settings).execute()


def _alive(pid: int) -> bool:
    return process_alive(pid)


def _no_space(exc: BaseException | None) -> OSError | None:
    """The "disk full" OSError behind `exc` (itself, or its cause/context), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class _DoneOutputs:
    """Every file the job's finished inputs wrote, in queue order (streamed from the store,
    re-iterable): what `finish` aggregates, so it never lists another job's results."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id

    def __iter__(self):
        for item in self.store.job_items(self.job_id, "done"):
            for path in item.outputs:
                yield Path(path)


@dataclass
class _Loaded:
    item: ItemRecord
    image: LoadedImage | None = None
    error: str | None = None


_END = object()


def read_input(item: ItemRecord, pixel_limit: int | None, *,
               opener: Callable[..., Any] | None = None) -> _Loaded:
    """Decode one queued input (images only; a video is decoded by its own pipeline);
    a file that cannot be read is the entry's `error`, never an exception. `opener`: the
    handler's own reader (`open_image`: restoration opens very large images lazily)."""
    entry = _Loaded(item)
    if item.kind == "image":
        try:
            if is_url(item.path):  # an object-store input: fetched whole, decoded from memory
                entry.image = read_image_bytes(read_url(item.path), name=item.path,
                                               pixel_limit=pixel_limit)
            else:
                entry.image = (opener or read_image)(item.path, pixel_limit=pixel_limit)
        except InputError as exc:
            entry.error = str(exc)
        except Exception as exc:  # noqa: BLE001 — a bad file must not stop the job
            entry.error = f"{item.path}: cannot be read ({type(exc).__name__}: {exc})"
    return entry


def compute_batch(handler: Any, images: list[LoadedImage], outs: list[OutputPlan],
                  cancel: CancelToken | None = None) -> list[ItemResult | BaseException]:
    """The handler's results for a batch. When the whole batch raises, each input runs
    alone, so one broken input does not fail the others; Cancelled and a full disk
    (see `_no_space`) are raised, not returned."""
    try:
        return list(batch_of(handler, images, outs))
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001
        if _no_space(exc) is not None:
            raise
        if len(images) == 1:
            return [exc]
    results: list[ItemResult | BaseException] = []
    for image, out in zip(images, outs):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            results.append(batch_of(handler, [image], [out])[0])
        except Cancelled:
            raise
        except Exception as one:  # noqa: BLE001
            results.append(one)
    return results


class JobRun:
    """One run of one job: what every executor shares (see the module docstring)."""

    def __init__(self, store: JobStore, job_id: str, on_event: EventCallback | None,
                 cancel: CancelToken | None, pause: PauseSource | None,
                 settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings if settings is not None else _user_settings()
        self.job_id = job_id
        self.on_event = on_event
        self.cancel = cancel or CancelToken()
        self.pause = pause
        self.spec: JobSpec = store.spec(job_id)
        self.output_dir = Path(self.spec.output_dir)
        self.total = 0
        self.done = 0  # done + failed, over the job's whole life
        self.failed = 0
        self.processed_now = 0  # inputs finished in this run (for the rate)
        self.started = time.monotonic()
        self.paused_s = 0.0
        self.pending_records: list[tuple] = []
        self.handler: Any = None
        self._last_progress = 0.0
        self.bytes_written = 0  # by this run's finished inputs (for the disk-full message)

    # -- events -------------------------------------------------------------------------
    def emit(self, kind: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        fields.setdefault("done", self.done)
        fields.setdefault("total", self.total)
        self.on_event(JobEvent(kind=kind, job_id=self.job_id, **fields))

    def rate_eta(self) -> tuple[float, float | None]:
        active = max(1e-9, time.monotonic() - self.started - self.paused_s)
        rate = self.processed_now / active
        remaining = max(0, self.total - self.done)
        return rate, (remaining / rate if rate > 0 else None)

    def wait_if_paused(self) -> None:
        """Block while paused (checked between batches and between video frames)."""
        if self.pause is None or not self.pause.is_set():
            return
        began = time.monotonic()
        self.store.set_state(self.job_id, "paused")
        self.emit("paused", message="paused")
        while self.pause.is_set() and not self.cancel.cancelled:
            time.sleep(0.05)
        self.paused_s += time.monotonic() - began
        self.cancel.raise_if_cancelled()
        self.store.set_state(self.job_id, "running")
        self.emit("resumed", message="resumed")

    def progress(self, item: str, done: float, total: float | None, rate: float,
                 eta_s: float | None, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < _PROGRESS_EVERY_S:
            return
        self._last_progress = now
        self.emit("progress", item=item, done=int(done), total=int(total or 0), rate=rate,
                  eta_s=eta_s, message=message)

    def handler_progress(self, p: Progress) -> None:
        if p.stage == "partial":  # e.g. a caption streaming in, token by token
            self.emit("partial", item=p.item, message=p.message)
            return
        # Model download / load progress while the handler prepares.
        self.progress(p.item, p.done, p.total, 0.0, None,
                      p.message or f"{p.stage} {p.unit}", force=p.done == p.total)

    # -- the run --------------------------------------------------------------------------
    def execute(self) -> JobSummary:
        store, spec = self.store, self.spec
        prior_elapsed = float(store.job_row(self.job_id).get("elapsed_s") or 0.0)
        store.set_state(self.job_id, "running", pid=os.getpid(), message="")
        locked = False
        try:
            check_output_dir(self.output_dir)
            # One job per output folder: a second one would overwrite this one's files.
            folder_lock.acquire(self.output_dir, self.job_id, notice=self._notice)
            locked = True
            self.emit("started", message=f"{spec.task} with {spec.model}")
            self._expand()
            self._cleanup_stale_temporaries()
            counts = store.counts(self.job_id)
            self.total = sum(counts.values())
            self.done = counts["done"] + counts["failed"]
            self.failed = counts["failed"]
            self.progress("", self.done, self.total, 0.0, None,
                          f"{self.total} inputs queued, {self.done} already finished",
                          force=True)
            self._prepare()
            self._cleanup_interrupted()
            self._process_all()
            files = self._finish()
            state = "finished"
        except Cancelled:
            self._flush()
            files, state = [], "cancelled"
        except OutputDiskFullError as exc:
            raise self._stopped_disk_full(exc, prior_elapsed) from None
        except BaseException as exc:
            self._flush()
            store.set_state(self.job_id, "failed", message=str(exc),
                            elapsed_s=prior_elapsed + self._active_s())
            raise
        finally:
            self._release()
            if locked:
                folder_lock.release(self.output_dir, self.job_id)
        summary = self._summary(state, files, prior_elapsed)
        store.set_state(self.job_id, state, elapsed_s=summary.elapsed_s)
        self.emit("finished" if state == "finished" else "cancelled", result=summary,
                  message=summary.message)
        return summary

    def _prepare(self) -> None:
        """The task handler, its model loaded (once for the whole job)."""
        self.handler = get_handler(self.spec.task)
        self.handler.prepare(self.spec, self.handler_progress, self.cancel,
                             settings=self.settings)
        self.ran = ran_with(self.handler)

    def _release(self) -> None:
        if self.handler is not None:
            try:
                self.handler.close()
            except Exception:  # noqa: BLE001 — closing must not hide the outcome
                pass

    def _notice(self, message: str) -> None:
        log.warning("%s", message)
        self.emit("progress", message=message)

    def _finish(self) -> list[Path]:
        """The handler's batch files, built from this job's own inputs only."""
        import inspect

        finish = self.handler.finish
        try:
            takes_outputs = "outputs" in inspect.signature(finish).parameters
        except (TypeError, ValueError):
            takes_outputs = False
        try:
            if takes_outputs:
                return list(finish(self.spec, self.output_dir,
                                   outputs=_DoneOutputs(self.store, self.job_id)) or [])
            return list(finish(self.spec, self.output_dir) or [])
        except Cancelled:
            raise
        except Exception as exc:
            full = _no_space(exc)
            if full is not None:
                raise self._disk_full(full, "writing the batch files") from exc
            raise

    def _disk_full(self, exc: OSError, doing: str) -> OutputDiskFullError:
        from engine.format import human_bytes

        return OutputDiskFullError(
            f"The disk holding {self.output_dir} is full ({exc.strerror or exc}) while "
            f"{doing}: the job stopped after {self.done} of {self.total} inputs, "
            f"{human_bytes(self.bytes_written)} written in this run. Unfinished files were "
            f"removed. Free some space, then resume job '{self.job_id}' "
            f"(`ocula jobs resume {self.job_id}`).", folder=self.output_dir,
            written_bytes=self.bytes_written)

    def _stopped_disk_full(self, exc: OutputDiskFullError,
                           prior_elapsed: float) -> OutputDiskFullError:
        """Disk full: commit what finished, write the report if it fits, mark the job
        "failed" (resumable) and return the error to raise (no traceback in the CLI)."""
        try:
            self._flush()
        except Exception as flush_exc:  # noqa: BLE001 — the store may be on the full disk
            log.warning("could not record the last results: %s", flush_exc)
        message = str(exc)
        try:
            summary = self._summary("failed", [], prior_elapsed)
        except Exception as report_exc:  # noqa: BLE001
            message += f" The report could not be written ({report_exc})."
        else:
            if summary.report_json is not None:
                message += f" Report: {summary.report_json}."
            else:
                message += " The report could not be written (no space left either)."
        try:
            self.store.set_state(self.job_id, "failed", message=message,
                                 elapsed_s=prior_elapsed + self._active_s())
        except Exception as state_exc:  # noqa: BLE001
            log.warning("could not record the job's state: %s", state_exc)
        return OutputDiskFullError(message, folder=exc.folder, written_bytes=exc.written_bytes)

    def _cleanup_stale_temporaries(self) -> None:
        """Temporaries a killed run of this job left (hidden `.part` files and the like),
        anywhere in the output folder; only names this job writes, never a user's file."""
        store, job_id = self.store, self.job_id

        def owns(rel: str) -> bool:
            parent, _, name = rel.rpartition("/")
            if not parent and name in JOB_FILE_NAMES:
                return True
            prefix = parent + "/" if parent else ""
            return any(store.has_key(job_id, prefix + name[:i])
                       for i, ch in enumerate(name) if ch == "." and i > 0)

        removed = cleanup_stale_temporaries(self.output_dir, owns)
        if removed:
            log.info("%s: removed %d stale temporary file(s)", self.output_dir, len(removed))

    def _active_s(self) -> float:
        return time.monotonic() - self.started - self.paused_s

    def _expand(self) -> None:
        if self.store.job_row(self.job_id)["expanded"]:
            return
        items = expand_inputs(self.spec.inputs, exclude=[self.output_dir])
        self.store.add_items(self.job_id, items)
        self.store.mark_expanded(self.job_id)
        for item in self.store.job_items(self.job_id, "failed"):
            if item.kind == "error":
                self.emit("item_failed", item=item.path, message=item.error or "")

    def _cleanup_interrupted(self) -> None:
        for item in self.store.job_items(self.job_id, "running"):
            if item.kind != "error":
                cleanup_partial(self.output_dir, item.out_key)

    def _plan(self, item: ItemRecord) -> OutputPlan:
        return OutputPlan(self.output_dir, item.out_key, Path(item.path),
                          is_input=lambda p: self.store.is_input(self.job_id, p))

    # -- images and videos in queue order -----------------------------------------------------
    def _process_all(self) -> None:
        batch_size = int(self.spec.options.batch_size
                         or getattr(self.handler, "batch_size", 1) or 1)
        loaded: queue.Queue = queue.Queue(maxsize=2 * batch_size + 2)
        stop = threading.Event()
        reader = threading.Thread(target=self._read_ahead, args=(loaded, stop),
                                  name=f"ocula-read-{self.job_id}", daemon=True)
        reader.start()
        batch: list[_Loaded] = []
        try:
            while True:
                self.cancel.raise_if_cancelled()
                entry = self._next(loaded)
                if entry is _END or entry.item.kind == "video" or entry.error is not None:
                    self._run_batch(batch)
                    batch = []
                    if entry is _END:
                        break
                    if entry.error is not None:
                        self._fail_now(entry.item, entry.error)
                    else:
                        self._run_video(entry.item)
                    continue
                batch.append(entry)
                if len(batch) >= batch_size:
                    self._run_batch(batch)
                    batch = []
            self._flush()
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    loaded.get_nowait()
                except queue.Empty:
                    pass
                reader.join(timeout=0.05)

    def _next(self, loaded: queue.Queue) -> Any:
        while True:
            try:
                entry = loaded.get(timeout=0.1)
            except queue.Empty:
                self.cancel.raise_if_cancelled()
                continue
            if isinstance(entry, BaseException):
                raise entry
            return entry

    def _read_ahead(self, loaded: queue.Queue, stop: threading.Event) -> None:
        """Reader thread: decode the next images while the handler works."""
        try:
            limit = self.spec.options.pixel_limit or self.settings.pixel_limit
            for item in self.store.pending_items(self.job_id):
                if stop.is_set():
                    return
                entry = read_input(item, limit,
                                   opener=getattr(self.handler, "open_image", None))
                if not self._put(loaded, entry, stop):
                    return
            self._put(loaded, _END, stop)
        except BaseException as exc:  # noqa: BLE001 — hand it to the main thread
            self._put(loaded, exc, stop)

    @staticmethod
    def _put(loaded: queue.Queue, entry: Any, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                loaded.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run_batch(self, batch: list[_Loaded]) -> None:
        if not batch:
            return
        self.wait_if_paused()
        seqs = [e.item.seq for e in batch]
        self._flush(mark_running=seqs)
        began = time.time()
        outs = [self._plan(e.item) for e in batch]
        images = [e.image for e in batch]
        try:
            results = compute_batch(self.handler, images, outs, self.cancel)
        except Cancelled:
            self._discard(outs)
            raise
        except Exception as exc:
            full = _no_space(exc)
            if full is not None:
                self._discard(outs)
                raise self._disk_full(full, f"writing {batch[0].item.path}") from exc
            raise
        finished = time.time()
        for entry, res in zip(batch, results):
            full = _no_space(res) if isinstance(res, BaseException) else None
            if full is not None:
                self._discard(outs)
                raise self._disk_full(full, f"writing {entry.item.path}") from res
        for entry, out, res in zip(batch, outs, results):
            if isinstance(res, BaseException):
                self._discard([out])  # a failed input leaves no files
                self._record_failure(entry.item, _reason(entry.item.path, res), began, finished)
            else:
                self._record_success(entry.item, out, res, began, finished)

    def _discard(self, outs: list[OutputPlan]) -> None:
        """Remove what these inputs wrote (and any temporaries): they are redone or failed."""
        for out in outs:
            remove_written(list(out.written))
            cleanup_partial(self.output_dir, out.key)

    def _record_success(self, item: ItemRecord, out: OutputPlan, res: ItemResult,
                        began: float, finished: float) -> None:
        if not res.written:
            res.written = list(out.written)  # what went through the plan, for the events
        written = [str(p) for p in res.written]
        for path in res.written:
            try:
                self.bytes_written += os.stat(path).st_size
            except OSError:
                pass
        self.pending_records.append((item.seq, "done", None, written, res.info, finished))
        self.done += 1
        self.processed_now += 1
        rate, eta = self.rate_eta()
        self.emit("item_done", item=item.path, rate=rate, eta_s=eta, result=res)

    def _record_failure(self, item: ItemRecord, reason: str, began: float,
                        finished: float) -> None:
        self.pending_records.append((item.seq, "failed", reason, [], {}, finished))
        self.done += 1
        self.failed += 1
        self.processed_now += 1
        rate, eta = self.rate_eta()
        self.emit("item_failed", item=item.path, rate=rate, eta_s=eta, message=reason)

    def _fail_now(self, item: ItemRecord, reason: str) -> None:
        now = time.time()
        self._flush(mark_running=[item.seq])
        self._record_failure(item, reason, now, now)

    def _flush(self, mark_running: list[int] | None = None) -> None:
        """Commit buffered outcomes together with the next batch's "running" mark."""
        records, self.pending_records = self.pending_records, []
        self.store.commit_batch(self.job_id, records, mark_running or [])

    def _run_video(self, item: ItemRecord) -> None:
        from engine.jobs.video_job import run_video_item

        self._flush(mark_running=[item.seq])
        began = time.time()
        out = self._plan(item)
        try:
            res = run_video_item(self, item, out)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 — one broken video must not stop the batch
            full = _no_space(exc)
            self._discard([out])
            if full is not None:
                raise self._disk_full(full, f"writing {item.path}") from exc
            self._record_failure(item, _reason(item.path, exc), began, time.time())
        else:
            self._record_success(item, out, res, began, time.time())
        self._flush()

    # -- the end ----------------------------------------------------------------------------
    def _summary(self, state: str, files: list[Path], prior_elapsed: float) -> JobSummary:
        from engine.jobs.report import write_job_report

        counts = self.store.counts(self.job_id)
        failures = []
        for item in self.store.job_items(self.job_id, "failed"):
            failures.append(Failure(item.path, item.error or ""))
            if len(failures) >= MAX_FAILURES_IN_SUMMARY:
                break
        items = [{"input": item.path, "state": item.state, "outputs": list(item.outputs),
                  "error": item.error} for item in self.store.job_items(self.job_id)]
        per_item = [Path(p) for entry in items for p in entry["outputs"]]
        active = self._active_s()
        summary = JobSummary(
            job_id=self.job_id, state=state, total=sum(counts.values()), done=counts["done"],
            failed=counts["failed"], elapsed_s=prior_elapsed + active,
            output_dir=self.output_dir, failures=failures, files=per_item + list(files),
            job_files=list(files), items=items, rate=self.processed_now / max(active, 1e-9),
            ran=getattr(self, "ran", {}))
        summary.message = (f"{summary.done} done, {summary.failed} failed of {summary.total}"
                           + (" (cancelled; resume to finish)" if state == "cancelled" else ""))
        try:
            summary.report_json, summary.report_html = write_job_report(
                self.store, self.job_id, summary, self.spec)
        except OSError as exc:  # a full disk must not turn a finished job into a crash
            summary.message += f"; the report could not be written ({exc.strerror})"
        return summary


def ran_with(handler: Any) -> dict[str, Any]:
    """What really ran the job's model, for the report: the placement (runtime, device,
    precision: an int8/fp16 variant shows here), the ONNX graph file, and the runner's notes
    (fallbacks, the variant's quality figure). Empty for handlers without a runner."""
    runner = getattr(handler, "runner", None)
    if runner is None:
        return {}
    placement = getattr(runner, "placement", None)
    graph = getattr(runner, "onnx_path", None)
    return {"placement": placement.describe() if placement is not None else "",
            "precision": getattr(placement, "precision", None),
            "graph": str(graph) if graph else None,
            "notes": [str(n) for n in getattr(runner, "notes", [])]}


def _reason(path: str, exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return str(exc)
    text = str(exc) or type(exc).__name__
    return f"{path}: {type(exc).__name__}: {text}"


def _user_settings() -> Settings:
    """The user's saved settings, for a caller that passed none; an unreadable settings
    file must not stop a job: the defaults apply."""
    from engine.errors import OculaError

    try:
        return Settings.load()
    except (OculaError, OSError):
        return Settings()
