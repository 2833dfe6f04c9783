"""Progress reporting and cancellation shared by every long operation.

Engine code takes an optional `progress` callback and an optional `cancel`
token. The CLI renders events as progress bars; the GUI receives them through
desktop/workers.py. Nothing here knows about either front end.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from engine.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """One progress report. `total` is None when unknown."""

    stage: str  # e.g. "download", "load", "infer", "write"
    done: float
    total: float | None = None
    unit: str = "items"  # "bytes", "items", "frames"
    item: str = ""  # file name or input being worked on
    message: str = ""
    time: float = field(default_factory=time.monotonic)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """Thread-safe flag checked at safe points; `raise_if_cancelled` aborts cleanly."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("Cancelled by the user.")


def noop_progress(_: Progress) -> None:
    return None
