"""One job per output folder: a lock file naming the owning job and its process.

Two jobs writing into one folder would overwrite each other's files (the output names
are reserved per job), so a job takes `.ocula.lock` in its output folder before it
writes anything: created with O_EXCL (atomic, also on network shares that honour it),
holding the job id, pid and host. A second job into a folder owned by a live job fails
at once, naming that job. A lock whose process is gone (a killed job) is taken over,
and the taker says so; the same job resumed takes its own lock back. The lock is removed
when the job stops (finished, cancelled or failed).
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from engine.errors import InputError
from engine.jobs.processes import process_alive

LOCK_NAME = ".ocula.lock"
_TAKEOVER_SUFFIX = ".takeover"
_TAKEOVER_STALE_S = 10.0


class OutputFolderBusy(InputError):
    """The output folder belongs to another job that is still running."""

    def __init__(self, folder: Path, other_job: str, pid: int | None) -> None:
        where = f" (process {pid})" if pid else ""
        super().__init__(
            f"{folder} is in use by job '{other_job}'{where}: two jobs writing into one "
            f"folder would overwrite each other's files. Choose another --out, or wait for "
            f"that job to finish.")
        self.folder = folder
        self.other_job = other_job
        self.pid = pid


def read_lock(folder: Path) -> dict | None:
    """The lock's contents ({"job_id", "pid", "host", "created"}), None if unlocked."""
    try:
        data = json.loads((Path(folder) / LOCK_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged: treated as held by an unknown job
    return data if isinstance(data, dict) else {}


def _owner_alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return True  # unreadable: do not take it over on a guess
    if owner.get("host") not in (None, socket.gethostname()):
        return True  # another machine's job on a shared folder: cannot check, keep off
    return process_alive(pid)


def acquire(folder: Path, job_id: str, *,
            notice: Callable[[str], None] | None = None) -> None:
    """Take the folder for `job_id`, or raise OutputFolderBusy naming its owner."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    payload = json.dumps({"job_id": job_id, "pid": os.getpid(), "host": socket.gethostname(),
                          "created": time.time()}).encode("utf-8")
    for _ in range(200):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            return
        owner = read_lock(folder)
        if owner is None:
            continue  # released meanwhile: try again
        if owner == {}:  # another process is writing its lock right now
            if _age(path) <= _TAKEOVER_STALE_S:
                time.sleep(0.02)
                continue
            # else: a damaged lock left long ago: taken over below
        same_job = owner.get("job_id") == job_id
        if same_job and owner.get("pid") in (os.getpid(), None):
            _replace(path, payload)  # our own lock (a resume in this process)
            return
        if owner.get("pid") is not None and _owner_alive(owner):
            if same_job:
                raise InputError(f"job '{job_id}' is still running in process "
                                 f"{owner.get('pid')} and owns {folder}; cancel it there first.")
            raise OutputFolderBusy(folder, str(owner.get("job_id") or "?"), owner.get("pid"))
        if _take_over(path, owner, payload):
            if notice is not None and not same_job:
                notice(f"{folder}: took over the lock of job '{owner.get('job_id') or '?'}', "
                       f"whose process {owner.get('pid') or '?'} is no longer running.")
            return
        time.sleep(0.02)
    raise InputError(f"{folder}: could not lock the output folder ({path} keeps changing). "
                     f"Choose another --out.")


def release(folder: Path, job_id: str) -> None:
    """Remove the lock if this process holds it for `job_id`."""
    owner = read_lock(folder)
    if owner and owner.get("job_id") == job_id and owner.get("pid") == os.getpid():
        try:
            os.unlink(Path(folder) / LOCK_NAME)
        except OSError:
            pass


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _replace(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _take_over(path: Path, stale: dict, payload: bytes) -> bool:
    """Replace a dead owner's lock; one taker at a time (a second O_EXCL file guards it)."""
    guard = path.with_name(path.name + _TAKEOVER_SUFFIX)
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if _age(guard) > _TAKEOVER_STALE_S:  # a taker killed mid-way
            guard.unlink(missing_ok=True)
        return False
    os.close(fd)
    try:
        if read_lock(path.parent) != stale:
            return False  # someone else changed it meanwhile: look again
        _replace(path, payload)
        return True
    finally:
        guard.unlink(missing_ok=True)
