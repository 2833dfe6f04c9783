"""Work-around for reference-count bugs of PySide6 6.12.0 on Python < 3.12.

Measured here with PySide6 6.12.0 on CPython 3.11:
- every call from C++ into Python (a slot run by a Qt signal, a virtual such as
  `resizeEvent`, `QRunnable.run`) drops one reference to `None`;
- every `SignalInstance.emit()` from Python drops one reference to `True`.
Python 3.12 made None/True/False immortal, so there the binding's missing
increfs are harmless; on 3.11 the count reaches zero after a few thousand
callbacks and the interpreter aborts ("none_dealloc: deallocating None").

`install()` measures both leaks and, only if one is present, gives None, True
and False a reference count so large it can never reach zero, which is what
Python 3.12 does for them. These objects are never freed anyway, so nothing else
changes. Installed when the `desktop` package is imported.
"""
from __future__ import annotations

import ctypes
import sys

_HEADROOM = 1 << 40  # at a billion leaked references per second: twelve days
installed = False


def _leaks() -> tuple[int, int]:
    """(None references lost by 8 C++->Python calls, True references lost by 8 emits)."""
    from PySide6.QtCore import QObject, Signal

    class Probe(QObject):
        ping = Signal()

    probe = Probe()
    probe.objectNameChanged.connect(lambda name: None)
    probe.ping.connect(lambda: None)
    none_before = sys.getrefcount(None)
    for i in range(8):
        probe.setObjectName(f"probe{i}")  # C++ emits, Python slot runs
    none_lost = none_before - sys.getrefcount(None)
    true_before = sys.getrefcount(True)
    for _ in range(8):
        probe.ping.emit()
    true_lost = true_before - sys.getrefcount(True)
    return none_lost, true_lost


def _add_references(obj: object, count: int) -> None:
    # ob_refcnt is the first field of every CPython object (release builds)
    refcnt = ctypes.c_ssize_t.from_address(id(obj))
    refcnt.value += count


def install() -> bool:
    """Apply the fix if this binding leaks; return whether it was needed."""
    global installed
    if installed or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return installed
    none_lost, true_lost = _leaks()
    if none_lost >= 8 or true_lost >= 8:
        for singleton in (None, True, False):
            _add_references(singleton, _HEADROOM)
        installed = True
    return installed
