"""Batch jobs on a Ray cluster, with the same resumable job semantics as a local run.

    ocula detect photos/ --model rtdetr-r18 --out det/ --executor ray [--address auto]

The driver (this process) is the local job run (engine.jobs.job_loop.JobRun) with one
step replaced: instead of calling the task handler, it hands batches of queued inputs
to Ray actors (engine.jobs.ray_worker.JobWorker), each holding one model replica
loaded once. Everything else stays the driver's: the SQLite job store (the one source
of truth: "running" marks, outcomes, one commit per batch), the output files (written
atomically here from the bytes a worker returns), events, the batch files and the
report. So a job started on Ray resumes locally and vice versa, and the files are
byte-for-byte those of a local run with the same threads per model.

Faults: a worker that dies mid-batch (killed, out of memory, its node lost) has its
batch requeued for another worker and is replaced; nothing it did reaches the output
folder, and every input is recorded once. An input is failed after MAX_ATTEMPTS
deaths. A model that cannot load is one error when no worker loads it, else one note.

Ray is optional (`pip install 'ocula[cluster]'`) and imported only here, on use.
Inputs: local paths, which every worker must see at the same path (one machine, or a
shared file system), and fsspec URLs. Videos in a Ray job run here, after its images,
through the local video pipeline (it checkpoints segments in the job store).
"""
from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from engine.errors import OculaError, UsageError
from engine.events import CancelToken
from engine.jobs.executors import LocalJobExecutor
from engine.jobs.handler_protocol import ItemResult, get_handler
from engine.jobs.job_events import EventCallback, PauseSource
from engine.jobs.job_loop import JobRun, _no_space
from engine.jobs.ray_worker import THREAD_ENV, BatchOutcome, JobWorker, WorkerResult
from engine.jobs.spec import ExecutorChoice
from engine.jobs.store import ItemRecord, JobStore
from engine.media.image import atomic_write_bytes
from engine.settings import Settings

RAY_MISSING = ("The Ray executor needs Ray, which is not installed: "
               "pip install 'ocula[cluster]' (or: pip install 'ray[client]>=2.40').")
MAX_ATTEMPTS = 3  # deaths of a worker while it held an input, before that input fails
IN_FLIGHT_PER_WORKER = 2  # one batch running, one queued: no idle gap while the driver writes
LOCAL_ENV_PREFIXES = ("OCULA_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_")
_STATUS_EVERY_S = 1.0
_WAIT_S = 0.1


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UsageError(RAY_MISSING) from exc
    return ray


class RayJobExecutor(LocalJobExecutor):
    """JobExecutor on Ray: the handles and modes of LocalJobExecutor ("thread", "inline",
    "deferred"), the driver loop where the handle runs, the models on Ray workers."""

    def __init__(self, store: JobStore | None = None, *, choice: ExecutorChoice | None = None,
                 mode: str = "thread", imports: Sequence[str] = ()) -> None:
        if mode == "subprocess":
            raise ValueError("the Ray executor's driver runs in this process: mode must be "
                             "thread, inline or deferred")
        import_ray()  # no Ray: say so now, not when the job starts
        super().__init__(store, mode=mode, imports=imports)
        self.choice = choice or ExecutorChoice(name="ray")
        self.job_run = partial(RayJobRun, choice=self.choice, imports=self.imports)


# -- what the driver tells the front ends ---------------------------------------------------


@dataclass
class WorkerStatus:
    index: int
    pid: int
    host: str
    placement: str
    threads: int
    done: int = 0  # inputs this worker finished (done or failed) in this run
    busy_s: float = 0.0  # time it spent on them
    alive: bool = True

    @property
    def rate(self) -> float:
        """Inputs per second while busy: this replica's throughput."""
        return self.done / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class ClusterStatus:
    """The `result` of the Ray executor's "progress" events: per-worker throughput, and
    the driver's own cost per input (where it becomes the bottleneck)."""

    workers: list[WorkerStatus] = field(default_factory=list)
    retried: int = 0  # inputs requeued after a worker died
    driver_ms_per_item: float = 0.0

    def line(self) -> str:
        alive = [w for w in self.workers if w.alive]
        rates = ", ".join(f"#{w.index} {w.rate:.1f}/s" for w in alive)
        text = f"{len(alive)} Ray worker{'s' if len(alive) != 1 else ''}: {rates}"
        text += f"; driver {self.driver_ms_per_item:.2f} ms/input"
        return text + (f"; {self.retried} retried" if self.retried else "")


