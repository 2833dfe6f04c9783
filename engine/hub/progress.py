"""Byte progress for downloads, fed by huggingface_hub's `tqdm_class` hook.

`http_get` reports every chunk it writes through the progress-bar class it is given
(`tqdm_class`, instantiated with total/initial and updated with byte counts). We hand it
a small bar that forwards to a `DownloadTracker`, which emits `Progress` events per file
(`item` = repo-relative file name) and for the whole download (`item` = ""), and stops
the transfer at the next chunk once the cancel token is set.
"""
from __future__ import annotations

import functools
import threading
import time
from typing import Any, Self

from engine.events import CancelToken, Progress, ProgressCallback

STAGE = "download"
# Chunks arrive every 64 KiB; events are sent at most this often (plus each file's
# first and last), so a fast download does not flood the CLI or GUI.
MIN_INTERVAL_S = 0.05


class DownloadTracker:
    """Bytes done per file and overall. Thread-safe: chunks arrive on a download thread."""

    def __init__(self, sizes: dict[str, int | None], progress: ProgressCallback | None,
                 cancel: CancelToken | None, label: str = "") -> None:
        self._sizes = dict(sizes)
        self._done = {name: 0 for name in sizes}
        self._callback = progress
        self._cancel = cancel
        self._label = label
        self._lock = threading.Lock()
        self._last_emit = 0.0
        self.files_done = 0

    @property
    def total(self) -> int | None:
        if any(size is None for size in self._sizes.values()):
            return None
        return sum(self._sizes.values())  # type: ignore[arg-type]

    @property
    def done(self) -> int:
        return sum(self._done.values())

    def set_file(self, name: str, done: int, total: int | None = None) -> None:
        """Absolute position of one file (a resumed file starts at its partial size)."""
        with self._lock:
            if total is not None:
                self._sizes[name] = total
            self._done[name] = max(0, done)
        self._emit(name)

    def advance(self, name: str, nbytes: float) -> None:
        if self._cancel is not None:
            self._cancel.raise_if_cancelled()
        with self._lock:
            self._done[name] = max(0, self._done.get(name, 0) + int(nbytes))
            size = self._sizes.get(name)
            due = (time.monotonic() - self._last_emit >= MIN_INTERVAL_S
                   or (size is not None and self._done[name] >= size))
        if due:
            self._emit(name)

    def finish_file(self, name: str) -> None:
        with self._lock:
            size = self._sizes.get(name)
            if size is not None:
                self._done[name] = size
            self.files_done += 1
        self._emit(name)

    def _emit(self, name: str) -> None:
        if self._callback is None:
            return
        with self._lock:
            self._last_emit = time.monotonic()
            file_done, file_total = self._done.get(name, 0), self._sizes.get(name)
            done, total = self.done, self.total
            message = f"{self._label} {self.files_done}/{len(self._sizes)} files".strip()
        self._callback(Progress(STAGE, file_done, file_total, unit="bytes", item=name))
        self._callback(Progress(STAGE, done, total, unit="bytes", item="", message=message))

    def bar_class(self, name: str) -> Any:
        """A `tqdm_class` for huggingface_hub's `http_get` that reports `name`'s bytes."""
        return functools.partial(_TrackerBar, self, name)


class _TrackerBar:
    """Just enough of tqdm for `http_get`: constructor kwargs, context manager, update()."""

    def __init__(self, tracker: DownloadTracker, name: str, *args: Any, **kwargs: Any) -> None:
        self._tracker = tracker
        self._name = name
        self.total = kwargs.get("total")
        self.n = int(kwargs.get("initial") or 0)
        tracker.set_file(name, self.n, self.total)

    def update(self, n: float | None = 1) -> None:
        n = n or 0
        self.n += int(n)
        self._tracker.advance(self._name, n)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        return None


def quiet_tqdm_class() -> Any:
    """huggingface_hub's tqdm, always disabled (for calls whose bytes we do not track)."""
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    class _QuietTqdm(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _QuietTqdm
