"""ONNX Runtime session settings chosen per model by measurement, and recorded.

What matters on a CPU differs per graph: the graph optimisation level (ORT_ENABLE_ALL adds
NCHWc layout transforms that help conv nets and sometimes hurt others), the intra-op thread
count (physical cores; SMT siblings share the FPU), the memory arena, and IOBinding (outputs
written into buffers bound up front). `tune_model` times a few candidates on the model's own
sample input (coordinate search from the default: each setting is changed alone, and kept
only when it wins by more than the noise margin) and writes the winner to a small JSON file
under `app_home()/onnx-tuning/`, keyed by the model file's SHA-256. `settings_for` reads it
back at session creation; it is ignored when it was measured on another CPU count or
onnxruntime version. An explicit user choice (OCULA_ONNX_THREADS) always wins over the record.

Tuning runs at `ocula models optimize` time (engine.export_onnx) and, when OCULA_ONNX_TUNE=1,
on the first load of a model that has no record.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import paths
from engine.cpu import (  # noqa: F401 — physical_cores is part of this module's API
    MAX_THREADS as _MAX_THREADS,
    _allowed_cpus,
    physical_cores,
    user_thread_count,
)
from engine.errors import OculaError

if TYPE_CHECKING:  # onnxruntime is an extra; counting cores (video jobs) must not need it
    import onnxruntime as ort

# Our names → onnxruntime.GraphOptimizationLevel members.
OPT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
NOISE_MARGIN = 0.03  # a candidate must be this much faster than the incumbent to replace it
# Turning the memory arena off must win by more: it saves memory, not time, and its cost
# grows with the input (SegFormer-B0 512²: 1.45× slower without it) while a small sample
# can show it a few per cent ahead by chance.
ARENA_OFF_MARGIN = 0.10
RECORD_VERSION = 1


# -- settings -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    graph_optimization: str = "all"  # a key of OPT_LEVELS
    intra_op_threads: int = 1
    cpu_mem_arena: bool = True
    io_binding: bool = False

    def label(self) -> str:
        return (f"opt={self.graph_optimization} threads={self.intra_op_threads} "
                f"arena={'on' if self.cpu_mem_arena else 'off'} "
                f"iobinding={'on' if self.io_binding else 'off'}")

    def session_options(self) -> ort.SessionOptions:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   OPT_LEVELS[self.graph_optimization])
        options.enable_cpu_mem_arena = self.cpu_mem_arena
        options.log_severity_level = 3
        return options


def default_settings() -> SessionSettings:
    return SessionSettings(intra_op_threads=min(physical_cores(), _MAX_THREADS))


def with_user_choices(settings: SessionSettings) -> SessionSettings:
    threads = user_thread_count()
    return dataclasses.replace(settings, intra_op_threads=threads) if threads else settings


# Settings and file of each live session (IOBinding is a way of running, not an option).
_APPLIED: weakref.WeakKeyDictionary[ort.InferenceSession, tuple[SessionSettings, Path]] = \
    weakref.WeakKeyDictionary()


def remember(session: ort.InferenceSession, settings: SessionSettings, path: Path) -> None:
    _APPLIED[session] = (settings, Path(path))


def applied_settings(session: ort.InferenceSession) -> SessionSettings | None:
    found = _APPLIED.get(session)
    return found[0] if found else None


def with_threads(session: ort.InferenceSession, threads: int) -> ort.InferenceSession | None:
    """A CPU session like `session` with `threads` intra-op threads (None: not ours to
    remake, or already so). The user's OCULA_ONNX_THREADS still wins."""
    found = _APPLIED.get(session)
    if found is None or session.get_providers()[0] != "CPUExecutionProvider":
        return None
    import onnxruntime as ort

    settings, path = found
    wanted = with_user_choices(dataclasses.replace(settings, intra_op_threads=threads))
    if wanted == settings:
        return None
    fresh = ort.InferenceSession(str(path), sess_options=wanted.session_options(),
                                 providers=["CPUExecutionProvider"])
    remember(fresh, wanted, path)
    return fresh