# -- the cluster and its workers -------------------------------------------------------------


@dataclass
class _Worker:
    status: WorkerStatus
    actor: Any
    in_flight: int = 0


@dataclass
class _Flight:
    worker: _Worker
    items: list[ItemRecord]
    sent: float


class RayCluster:
    """The Ray runtime a job uses: joined (`address`) or started here (then stopped when
    the job ends). A runtime already initialised in this process is used as it is."""

    def __init__(self, choice: ExecutorChoice) -> None:
        self.ray = import_ray()
        self.choice = choice
        self.started_here = False
        self.local = choice.address is None
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            try:
                if self.local:
                    self.ray.init(address="local", **kwargs)
                else:
                    self.ray.init(address=choice.address, **kwargs)
            except Exception as exc:  # noqa: BLE001 — Ray raises several kinds here
                where = "start a local Ray runtime" if self.local else \
                    f"connect to the Ray cluster at {choice.address}"
                raise OculaError(f"Could not {where}: {exc}. Check `ray status` (a cluster "
                                 f"needs `ray start --head` first) or run with --executor "
                                 f"local.") from exc
            self.started_here = True

    def plan(self) -> tuple[int, int, float]:
        """(workers, threads per worker, GPUs per worker) that fit the cluster."""
        resources = self.ray.cluster_resources()
        cpus = max(1, int(resources.get("CPU", 1)))
        gpus = float(resources.get("GPU", 0))
        choice = self.choice
        per_gpu = choice.gpus_per_worker
        if choice.workers:
            workers = choice.workers
        elif per_gpu:
            workers = max(1, int(gpus // per_gpu))
        else:
            workers = max(1, cpus // (choice.threads_per_worker or 1))
        threads = choice.threads_per_worker or max(1, cpus // workers)
        if workers * threads > cpus:
            raise UsageError(f"{workers} Ray workers × {threads} threads need {workers * threads} "
                             f"CPUs; the cluster has {cpus}. Lower --workers or "
                             f"--threads-per-worker.")
        if per_gpu and workers * per_gpu > gpus:
            raise UsageError(f"{workers} Ray workers × {per_gpu:g} GPU need "
                             f"{workers * per_gpu:g} GPUs; the cluster has {gpus:g}.")
        return workers, threads, per_gpu

    def actor_class(self, threads: int, gpus: float) -> Any:
        env = {name: str(threads) for name in THREAD_ENV}
        if self.local:
            # Workers on this machine see what the driver sees now (Ray's processes keep the
            # environment of their start): the model caches and Ocula's folders, and this
            # checkout (with a test's handler modules) on their path.
            env.update({name: value for name, value in os.environ.items()
                        if name.startswith(LOCAL_ENV_PREFIXES)})
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                                if p)
            env.update({name: str(threads) for name in THREAD_ENV})
        # Ray must not retry on its own: a batch whose worker died is requeued by the driver,
        # which knows what was recorded (nothing is done twice).
        return self.ray.remote(JobWorker).options(
            num_cpus=threads, num_gpus=gpus, max_restarts=0, max_task_retries=0,
            runtime_env={"env_vars": env})

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def _cause(exc: BaseException) -> BaseException:
    """The exception a worker raised, out of Ray's wrapper (RayTaskError.cause)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


# -- the driver --------------------------------------------------------------------------------


class RayJobRun(JobRun):
    """JobRun whose batches run on Ray workers (see the module docstring)."""

    def __init__(self, store: JobStore, job_id: str, on_event: EventCallback | None,
                 cancel: CancelToken | None, pause: PauseSource | None,
                 settings: Settings | None = None, *, choice: ExecutorChoice,
                 imports: Sequence[str] = ()) -> None:
        super().__init__(store, job_id, on_event, cancel, pause, settings)
        self.choice = choice
        self.imports = list(imports)
        self.cluster: RayCluster | None = None
        self.workers: list[_Worker] = []
        self.status = ClusterStatus()
        self.driver_busy_s = 0.0
        self._replacements = 0
        self._loading: dict[Any, tuple[int, Any]] = {}  # replacement replicas still loading
        self._videos = 0  # video inputs pending at the start: they run here, after the images
        self._model_here = False  # the model is loaded in this process too
        self._last_status = 0.0
        self._actor_class: Any = None
        self._worker_args: tuple = ()

    # -- JobRun's seams -----------------------------------------------------------------
    def _prepare(self) -> None:
        pending = list(self.store.pending_items(self.job_id))
        self._videos = sum(1 for item in pending if item.kind == "video")
        images = len(pending) - self._videos
        self.handler = get_handler(self.spec.task)
        prepare_finish = getattr(self.handler, "prepare_finish", None)
        if prepare_finish is not None and images:  # the model stays on the workers
            prepare_finish(self.spec, settings=self.settings)
        else:
            self._prepare_here()
        if not images:
            return  # videos only: nothing for Ray (see _run_videos_here)
        self.cluster = RayCluster(self.choice)
        workers, threads, gpus = self.cluster.plan()
        self._actor_class = self.cluster.actor_class(threads, gpus)
        self._worker_args = (self.spec.to_toml(), self.settings)
        self._worker_kwargs = {"threads": threads, "imports": self.imports,
                               "inputs_in_output": self._inputs_in_output()}
        self._start_workers(workers)

    def _release(self) -> None:
        self._stop_workers()  # cancel, failure or the end: stop the cluster's work
        if self.cluster is not None:
            self.cluster.close()
        super()._release()

    def _prepare_here(self) -> None:
        self.handler.prepare(self.spec, self.handler_progress, self.cancel,
                             settings=self.settings)
        self._model_here = True

    def _process_all(self) -> None:
        if self.cluster is not None:
            self._process_images()
        if self._videos:
            self._run_videos_here()

    def _run_videos_here(self) -> None:
        """Videos run on this machine, after the images: the video pipeline decodes,
        infers and encodes a clip as one stream and checkpoints its segments in the job
        store, which only the driver touches. The Ray workers go first (their cores and
        memory are this machine's when the runtime is local); the model loads here."""
        self._stop_workers()
        self._notice(f"{self._videos} video input(s) run on this machine (the video pipeline "
                     f"checkpoints in the job store); the images ran on Ray.")
        if not self._model_here:
            self.progress("", self.done, self.total, 0.0, None,
                          f"loading {self.spec.model} here for the videos", force=True)
            self._prepare_here()
        for item in list(self.store.pending_items(self.job_id)):
            if item.kind != "video":
                continue  # an image no Ray worker could finish is already recorded
            self.cancel.raise_if_cancelled()
            self.wait_if_paused()
            self._run_video(item)

    def _stop_workers(self) -> None:
        if self.cluster is None:
            return
        for actor in [w.actor for w in self.workers] + [a for _, a in self._loading.values()]:
            try:
                self.cluster.ray.kill(actor)
            except Exception:  # noqa: BLE001 — already gone
                pass
        self.workers, self._loading = [], {}

    def _process_images(self) -> None:
        ray = self.cluster.ray
        batch_size = int(self.spec.options.batch_size
                         or getattr(self.handler, "batch_size", 1) or 1)
        queued = self._batches(batch_size)
        retry: collections.deque[list[ItemRecord]] = collections.deque()
        attempts: collections.Counter[int] = collections.Counter()
        in_flight: dict[Any, _Flight] = {}
        exhausted = False
        while True:
            self.cancel.raise_if_cancelled()
            self.wait_if_paused()
            busy = time.perf_counter()
            for worker in self._free_slots():
                batch = retry.popleft() if retry else None
                if batch is None and not exhausted:
                    batch = next(queued, None)
                    exhausted = batch is None
                if batch is None:
                    break
                self._flush(mark_running=[item.seq for item in batch])
                ref = worker.actor.run_batch.remote(batch)
                worker.in_flight += 1
                in_flight[ref] = _Flight(worker, batch, time.perf_counter())
            self.driver_busy_s += time.perf_counter() - busy
            if not in_flight:
                if exhausted and not retry:
                    break
                if not self._loading and not any(w.status.alive for w in self.workers):
                    raise OculaError(f"every Ray worker of job {self.job_id} died; resume the "
                                     f"job (`ocula jobs resume {self.job_id}`) to continue.")
            waiting = list(in_flight) + list(self._loading)
            ready, _ = ray.wait(waiting, num_returns=1, timeout=_WAIT_S)
            busy = time.perf_counter()
            for ref in ready:
                if ref in self._loading:
                    self._replacement_loaded(ref)
                    continue
                flight = in_flight.pop(ref)
                flight.worker.in_flight -= 1
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    self._worker_died(flight, exc, retry, attempts)
                    continue
                except ray.exceptions.ObjectLostError as exc:  # the result, not the worker
                    self._requeue(flight, exc, retry, attempts)
                    continue
                except ray.exceptions.RayError as exc:  # the worker raised: the batch failed
                    self._batch_failed(flight, _cause(exc))
                    continue
                self._record_batch(flight, outcome)
            self.driver_busy_s += time.perf_counter() - busy
            self._report_status()
        self._flush()
        self._report_status(force=True)

    # -- workers ------------------------------------------------------------------------
    def _start_workers(self, count: int) -> None:
        """Start `count` replicas and wait until each has loaded the model (or failed to):
        no worker loads it -> one error; some do -> one note, the job goes on."""
        ray = self.cluster.ray
        actors = [self._actor_class.remote(i + 1, *self._worker_args, **self._worker_kwargs)
                  for i in range(count)]
        loads = {actor.load.remote(): (i + 1, actor) for i, actor in enumerate(actors)}
        self.progress("", self.done, self.total, 0.0, None,
                      f"starting {count} Ray worker(s), each loading {self.spec.model}",
                      force=True)
        failures: dict[str, list[int]] = {}
        first_error: BaseException | None = None
        pending = list(loads)
        try:
            while pending:
                self.cancel.raise_if_cancelled()
                ready, pending = ray.wait(pending, num_returns=1, timeout=_WAIT_S)
                for ref in ready:
                    index, actor = loads[ref]
                    try:
                        info = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        error = _cause(exc)
                        first_error = first_error or error
                        failures.setdefault(str(error) or type(error).__name__,
                                            []).append(index)
                        ray.kill(actor)
                        continue
                    self.workers.append(_Worker(WorkerStatus(index=index, **info), actor))
        except BaseException:
            for actor in actors:
                ray.kill(actor)
            raise
        self.workers.sort(key=lambda w: w.status.index)
        self.status.workers = [w.status for w in self.workers]
        if not self.workers:
            assert first_error is not None
            if isinstance(first_error, OculaError):
                raise first_error  # e.g. an unknown model: its own message, once
            raise OculaError(f"the model {self.spec.model} could not be loaded on any of "
                             f"the {count} Ray workers: {first_error}") from first_error
        for message, indexes in failures.items():
            self._notice(f"{len(indexes)} of {count} Ray workers could not load the model "
                         f"(worker {', '.join(map(str, indexes))}): {message}; the job goes on "
                         f"with {len(self.workers)}.")
        placements = sorted({w.status.placement for w in self.workers})
        self.progress("", self.done, self.total, 0.0, None,
                      f"{len(self.workers)} Ray worker(s) ready ({', '.join(placements)})",
                      force=True)

    def _free_slots(self) -> Iterator[_Worker]:
        """Workers with room for another batch, least loaded first."""
        for _ in range(IN_FLIGHT_PER_WORKER):
            for worker in self.workers:
                if worker.status.alive and worker.in_flight < IN_FLIGHT_PER_WORKER:
                    yield worker

    def _worker_died(self, flight: _Flight, exc: BaseException,
                     retry: collections.deque, attempts: collections.Counter) -> None:
        worker = flight.worker
        if worker.status.alive:
            worker.status.alive = False
            self._notice(f"Ray worker #{worker.status.index} (pid {worker.status.pid} on "
                         f"{worker.status.host}) died: {type(exc).__name__}; its inputs are "
                         f"retried on another worker.")
            self._replace(worker)
        self._requeue(flight, exc, retry, attempts)

    def _requeue(self, flight: _Flight, exc: BaseException,
                 retry: collections.deque, attempts: collections.Counter) -> None:
        """The batch's result is lost: its inputs go back in the queue (each at most
        MAX_ATTEMPTS times; their "running" mark and no files: nothing to undo)."""
        again = []
        for item in flight.items:
            attempts[item.seq] += 1
            if attempts[item.seq] >= MAX_ATTEMPTS:
                now = time.time()
                self._record_failure(item, f"{item.path}: the Ray worker processing it died "
                                     f"{attempts[item.seq]} times", now, now)
            else:
                again.append(item)
        if again:
            self.status.retried += len(again)
            retry.append(again)

    def _replace(self, dead: _Worker) -> None:
        """A fresh replica in place of a dead one (bounded: a model that kills its worker
        every time must not respawn forever)."""
        if self._replacements >= MAX_ATTEMPTS * max(1, len(self.workers)):
            return
        self._replacements += 1
        actor = self._actor_class.remote(dead.status.index, *self._worker_args,
                                         **self._worker_kwargs)
        self._loading[actor.load.remote()] = (dead.status.index, actor)  # the others go on

    def _replacement_loaded(self, ref: Any) -> None:
        ray = self.cluster.ray
        index, actor = self._loading.pop(ref)
        try:
            info = ray.get(ref)
        except ray.exceptions.RayError as exc:
            self._notice(f"a new Ray worker could not load the model: {_cause(exc)}")
            ray.kill(actor)
            return
        status = WorkerStatus(index=index, **info)
        self.workers.append(_Worker(status, actor))
        self.status.workers.append(status)

    # -- outcomes -------------------------------------------------------------------------
    def _record_batch(self, flight: _Flight, outcome: BatchOutcome) -> None:
        status = flight.worker.status
        status.done += len(outcome.items)
        status.busy_s += outcome.compute_s
        finished = time.time()
        began = finished - outcome.compute_s
        by_seq = {item.seq: item for item in flight.items}
        for result in outcome.items:
            item = by_seq[result.seq]
            if result.error is not None:
                self._record_failure(item, result.error, began, finished)
                continue
            plan = self._plan(item)
            try:
                written = self._write(result.files)
            except OSError as exc:
                full = _no_space(exc)
                self._discard([plan])
                if full is not None:
                    raise self._disk_full(full, f"writing {item.path}") from exc
                self._record_failure(item, f"{item.path}: cannot write its outputs "
                                     f"({exc.strerror or exc})", began, finished)
                continue
            plan.written = list(written)
            res = ItemResult(result=WorkerResult(notes=result.notes), written=written,
                             info=result.info)
            self._record_success(item, plan, res, began, finished)

    def _write(self, files: list[tuple[str, bytes]]) -> list[Path]:
        written = []
        for rel, data in files:
            target = self.output_dir / rel
            atomic_write_bytes(target, data)
            written.append(target)
        return written

    def _batch_failed(self, flight: _Flight, error: BaseException) -> None:
        now = time.time()
        for item in flight.items:
            self._record_failure(item, f"{item.path}: the Ray worker failed on its batch "
                                 f"({type(error).__name__}: {error})", now, now)

    def _report_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < _STATUS_EVERY_S:
            return
        self._last_status = now
        self.status.driver_ms_per_item = 1000 * self.driver_busy_s / max(1, self.processed_now)
        rate, eta = self.rate_eta()
        self.emit("progress", rate=rate, eta_s=eta, message=self.status.line(),
                  result=self.status)

    # -- helpers ------------------------------------------------------------------------
    def _batches(self, size: int) -> Iterator[list[ItemRecord]]:
        batch: list[ItemRecord] = []
        for item in self.store.pending_items(self.job_id):
            if item.kind == "video":
                continue  # after the images, on this machine (_run_videos_here)
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _inputs_in_output(self) -> frozenset[str]:
        """This job's inputs inside its output folder (an output never takes their names)."""
        root = os.path.abspath(self.output_dir) + os.sep
        return frozenset(item.path for item in self.store.job_items(self.job_id)
                         if os.path.abspath(item.path).startswith(root))


def ray_job_run(choice: ExecutorChoice, imports: Sequence[str] = ()) -> Callable[..., RayJobRun]:
    """A `job_run` for run_job / resume_job that runs on Ray as `choice` says."""
    import_ray()
    return partial(RayJobRun, choice=choice, imports=list(imports))
