"""Job overhead: run_job on N small images vs the same handler in a bare loop.

    .venv/bin/python tests/benchmarks/bench_jobs.py [--count 1000] [--size 128x96]

The bare loop reads each image and calls the handler with an OutputPlan, writing
the same files; run_job adds input expansion, the SQLite queue, events, read-ahead
and the report. Target: run_job throughput ≥ 0.9 × the bare loop.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.jobs import JobSpec, JobStore, OutputPlan, register_handler, run_job
from engine.media.image import read_image
from tests.fixtures.media import InvertRestore, make_images


def bare_loop(paths: list[Path], src: Path, out_dir: Path) -> float:
    handler = InvertRestore()
    handler.prepare(JobSpec("restore", "invert", [str(src)], str(out_dir)), print, None)
    began = time.perf_counter()
    for path in paths:
        image = read_image(path)
        rel = path.relative_to(src)
        handler.process_image(image, OutputPlan(out_dir, str(rel.with_suffix("")), path))
    return time.perf_counter() - began


def job(src: Path, out_dir: Path, store: JobStore) -> tuple[float, int]:
    events = 0

    def count(_event) -> None:
        nonlocal events
        events += 1

    began = time.perf_counter()
    summary = run_job(JobSpec("restore", "invert", [str(src)], str(out_dir)), on_event=count,
                      store=store)
    elapsed = time.perf_counter() - began
    assert summary.done == summary.total, summary.failures[:3]
    return elapsed, events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", default="128x96")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="ocula-bench-jobs-"))
    os.environ.setdefault("OCULA_HOME", str(work / "home"))
    try:
        src = work / "in"
        paths = make_images(src, args.count, size=(width, height), subfolders=10)
        register_handler("restore", InvertRestore, replace=True)
        store = JobStore(work / "jobs.sqlite")
        bare_times, job_times = [], []
        for n in range(args.repeat):  # interleaved, best of N: the machine is shared
            bare_times.append(bare_loop(paths, src, work / f"bare{n}"))
            elapsed, events = job(src, work / f"job{n}", store)
            job_times.append(elapsed)
        bare, run = min(bare_times), min(job_times)
        print(f"{args.count} images {width}x{height}, best of {args.repeat}")
        print(f"bare loop : {bare:6.2f} s  {args.count / bare:8.1f} images/s")
        print(f"run_job   : {run:6.2f} s  {args.count / run:8.1f} images/s  ({events} events)")
        print(f"ratio     : {bare / run:.2f}  (target ≥ 0.9)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
