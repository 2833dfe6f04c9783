"""Whether a process still runs: the one check the job store (interrupted jobs), the
job loop (resume) and the output-folder lock (stale owners) share."""
from __future__ import annotations

import os


def process_alive(pid: int | None) -> bool:
    """Whether process `pid` is running (a zombie is not). On Windows, unknown: True."""
    if not pid:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl+C on Windows: ask the kernel
        return _windows_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a killed child stays a zombie until its parent reaps it: it is not running
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _windows_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
    finally:
        kernel32.CloseHandle(handle)
