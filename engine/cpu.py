"""CPU facts every layer may need: physical cores this process may use, and the thread
count the user chose for onnxruntime (OCULA_ONNX_THREADS; a Ray worker sets it to its share).

Here, below engine.runtimes and engine.explain, so that every ONNX session the engine opens
— a task's graph (engine.runtimes.session_tuning) or an attention graph (engine.explain) —
takes the same count; one that took onnxruntime's default instead made two 1-thread Ray
replicas run four compute threads on two cores.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

MAX_THREADS = 16  # past ~16 threads, sync costs outweigh gains for one image


# -- cores ----------------------------------------------------------------------------------


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cores_from_sysfs(cpus: set[int], root: Path) -> int:
    cores = set()
    for cpu in cpus:
        topo = root / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            return 0
    return len(cores)


def _cores_from_cpuinfo(cpus: set[int], cpuinfo: Path) -> int:
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0
    cores = set()
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "processor" not in fields or not fields["processor"].isdigit():
            continue
        if int(fields["processor"]) in cpus:
            if "core id" not in fields:
                return 0  # this kernel does not say (some ARM boards): count logical CPUs
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores)


def _cgroup_cpu_limit(root: Path) -> float | None:
    """CPUs allowed by a cgroup quota (containers), None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def physical_cores(*, sysfs: Path = Path("/sys/devices/system/cpu"),
                   cpuinfo: Path = Path("/proc/cpuinfo"),
                   cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Physical cores this process may run on: distinct (package, core) pairs among the CPUs
    of its affinity mask (sysfs topology, else /proc/cpuinfo, else the logical count),
    capped by a cgroup CPU quota when there is one."""
    cpus = _allowed_cpus()
    count = _cores_from_sysfs(cpus, sysfs) or _cores_from_cpuinfo(cpus, cpuinfo) or len(cpus)
    limit = _cgroup_cpu_limit(cgroup)
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


def user_thread_count() -> int | None:
    """OCULA_ONNX_THREADS when set to a positive integer (the user's choice wins)."""
    env = os.environ.get("OCULA_ONNX_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else None


def onnx_cpu_threads() -> int:
    """Intra-op threads for a CPU onnxruntime session: the user's choice, else one per
    physical core (at most MAX_THREADS)."""
    return user_thread_count() or min(physical_cores(), MAX_THREADS)
