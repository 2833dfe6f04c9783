"""`ocula --help` and `ocula doctor` start-up time (target < 1.5 s each on 2 cores).

Run: .venv/bin/python tests/benchmarks/bench_cli.py  — prints median of 5 runs and which
heavy modules (torch, transformers) each command imported.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

OCULA = [sys.executable, "-m", "engine.cli"]
PROBE = ("import sys, runpy; sys.argv=['ocula', *{args!r}];\n"
         "try:\n    runpy.run_module('engine.cli', run_name='__main__')\n"
         "except SystemExit: pass\n"
         "print('\\nHEAVY=' + ','.join(m for m in ('torch','transformers','onnxruntime','PySide6') "
         "if m in sys.modules), file=sys.stderr)")


def time_command(args: list[str], runs: int = 5) -> tuple[float, str]:
    times, heavy = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args)],
                              capture_output=True, text=True, cwd=Path(__file__).parents[2])
        times.append(time.perf_counter() - start)
        heavy = proc.stderr.strip().rsplit("HEAVY=", 1)[-1]
    return statistics.median(times), heavy


def main() -> None:
    results = {}
    for name, args in {"--help": ["--help"], "doctor": ["doctor"],
                       "models list": ["models", "list"]}.items():
        median, heavy = time_command(args)
        results[name] = {"median_s": round(median, 3), "heavy_imports": heavy or "none"}
        print(f"ocula {name:12} {median:6.3f} s   heavy imports: {heavy or 'none'}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
