"""Desktop start-up: launch `ocula` (no command) until the main window is shown.

Run: .venv/bin/python tests/benchmarks/bench_startup.py [RUNS]
Each run is a fresh process (offscreen Qt, empty app and model folders). The figure
is wall time from process start to the probe line printed by desktop.app once the
event loop has shown the window; the probe also says whether torch / transformers /
onnxruntime were imported by then (they must not be). Target: < 2 s.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = "import sys; from desktop.launcher import main; sys.exit(main([]))"  # what `ocula` runs


def launch_once() -> tuple[float, float, str]:
    """(wall seconds to window shown, in-process seconds from desktop.app import, heavy)."""
    with tempfile.TemporaryDirectory(prefix="ocula-bench-") as home:
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OCULA_STARTUP_PROBE="1",
                   OCULA_HOME=f"{home}/ocula", HF_HOME=f"{home}/hf",
                   XDG_CONFIG_HOME=f"{home}/config")
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        wall, inner, heavy = float("nan"), float("nan"), "?"
        for line in proc.stdout:
            if line.startswith("OCULA_WINDOW_SHOWN"):
                wall = time.perf_counter() - start
                fields = line.split()
                inner = float(fields[1])
                heavy = fields[3].split("=", 1)[1]
                break
        proc.wait(60)
        return wall, inner, heavy


def main(runs: int = 5) -> dict:
    walls, inners, heavies = [], [], set()
    launch_once()  # warm the OS file cache (.pyc files, Qt libraries)
    for _ in range(runs):
        wall, inner, heavy = launch_once()
        walls.append(wall)
        inners.append(inner)
        heavies.add(heavy)
    result = {"runs": runs, "median_s": round(statistics.median(walls), 3),
              "min_s": round(min(walls), 3), "max_s": round(max(walls), 3),
              "in_process_median_s": round(statistics.median(inners), 3),
              "heavy_imports_at_show": sorted(heavies), "cpus": os.cpu_count(),
              "load_avg": round(os.getloadavg()[0], 2)}
    print(f"ocula (desktop) launch to window shown: median {result['median_s']:.3f} s "
          f"(min {result['min_s']:.3f}, max {result['max_s']:.3f}) over {runs} runs; "
          f"heavy imports at show: {', '.join(result['heavy_imports_at_show'])}; "
          f"load average {result['load_avg']} on {result['cpus']} CPUs")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
