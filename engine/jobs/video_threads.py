"""How many threads each stage of a video job gets, so decode, model and encode do not fight.

The three stages run at once on the job's threads, and each library starts its own pool
(FFmpeg decoder frame threads, x264's frame threads, torch / OpenCV / onnxruntime intra-op
threads), each sized for the whole machine by default: on a small CPU that is several times
more busy threads than cores, and the slowest stage loses time to the others' spinning and
switching. Here the pipeline's speed is the slowest stage's, so that stage keeps its
library's own count (0 below: sized for the whole machine, e.g. x264's 1.5 threads per
core, which keeps the cores busy while its frame threads wait on each other), and each
other stage gets only the threads it needs to keep up with it:

    threads(stage) = min(cores, ceil(cores × cost(stage) / cost(slowest)))

where cost is the stage's single-thread time per video frame, measured on the video itself
(decode and encode on its first frames before the threads start, the model on its first
group of frames, run single-threaded) and cores are physical cores. The plan is derived,
not tuned: on two cores with a cheap decoder and model and a dearer encoder it gives 1/1/auto,
and the shares grow with the cores and with the other stages' costs.

Priorities: threads alone do not stop the stages fighting. x264's frame threads wait on the
thread that calls it, and when decode and model threads are runnable at the same priority
the scheduler shares the cores evenly, so the slowest stage loses turns it cannot make up.
On Linux each stage cheaper than the slowest therefore runs its thread at a lower priority
(nice +10 over the job's, `lower_thread_priority`): the slowest stage gets the cores
first and the cheaper ones fill the time it leaves. Only the stages' own threads change
(a thread may lower its own priority but not raise it back); the caller's thread does not.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.media.video import EncodeSettings, SegmentWriter, decode_frames, even_size

CALIBRATION_FRAMES = 8  # decoded (cheap) for the decoder's cost
ENCODE_CALIBRATION_FRAMES = 4
YIELD_NICE = 10  # how much lower than the job's priority the cheaper stages' threads run


@dataclass
class StageCosts:
    """Single-thread milliseconds per video frame (0: the stage does not run)."""

    decode_ms: float = 0.0
    model_ms: float = 0.0
    encode_ms: float = 0.0


@dataclass
class ThreadPlan:
    cores: int
    decode: int
    model: int
    encode: int
    costs: StageCosts

    def describe(self) -> str:
        c = self.costs

        def n(threads: int) -> str:
            return str(threads) if threads else "auto"

        lower = [stage for stage in ("decode", "model", "encode") if self.yields(stage)]
        return (f"{self.cores} cores: decode {n(self.decode)} ({c.decode_ms:.1f} ms/frame), "
                f"model {n(self.model)} ({c.model_ms:.1f} ms), encode {n(self.encode)} "
                f"({c.encode_ms:.1f} ms)"
                + (f"; lower priority: {', '.join(lower)}" if lower else ""))

    def yields(self, stage: str) -> bool:
        """Whether `stage` ("decode", "model" or "encode") is cheaper than the slowest stage
        measured so far (a stage not measured yet, cost 0, does not yield)."""
        costs = {"decode": self.costs.decode_ms, "model": self.costs.model_ms,
                 "encode": self.costs.encode_ms}
        return 0 < costs[stage] < max(costs.values())


def thread_nice() -> int | None:
    """The calling thread's nice value (Linux; None where threads have no nice of their own)."""
    if not sys.platform.startswith("linux"):
        return None
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def lower_thread_priority(by: int = YIELD_NICE) -> int | None:
    """Lower the calling thread's priority by `by` nice steps (Linux, where setpriority on a
    thread id applies to that thread only) and return its nice value read back; None where
    it is not done (macOS and Windows: setpriority there is per process, or absent)."""
    if not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except OSError:
        return None
    return os.getpriority(os.PRIO_PROCESS, tid)


def plan_threads(cores: int, costs: StageCosts) -> ThreadPlan:
    """The slowest stage keeps its library's count (0); each other stage the share of the
    cores that keeps it level with the slowest (at least 1)."""
    cores = max(1, cores)
    slowest = max(costs.decode_ms, costs.model_ms, costs.encode_ms)

    def share(cost: float) -> int:
        if slowest <= 0 or cost <= 0:
            return 1
        if cost >= slowest:
            return 0
        return max(1, min(cores, math.ceil(cores * cost / slowest - 1e-9)))

    return ThreadPlan(cores, share(costs.decode_ms), share(costs.model_ms),
                      share(costs.encode_ms), costs)


