"""Video pipeline: end-to-end frames/s vs the slowest stage alone, and peak memory.

    .venv/bin/python tests/benchmarks/bench_video.py [--seconds 10] [--size 1280x720]
        [--fps 30] [--preset veryfast] [--repeats 1] [--memory-minutes 1,10]
        [--memory-size 1280x720] [--memory-fps 30]

Throughput: a generated clip goes through run_job (restore task, a Gaussian-blur
"restoration" handler) and through each stage on its own — decode only, inference
only, encode only (same encoder settings). The pipeline overlaps the three on
threads, so its rate should approach the slowest stage: target ratio ≥ 0.9 (issue 13
item 4). The job sizes each stage's threads (engine.jobs.video_threads); the line
"threads:" shows its plan and the counts read back from the codec contexts and libraries.

Each stage's process CPU time per frame is printed too: on few cores the three stages
together can need more CPU per frame than the cores give at the slowest stage's rate, and
then no thread split reaches 1 — the printed "CPU-bound ceiling" is that limit
(cores ÷ the stages' summed CPU per frame, over the slowest stage's rate).

Memory: for each duration, a clip of that length is made, then a fresh process
renders it and reports its peak RSS (Linux); flat memory means the 10-minute peak
≈ the 1-minute peak.
The clips are made of cheap synthetic frames (moving gradients) encoded fast.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np

from engine.jobs import BaseHandler, ItemResult, JobSpec, JobStore, register_handler, run_job
from engine.jobs.outputs import FrameInfo, FrameOutput
from engine.media.video import EncodeSettings, SegmentWriter, decode_frames, probe, video_encoders
from engine.results import RestoredImage


class BlurRestore(BaseHandler):
    """A stand-in restoration with real per-pixel work: 5×5 Gaussian blur (OpenCV)."""

    def process_image(self, image, out):
        import cv2

        return ItemResult(RestoredImage(cv2.GaussianBlur(image.array, (5, 5), 0), 1,
                                        image.size))


def make_clip(path: Path, seconds: float, size: tuple[int, int], fps: int) -> int:
    import av

    width, height = size
    n = int(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28"}
        audio = out.add_stream("aac", rate=48000, layout="stereo")
        samples_per_frame = 48000 // fps
        for i in range(n):
            # Cheap moving content (so the encoder has work, but generation is fast).
            r = ((xx + 3 * i) & 255).astype(np.uint8)
            g = ((yy + 2 * i) & 255).astype(np.uint8)
            b = np.full_like(r, (i * 5) & 255)
            frame = av.VideoFrame.from_ndarray(np.dstack([r, g, b]), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
            tone = np.zeros((2, samples_per_frame), np.float32)
            af = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
            af.sample_rate, af.pts = 48000, i * samples_per_frame
            out.mux(audio.encode(af))
        out.mux(stream.encode())
        out.mux(audio.encode())
    return n


def stage_decode(path: Path) -> tuple[float, int]:
    began = time.perf_counter()
    n = sum(1 for _ in decode_frames(path))
    return n / (time.perf_counter() - began), n


def sample_frames(path: Path, count: int) -> list[np.ndarray]:
    frames = []
    for frame in decode_frames(path):
        frames.append(frame.array)
        if len(frames) == count:
            break
    return frames


def stage_infer(frames: list[np.ndarray], n: int, out_dir: Path) -> float:
    from PIL import Image

    from engine.media.image import LoadedImage

    handler = BlurRestore()
    began = time.perf_counter()
    for i in range(n):
        arr = frames[i % len(frames)]
        image = LoadedImage(rgb=Image.fromarray(arr), array=arr)
        plan = FrameOutput(out_dir, "x", None, FrameInfo(i, i, i / 30))
        handler.process_batch([image], [plan])
    return n / (time.perf_counter() - began)


def stage_encode(frames: list[np.ndarray], n: int, path: Path, fps: int, preset: str) -> float:
    h, w = frames[0].shape[:2]
    encoder = video_encoders()["h264"]
    settings = EncodeSettings("h264", encoder, w, h, Fraction(1, fps), Fraction(fps),
                              preset=preset)
    began = time.perf_counter()
    writer = SegmentWriter(path, settings)
    for i in range(n):
        writer.write(frames[i % len(frames)], i)
    writer.close()
    return n / (time.perf_counter() - began)


def end_to_end(path: Path, out_dir: Path, store: JobStore, preset: str,
               frames: int) -> tuple[float, dict]:
    register_handler("restore", BlurRestore, replace=True)
    began = time.perf_counter()
    summary = run_job(JobSpec("restore", "blur", [str(path)], str(out_dir),
                              options={"video_preset": preset, "annotations": False}),
                      store=store)
    elapsed = time.perf_counter() - began
    assert summary.done == 1, summary.failures
    (item,) = list(store.job_items(summary.job_id))
    return frames / elapsed, item.info


@contextmanager
def cpu_ms_per_frame(into: list[float], frames: int):
    """Process CPU time (all threads, this process's children excluded) per frame."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    yield
    after = resource.getrusage(resource.RUSAGE_SELF)
    spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    into.append(1000 * spent / frames)


def current_rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(clip: Path, preset: str, work: Path) -> None:
    """Runs in a fresh process: render `clip`, print peak RSS as JSON (the clip is made
    by the parent, so the peak is the job's own)."""
    store = JobStore(work / f"{clip.stem}.sqlite")
    frames = probe(clip).frames
    base = current_rss_mib()
    fps_e2e, _ = end_to_end(clip, work / f"{clip.stem}-out", store, preset, frames)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"frames": frames, "peak_rss_mib": peak, "rss_before_job_mib": base,
                      "fps": fps_e2e}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--preset", default="veryfast", help="x264 preset of the render")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of every stage and the job; each figure is the best "
                             "round (on a shared machine the least disturbed one)")
    parser.add_argument("--memory-minutes", default="1,10",
                        help="durations for the peak-RSS runs; empty to skip")
    parser.add_argument("--memory-size", default=None, help="frame size of the memory runs")
    parser.add_argument("--memory-fps", type=int, default=None, help="frame rate of the memory runs")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.memory_child is not None:
        memory_child(Path(args.memory_child), args.preset, Path(args.work))
        return
    work = Path(tempfile.mkdtemp(prefix="ocula-bench-video-"))
    os.environ.setdefault("OCULA_HOME", str(work / "home"))
    try:
        clip = work / "clip.mp4"
        n = make_clip(clip, args.seconds, size, args.fps)
        info = probe(clip)
        print(f"clip: {info.width}x{info.height} {float(info.fps):.0f} fps, {n} frames, "
              f"render x264 preset {args.preset}, {os.cpu_count()} CPUs")
        frames = sample_frames(clip, 30)
        decode_fps = infer_fps = encode_fps = e2e_fps = 0.0
        cpu = {"decode": [], "inference": [], "encode": [], "end to end": []}
        for round_ in range(args.repeats):  # rounds interleave the stages; best of each
            with cpu_ms_per_frame(cpu["decode"], n):
                decode_fps = max(decode_fps, stage_decode(clip)[0])
            with cpu_ms_per_frame(cpu["inference"], n):
                infer_fps = max(infer_fps, stage_infer(frames, n, work))
            with cpu_ms_per_frame(cpu["encode"], n):
                encode_fps = max(encode_fps, stage_encode(frames, n, work / "enc.mp4",
                                                          args.fps, args.preset))
            with cpu_ms_per_frame(cpu["end to end"], n):
                fps, info_ = end_to_end(clip, work / f"out{round_}",
                                        JobStore(work / f"jobs{round_}.sqlite"), args.preset, n)
            if fps > e2e_fps:
                e2e_fps, item_info = fps, info_
        slowest = min(decode_fps, infer_fps, encode_fps)
        print(f"decode only    : {decode_fps:7.1f} frames/s")
        print(f"inference only : {infer_fps:7.1f} frames/s")
        print(f"encode only    : {encode_fps:7.1f} frames/s")
        print(f"end to end     : {e2e_fps:7.1f} frames/s  (copied {item_info.get('copied_streams')})")
        print(f"ratio to slowest stage: {e2e_fps / slowest:.2f}  (target ≥ 0.9)")
        cores = len(os.sched_getaffinity(0))
        stage_cpu = {k: min(v) for k, v in cpu.items()}
        print("CPU per frame  : " + ", ".join(f"{k} {v:.1f} ms" for k, v in stage_cpu.items()))
        work_ms = stage_cpu["decode"] + stage_cpu["inference"] + stage_cpu["encode"]
        ceiling = 1000 * cores / work_ms / slowest
        print(f"CPU-bound ceiling of the ratio: {min(1.0, ceiling):.2f} ({cores} cores ÷ "
              f"{work_ms:.1f} ms of the three stages' CPU per frame, over the slowest stage)")
        slowest_name = min(("decode", decode_fps), ("inference", infer_fps),
                           ("encode", encode_fps), key=lambda t: t[1])[0]
        got = stage_cpu[slowest_name] * slowest / 1000  # cores the slowest stage got alone
        print(f"  with the {got:.2f} cores the {slowest_name} stage got alone (a shared "
              f"machine): {min(1.0, stage_cpu[slowest_name] / work_ms):.2f}")
        threads = item_info.get("threads") or {}
        print(f"threads: {threads.get('plan', 'library defaults')}; read back: decoder "
              f"{threads.get('decode')}, model {threads.get('model')}, encoder "
              f"{threads.get('encode')}")
        minutes = [float(m) for m in args.memory_minutes.split(",") if m.strip()]
        msize = args.memory_size or args.size
        msize_wh = tuple(int(v) for v in msize.split("x"))
        for m in minutes:
            long_clip = work / f"long{m:g}min.mp4"
            make_clip(long_clip, m * 60, msize_wh, args.memory_fps or args.fps)
            cmd = [sys.executable, __file__, "--memory-child", str(long_clip),
                   "--preset", args.preset, "--work", str(work)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            data = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"peak RSS, {m:g} min of {msize} @ {args.memory_fps or args.fps} fps input: {data['peak_rss_mib']:.0f} MiB "
                  f"(after imports {data['rss_before_job_mib']:.0f} MiB; {data['frames']} "
                  f"frames at {data['fps']:.1f} frames/s)")
            long_clip.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