def run_bound(session: ort.InferenceSession, names: list[str],
              feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """session.run through an IOBinding (inputs bound in place, outputs allocated by ORT)."""
    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    for name in names:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


# -- records --------------------------------------------------------------------------------


def tuning_dir() -> Path:
    return paths.app_home() / "onnx-tuning"


def _machine() -> dict[str, Any]:
    import onnxruntime as ort

    return {"physical_cores": physical_cores(), "onnxruntime": ort.__version__,
            "cpu": platform.processor() or platform.machine()}


def model_hash(path: Path) -> str:
    """SHA-256 of the graph file, memoised by (path, size, mtime) in the tuning folder."""
    path = Path(path).resolve()
    stat = path.stat()
    index_path = tuning_dir() / "index.json"
    stamp = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if stamp in index:
        return str(index[stamp])
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    index = {k: v for k, v in index.items() if Path(k.rsplit("|", 2)[0]).exists()}
    index[stamp] = digest.hexdigest()
    try:
        _write_json(index_path, index)
    except OSError:
        pass  # a read-only home: hash again next time
    return index[stamp]


def record_path(path: Path) -> Path:
    return tuning_dir() / f"{model_hash(path)[:24]}.json"


def _write_json(target: Path, data: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    part.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(part, target)


def read_record(path: Path) -> dict[str, Any] | None:
    """The recorded tuning of `path` measured on this machine, or None."""
    try:  # a record that cannot be read is the same as none: the defaults serve
        data = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("version") != RECORD_VERSION or data.get("machine") != _machine():
        return None  # measured elsewhere (another CPU count / onnxruntime): not ours to reuse
    return data


def settings_for(path: Path) -> SessionSettings:
    """What a session for `path` is created with: the recorded choice for this machine (or
    the defaults), then the user's explicit choices on top; tuned on the spot when
    OCULA_ONNX_TUNE=1 and nothing is recorded."""
    record = read_record(path)
    if record is None and os.environ.get("OCULA_ONNX_TUNE", "").strip() == "1":
        try:
            record = tune_model(path)
        except TuningError:
            record = None  # a graph we cannot make a sample for runs with the defaults
    base = SessionSettings(**record["settings"]) if record else default_settings()
    return with_user_choices(base)


# -- measurement ----------------------------------------------------------------------------

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
          "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
          "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


class TuningError(OculaError):
    """A model could not be timed (no sample input could be made for its graph)."""


def sample_feed(session: ort.InferenceSession, *, image_size: int = 224,
                seed: int = 0) -> dict[str, np.ndarray]:
    """One input per graph input: batch 1, free image sides `image_size`, other free
    dimensions 1; images are uniform noise, integer inputs ones."""
    rng = np.random.default_rng(seed)
    feed = {}
    for graph_input in session.get_inputs():
        dtype = _NUMPY.get(graph_input.type)
        if dtype is None:
            raise TuningError(f"cannot make a sample for input {graph_input.name} "
                              f"({graph_input.type})")
        dims = list(graph_input.shape)
        shape = []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            else:
                shape.append(image_size if len(dims) == 4 and axis >= 2 else 1)
        if np.issubdtype(dtype, np.floating):
            feed[graph_input.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        else:
            feed[graph_input.name] = np.ones(shape, dtype=dtype)
    return feed


def _time_ms(run: Callable[[], Any], *, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return 1000 * min(times)  # the least disturbed run: other processes only add time


def measure(path: Path, settings: SessionSettings, feed: Mapping[str, np.ndarray], *,
            warmup: int = 2, repeats: int = 5) -> float:
    """Milliseconds of one run of `path` under `settings` (best of `repeats`)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), sess_options=settings.session_options(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if settings.io_binding:
        return _time_ms(lambda: run_bound(session, names, feed), warmup=warmup, repeats=repeats)
    return _time_ms(lambda: session.run(names, dict(feed)), warmup=warmup, repeats=repeats)


def _choices(start: SessionSettings) -> dict[str, list[Any]]:
    """The values tried for each setting, one setting at a time, in this order."""
    logical = len(_allowed_cpus())
    return {
        "graph_optimization": ["extended", "basic"],
        # more threads than physical cores (SMT siblings) may help; fewer only ever "wins"
        # while other processes hold the cores, and a record outlives that moment
        "intra_op_threads": [n for n in (min(logical, _MAX_THREADS),)
                             if n > start.intra_op_threads],
        "cpu_mem_arena": [not start.cpu_mem_arena],
        "io_binding": [not start.io_binding],
    }


def tune_model(path: Path, feed: Mapping[str, np.ndarray] | None = None, *,
               warmup: int = 2, repeats: int = 5, image_size: int = 224) -> dict[str, Any]:
    """Time the candidates on `feed` (default: `sample_feed` of the graph with free image
    sides `image_size` — give the size the model really runs at: a setting that wins on
    a small input can lose on the real one), record the fastest, and return the record."""
    import onnxruntime as ort

    path = Path(path)
    start = default_settings()
    if feed is None:
        probe = ort.InferenceSession(str(path), sess_options=start.session_options(),
                                     providers=["CPUExecutionProvider"])
        feed = sample_feed(probe, image_size=image_size)
        del probe
    try:
        best_ms = measure(path, start, feed, warmup=warmup, repeats=repeats)
    except Exception as exc:
        raise TuningError(f"{path.name}: could not be timed on its sample input ({exc})") \
            from exc
    timings = {start.label(): round(best_ms, 3)}
    baseline_ms, best = best_ms, start
    for setting, values in _choices(start).items():
        incumbent = best  # each setting is compared against the best of the earlier ones
        for value in values:
            candidate = dataclasses.replace(incumbent, **{setting: value})
            if candidate.label() in timings:
                continue
            ms = measure(path, candidate, feed, warmup=warmup, repeats=repeats)
            timings[candidate.label()] = round(ms, 3)
            margin = ARENA_OFF_MARGIN if setting == "cpu_mem_arena" and not value \
                else NOISE_MARGIN
            if ms < best_ms * (1 - margin):
                best, best_ms = candidate, ms
    record = {"version": RECORD_VERSION, "file": path.name, "sha256": model_hash(path),
              "machine": _machine(), "settings": dataclasses.asdict(best),
              "baseline_ms": round(baseline_ms, 3), "best_ms": round(best_ms, 3),
              "speedup": round(baseline_ms / best_ms, 3) if best_ms else 1.0,
              "sample_input": {k: list(v.shape) for k, v in feed.items()},
              "measured_ms": timings, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json(record_path(path), record)
    return record
