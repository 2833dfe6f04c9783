"""Where a job runs: the JobExecutor interface and its local implementation.

`JobExecutor` is deliberately small — submit a spec or resume a job id, get a handle
to wait on, pause, resume or cancel — so other implementations run the very same jobs
elsewhere. `RayJobExecutor` (engine.jobs.ray_executor, the `[cluster]` extra) runs
them on a Ray cluster: model replicas on Ray actors, while the driver keeps the job
store and writes every output, so a job resumes with either executor. `executor_for`
builds the one a JobSpec's `executor` names.

`LocalJobExecutor` runs jobs on this machine, in one of four ways:
- "thread": a background thread (the UI thread never blocks);
- "inline": in the calling thread (the CLI's way: Ctrl+C cancels);
- "deferred": on a thread the caller picks, by calling `handle.run()` there (the GUI's
  way: its job pool, one model at a time; desktop/workers.py adds only Qt signals);
- "subprocess": a worker process (`python -m engine.jobs.worker`), so a crash in a
  native library or a kill takes only the worker; the job resumes from the store.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from engine.errors import Cancelled, OculaError
from engine.events import CancelToken
from engine.jobs.job_events import EventCallback, Failure, JobEvent, JobSummary, PauseToken
from engine.jobs.job_loop import resume_job, run_job
from engine.jobs.spec import ExecutorChoice, JobSpec
from engine.jobs.store import JobStore, new_job_id


class JobHandle(Protocol):
    job_id: str

    def wait(self, timeout: float | None = None) -> JobSummary | None: ...
    def cancel(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    @property
    def done(self) -> bool: ...


class JobExecutor(Protocol):
    """Runs jobs described by JobSpec; every implementation reports JobEvents."""

    def submit(self, spec: JobSpec, *, on_event: EventCallback | None = None,
               job_id: str | None = None) -> JobHandle: ...

    def resume(self, job_id: str, *, on_event: EventCallback | None = None) -> JobHandle: ...


class LocalHandle:
    """Work running in this process: a job, or any engine call a front end runs off its
    UI thread (the GUI's downloads and one-shot calls use the same handle).

    `work(handle)` runs once, in `run()`: in a thread of its own, inline, or on a thread
    the caller picks (LocalJobExecutor's modes). It sees the handle's `cancel_token` and
    `pause_token`; afterwards `result` (the JobSummary of a job), `error` and `failure`
    say how it went, and `outcome` sums that up.
    """

    def __init__(self, job_id: str, work: Callable[[LocalHandle], Any] | None = None) -> None:
        self.job_id = job_id
        self.cancel_token = CancelToken()
        self.pause_token = PauseToken()
        self.result: Any = None
        self.error: BaseException | None = None
        self.failure: Failure | None = None  # `error` as data, with its traceback
        self._work = work
        self._finished = threading.Event()

    @property
    def summary(self) -> JobSummary | None:
        return self.result if isinstance(self.result, JobSummary) else None

    def run(self) -> None:
        """Do the work in the calling thread; never raises (see `wait`, `outcome`)."""
        try:
            if self._work is None:
                raise RuntimeError(f"handle {self.job_id} has no work to run")
            self.result = self._work(self)
        except BaseException as exc:  # noqa: BLE001 — handed to wait() / outcome
            self.error = exc
            self.failure = Failure.from_exception(exc)
        finally:
            self._finished.set()

    def wait(self, timeout: float | None = None) -> JobSummary | None:
        """The summary once the job ends (None on timeout); re-raises a job failure."""
        if not self._finished.wait(timeout):
            return None
        if self.error is not None:
            raise self.error
        return self.summary

    def cancel(self) -> None:
        self.pause_token.resume()  # a paused job must wake to see the cancel
        self.cancel_token.cancel()

    def pause(self) -> None:
        self.pause_token.pause()

    def resume(self) -> None:
        self.pause_token.resume()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def outcome(self) -> str | None:
        """None while running, then "succeeded", "failed" or "cancelled": an error raised
        after a cancel request, or a result that says it was cancelled (a JobSummary)."""
        if not self.done:
            return None
        cancelled = self.cancel_token.cancelled
        if self.error is not None:
            return "cancelled" if cancelled or isinstance(self.error, Cancelled) else "failed"
        if cancelled and getattr(self.result, "cancelled", False):
            return "cancelled"
        return "succeeded"


class LocalJobExecutor:
    """Runs jobs here. Modes: "thread" (a thread of its own), "inline" (submit returns when
    the job ends), "subprocess" (a worker process, see WorkerHandle), or "deferred": submit
    only prepares the handle, and the caller runs `handle.run()` on a thread it picks (the
    GUI's job pool); the job is then also created in the store there, so a bad spec is the
    handle's failure, not submit's exception.

    `imports` name modules that register task handlers: the worker process imports them
    (they replace its defaults); in this process they are imported before the job runs.
    """

    def __init__(self, store: JobStore | None = None, *, mode: str = "thread",
                 imports: Sequence[str] = ()) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.store = store or JobStore()
        self.mode = mode
        self.imports = list(imports)
        self.job_run: Callable[..., Any] | None = None  # another executor's JobRun (Ray's)

    def submit(self, spec: JobSpec, *, on_event: EventCallback | None = None,
               job_id: str | None = None) -> LocalHandle | WorkerHandle:
        if self.mode == "deferred":
            job_id = job_id or new_job_id()
            return self._start(job_id, on_event, create=spec)
        job_id = self.store.create_job(spec, job_id=job_id)
        return self._start(job_id, on_event)

    def resume(self, job_id: str, *, on_event: EventCallback | None = None
               ) -> LocalHandle | WorkerHandle:
        return self._start(job_id, on_event)

    def _start(self, job_id: str, on_event: EventCallback | None,
               create: JobSpec | None = None) -> LocalHandle | WorkerHandle:
        if self.mode == "subprocess":
            return WorkerHandle(job_id, self.store.path, self.imports, on_event)

        def work(handle: LocalHandle) -> JobSummary:
            _import_handlers(self.imports)
            if create is not None:
                self.store.create_job(create, job_id=job_id)
            return resume_job(job_id, on_event=on_event, cancel=handle.cancel_token,
                              pause=handle.pause_token, store=self.store,
                              job_run=self.job_run)

        handle = LocalHandle(job_id, work)
        if self.mode == "inline":
            handle.run()
        elif self.mode == "thread":
            threading.Thread(target=handle.run, name=f"ocula-job-{job_id}", daemon=True).start()
        return handle


MODES = ("thread", "inline", "subprocess", "deferred")
# spec.EXECUTORS -> "module:factory" of its JobExecutor (loaded on use: Ray is optional)
EXECUTOR_FACTORIES = {"local": "engine.jobs.executors:LocalJobExecutor",
                      "ray": "engine.jobs.ray_executor:RayJobExecutor"}


def executor_for(choice: ExecutorChoice, store: JobStore | None = None, *,
                 mode: str = "thread", imports: Sequence[str] = ()) -> JobExecutor:
    """The JobExecutor `choice` names (a JobSpec's `executor`), in `mode`."""
    factory = _load(EXECUTOR_FACTORIES[choice.name])
    if choice.name == "local":
        return factory(store, mode=mode, imports=imports)
    return factory(store, choice=choice, mode=mode, imports=imports)


def job_run_for(choice: ExecutorChoice) -> Callable[..., Any] | None:
    """What run_job / resume_job take as `job_run` for `choice` (None: run here)."""
    if choice.name == "local":
        return None
    return executor_for(choice).job_run


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _import_handlers(modules: Sequence[str]) -> None:
    """Import "package.module" (or "package.module:function", then call it), as the worker does."""
    for spec in modules:
        module, _, func = spec.partition(":")
        loaded = importlib.import_module(module)
        if func:
            getattr(loaded, func)()


class WorkerHandle:
    """A job running in a worker process; events arrive as JSON lines on its stdout,
    and pause / resume / cancel go to its stdin."""

    def __init__(self, job_id: str, store_path: Path, imports: Sequence[str],
                 on_event: EventCallback | None) -> None:
        self.job_id = job_id
        self.on_event = on_event
        self.summary: JobSummary | None = None
        self.error: BaseException | None = None
        cmd = [sys.executable, "-m", "engine.jobs.worker", "--store", str(store_path),
               "--job-id", job_id]
        for module in imports:
            cmd += ["--import", module]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            event = event_from_dict(data)
            if event.kind in ("finished", "cancelled") and isinstance(event.result, JobSummary):
                self.summary = event.result
            if data.get("error"):
                self.error = OculaError(data["error"])
            if self.on_event is not None and event.kind:
                self.on_event(event)

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)
            del self._stderr[:-50]

    def _send(self, command: str) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the worker has already exited

    def cancel(self) -> None:
        self._send("cancel")

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def kill(self) -> None:
        self.process.kill()

    @property
    def done(self) -> bool:
        return self.process.poll() is not None

    def wait(self, timeout: float | None = None) -> JobSummary | None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=5)
        if self.error is not None:
            raise self.error
        if code != 0 and self.summary is None:
            tail = "".join(self._stderr[-10:]).strip()
            raise OculaError(f"job worker for {self.job_id} exited with code {code}"
                             + (f": {tail}" if tail else "") + ". Resume the job to continue.")
        return self.summary


# -- events over a pipe --------------------------------------------------------------------------


def event_to_dict(event: JobEvent) -> dict:
    data = {"kind": event.kind, "job_id": event.job_id, "item": event.item, "done": event.done,
            "total": event.total, "rate": event.rate, "eta_s": event.eta_s,
            "message": event.message}
    res = event.result
    if isinstance(res, JobSummary):
        data["summary"] = res.to_dict()
    elif res is not None and hasattr(res, "written"):
        data["written"] = [str(p) for p in res.written]
        data["info"] = res.info
    return data


def event_from_dict(data: dict) -> JobEvent:
    result = None
    if data.get("summary"):
        result = JobSummary.from_dict(data["summary"])
    elif "written" in data:
        from engine.jobs.handler_protocol import ItemResult

        result = ItemResult(written=[Path(p) for p in data["written"]], info=data.get("info", {}))
    return JobEvent(kind=data.get("kind", ""), job_id=data.get("job_id", ""),
                    item=data.get("item", ""), done=data.get("done", 0),
                    total=data.get("total", 0), rate=data.get("rate", 0.0),
                    eta_s=data.get("eta_s"), message=data.get("message", ""), result=result)


__all__ = [
    "JobHandle",
    "JobExecutor",
    "LocalHandle",
    "LocalJobExecutor",
    "WorkerHandle",
    "executor_for",
    "job_run_for",
    "resume_job",
    "run_job",
]