def measure_decode_ms(path: str | Path, *, start_s: float | None = None,
                      frames: int = CALIBRATION_FRAMES) -> tuple[float, list[np.ndarray]]:
    """Single-thread decode time per frame on the video's first frames, and those frames."""
    arrays: list[np.ndarray] = []
    began = time.perf_counter()
    for frame in decode_frames(path, start_s=start_s, threads=1):
        arrays.append(frame.array)
        if len(arrays) == frames:
            break
    elapsed = time.perf_counter() - began
    return (1000 * elapsed / len(arrays) if arrays else 0.0), arrays


def measure_encode_ms(arrays: list[np.ndarray], settings: EncodeSettings,
                      scratch: Path, *, frames: int = ENCODE_CALIBRATION_FRAMES) -> float:
    """Single-thread encode time per frame of `arrays` at full size, with the job's encoder
    settings. Timed on a centre crop of a quarter of the area (written to `scratch`, then
    deleted) and scaled by the area: the encoder's cost grows with the pixels, and the
    calibration must stay a small part of a short video's time."""
    if not arrays:
        return 0.0
    h, w = arrays[0].shape[:2]
    ch, cw = max(16, h // 2), max(16, w // 2)
    top, left = (h - min(ch, h)) // 2, (w - min(cw, w)) // 2
    pictures = [even_size(np.ascontiguousarray(a[top:top + ch, left:left + cw]))
                for a in arrays[:frames]]
    ph, pw = pictures[0].shape[:2]
    trial = dataclasses.replace(settings, width=pw, height=ph, threads=1)
    began = time.perf_counter()
    writer = SegmentWriter(scratch, trial)
    try:
        for i, picture in enumerate(pictures):
            writer.write(picture, i)
        writer.close()
    finally:
        writer.abort()
        scratch.unlink(missing_ok=True)
    per_frame = 1000 * (time.perf_counter() - began) / len(pictures)
    return per_frame * (h * w) / (ph * pw)


# -- the model's threads --------------------------------------------------------------------
# Each knob: (name, read the current count or None when absent, set a count). Only libraries
# already imported are touched: an ONNX job must not import torch for this.


def _torch_get(_: Any) -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _torch_set(_: Any, n: int) -> None:
    sys.modules["torch"].set_num_threads(n)


def _cv2_get(_: Any) -> int | None:
    cv2 = sys.modules.get("cv2")
    return cv2.getNumThreads() if cv2 is not None and hasattr(cv2, "getNumThreads") else None


def _cv2_set(_: Any, n: int) -> None:
    sys.modules["cv2"].setNumThreads(n)


def _onnx_runner(handler: Any) -> Any:
    runner = getattr(handler, "runner", None)
    return runner if hasattr(runner, "intra_op_threads") else None


def _ort_get(handler: Any) -> int | None:
    runner = _onnx_runner(handler)
    return runner.intra_op_threads() if runner is not None else None


def _ort_set(handler: Any, n: int) -> None:
    _onnx_runner(handler).set_intra_op_threads(n)


MODEL_THREAD_KNOBS: dict[str, tuple[Callable[[Any], int | None], Callable[[Any, int], None]]] = {
    "torch": (_torch_get, _torch_set),
    "opencv": (_cv2_get, _cv2_set),
    "onnxruntime": (_ort_get, _ort_set),
}
# Cheap to change (a pool resize); onnxruntime's needs new sessions, so it is changed only
# once, to the plan, and the model is timed at its current count instead.
CHEAP_KNOBS = ("torch", "opencv")


class ModelThreads:
    """Sets the model libraries' thread counts for one video and puts them back after."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.saved: dict[str, int] = {}
        for name, (get, _) in MODEL_THREAD_KNOBS.items():
            current = get(handler)
            if current is not None:
                self.saved[name] = current

    def current(self) -> dict[str, int]:
        found = {}
        for name, (get, _) in MODEL_THREAD_KNOBS.items():
            value = get(self.handler)
            if value is not None:
                found[name] = value
        return found

    def set(self, n: int, names: tuple[str, ...] | None = None) -> None:
        """`n` threads for each library (0: back to the count each had before the job)."""
        if n <= 0:
            self.restore()
            return
        for name in names or tuple(self.saved):
            if name in self.saved and MODEL_THREAD_KNOBS[name][0](self.handler) != n:
                MODEL_THREAD_KNOBS[name][1](self.handler, n)

    def single_thread_scale(self) -> int:
        """How many threads the model's time was measured with: ORT keeps its count while
        the cheap knobs are at 1, so its time × threads bounds the single-thread cost."""
        return int(self.current().get("onnxruntime", 1))

    def restore(self) -> None:
        for name, n in self.saved.items():
            if MODEL_THREAD_KNOBS[name][0](self.handler) != n:
                MODEL_THREAD_KNOBS[name][1](self.handler, n)
