"""The worker side of engine.jobs.ray_executor: one model replica per Ray actor.

`JobWorker` is a plain class (the driver wraps it with `ray.remote`, so this module
imports without Ray). It loads the job's task handler once (`load`), then runs batches
of queued inputs (`run_batch`): each input is decoded here (`read_input`, as a local run
does), the handler computes and writes its files through an OutputPlan into a scratch
folder of this worker (`compute_batch`: the very code a local run uses, so the bytes are
the same), and the files travel back as bytes for the driver to write atomically into
the real output folder. A worker never touches the job store or the output folder, so
a worker killed mid-batch leaves nothing behind.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.jobs.outputs import OutputPlan, _same_file
from engine.jobs.store import ItemRecord

# torch / numpy BLAS / onnxruntime (engine.runtimes, the attention graphs too) / OpenCV
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "OCULA_ONNX_THREADS", "OPENCV_FOR_THREADS_NUM")


@dataclass
class WorkerResult:
    """Stands in for the task's result object, which stays on the worker (a mask or a
    map can be megabytes): its `notes`, which the CLI shows once per job."""

    notes: list[str] = field(default_factory=list)


@dataclass
class ItemOutcome:
    seq: int
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (relative path, content)
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the input failed: the reason, as a local run words it


@dataclass
class BatchOutcome:
    worker: int
    items: list[ItemOutcome]
    compute_s: float  # decode + model + encode on the worker


class ScratchPlan(OutputPlan):
    """Writes under a scratch folder, but chooses names as the real output folder would:
    an output never takes an input's name there (see OutputPlan.path)."""

    def __init__(self, scratch: Path, key: str, input_path: Path, *, real_dir: Path,
                 inputs_in_output: frozenset[str]) -> None:
        super().__init__(scratch, key, input_path)
        self.real_dir = real_dir
        self.inputs_in_output = inputs_in_output

    def _clashes_with_input(self, target: Path) -> bool:
        real = self.real_dir / target.relative_to(self.output_dir)
        if self.input_path is not None and _same_file(real, self.input_path):
            return True
        return os.path.abspath(real) in self.inputs_in_output


class JobWorker:
    """One model replica. `spec_toml`: the job's spec (parsed here, after `imports` have
    registered their handlers, so a handler's own options class applies)."""

    def __init__(self, index: int, spec_toml: str, settings: Any, *, threads: int,
                 imports: Sequence[str], inputs_in_output: frozenset[str]) -> None:
        self.index = index
        self.threads = threads
        for name in THREAD_ENV:  # before the model's libraries start their thread pools
            os.environ[name] = str(threads)
        self.spec_toml = spec_toml
        self.settings = settings
        self.imports = list(imports)
        self.inputs_in_output = inputs_in_output
        self.handler: Any = None
        self.spec: Any = None

    def pid(self) -> int:
        return os.getpid()

    def load(self) -> dict[str, Any]:
        """Load the model once; what really runs it (placement, pid, host) for the driver."""
        import socket

        from engine.events import CancelToken
        from engine.jobs.executors import _import_handlers
        from engine.jobs.handler_protocol import get_handler
        from engine.jobs.spec import JobSpec

        _import_handlers(self.imports)
        self.spec = JobSpec.from_toml(self.spec_toml)
        handler = get_handler(self.spec.task)
        handler.prepare(self.spec, lambda progress: None, CancelToken(), settings=self.settings)
        torch = sys.modules.get("torch")  # imported by the model's runtime, if it uses torch
        if torch is not None:  # OMP_NUM_THREADS was set first; this covers an early import
            torch.set_num_threads(self.threads)
        self.handler = handler
        placement = getattr(handler, "placement", "") or ""
        return {"pid": os.getpid(), "host": socket.gethostname(), "placement": str(placement),
                "threads": self.threads}

    def run_batch(self, items: list[ItemRecord]) -> BatchOutcome:
        from engine.jobs.job_loop import _reason, compute_batch, read_input

        began = time.perf_counter()
        limit = self.spec.options.pixel_limit or self.settings.pixel_limit
        loaded = [read_input(item, limit) for item in items]
        outcomes = {e.item.seq: ItemOutcome(e.item.seq, error=e.error)
                    for e in loaded if e.error is not None}
        good = [e for e in loaded if e.error is None]
        scratch = Path(tempfile.mkdtemp(prefix="ocula-ray-"))
        try:
            real_dir = Path(self.spec.output_dir)
            plans = [ScratchPlan(scratch / str(i), e.item.out_key, Path(e.item.path),
                                 real_dir=real_dir, inputs_in_output=self.inputs_in_output)
                     for i, e in enumerate(good)]
            results = compute_batch(self.handler, [e.image for e in good], plans) if good else []
            for entry, plan, res in zip(good, plans, results):
                seq = entry.item.seq
                if isinstance(res, BaseException):
                    outcomes[seq] = ItemOutcome(seq, error=_reason(entry.item.path, res))
                    continue
                notes = [n for n in getattr(res.result, "notes", None) or ()
                         if isinstance(n, str)]
                outcomes[seq] = ItemOutcome(seq, files=_collect(plan.output_dir, res.written),
                                            info=dict(res.info), notes=notes)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return BatchOutcome(self.index, [outcomes[item.seq] for item in items],
                            time.perf_counter() - began)

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()
            self.handler = None


def _collect(root: Path, written: list[Path]) -> list[tuple[str, bytes]]:
    """Every file under `root` (one input's scratch folder) as (path relative to the
    output folder, bytes): the handler's `written` order first, then any others."""
    ordered = [Path(p) for p in written]
    seen = {os.path.abspath(p) for p in ordered}
    others = sorted(p for p in root.rglob("*") if p.is_file() and os.path.abspath(p) not in seen)
    return [(p.relative_to(root).as_posix(), p.read_bytes()) for p in ordered + others
            if p.is_file()]
