"""What a running job tells the front ends, how it is paused, and what it returns."""
from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

EVENT_KINDS = ("started", "progress", "item_done", "item_failed", "paused", "resumed",
               "finished", "cancelled", "partial")  # partial: text still being generated


@dataclass
class JobEvent:
    """One job event. `rate` is items/s (frames/s while a video runs); `eta_s` None if unknown.

    `done`/`total` count inputs; during a video, "progress" events count that
    video's frames (`message` says so) and `item` names the video.
    """

    kind: str
    job_id: str
    item: str = ""
    done: int = 0
    total: int = 0
    rate: float = 0.0
    eta_s: float | None = None
    message: str = ""
    result: Any = None  # ItemResult for item_done; JobSummary for finished/cancelled
    time: float = field(default_factory=time.monotonic)


EventCallback = Callable[[JobEvent], None]


class PauseSource(Protocol):
    def is_set(self) -> bool: ...


class PauseToken:
    """Thread-safe pause flag: set means paused. A threading.Event works the same way
    wherever a PauseToken is accepted (the GUI passes one)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def pause(self) -> None:
        self._event.set()

    def resume(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def paused(self) -> bool:
        return self._event.is_set()


@dataclass
class Failure:
    """Something that failed, as data a front end can show and a report can store.

    For one input of a job: `path` and `reason` (all that the summary's JSON keeps).
    For a whole operation (a job that could not run, a download, a GUI call):
    `from_exception`, which also keeps the exception and its formatted traceback.
    """

    path: str
    reason: str
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    details: str = field(default="", compare=False, repr=False)  # traceback, for a "details" view

    @classmethod
    def from_exception(cls, exc: BaseException, path: str = "") -> Failure:
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(path, str(exc) or type(exc).__name__, exc, details)

    @property
    def message(self) -> str:
        return self.reason


@dataclass
class JobSummary:
    job_id: str
    state: str  # finished | cancelled | failed
    total: int
    done: int
    failed: int
    elapsed_s: float
    output_dir: Path
    failures: list[Failure] = field(default_factory=list)  # the first 1,000; counts are exact
    # every file the job wrote: each input's outputs (queue order), then the job-level files
    files: list[Path] = field(default_factory=list)
    job_files: list[Path] = field(default_factory=list)  # job-level: COCO JSON, JSONL, CSV…
    # per input, in queue order: {"input", "state", "outputs": [paths], "error"}
    items: list[dict[str, Any]] = field(default_factory=list)
    report_json: Path | None = None
    report_html: Path | None = None
    rate: float = 0.0  # items/s over this run
    message: str = ""
    ran: dict[str, Any] = field(default_factory=dict)  # what really ran it (job_loop.ran_with)

    @property
    def cancelled(self) -> bool:
        return self.state == "cancelled"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the CLI's --json output, the worker's pipe)."""
        return {
            "job_id": self.job_id, "state": self.state, "total": self.total, "done": self.done,
            "failed": self.failed, "elapsed_s": self.elapsed_s, "output_dir": str(self.output_dir),
            "failures": [{"path": f.path, "reason": f.reason} for f in self.failures],
            "files": [str(f) for f in self.files],
            "job_files": [str(f) for f in self.job_files],
            "items": self.items,
            "report_json": str(self.report_json) if self.report_json else None,
            "report_html": str(self.report_html) if self.report_html else None,
            "rate": self.rate, "message": self.message, "ran": self.ran}

    @classmethod
    def from_dict(cls, s: dict[str, Any]) -> JobSummary:
        return cls(job_id=s["job_id"], state=s["state"], total=s["total"], done=s["done"],
                   failed=s["failed"], elapsed_s=s["elapsed_s"],
                   output_dir=Path(s["output_dir"]),
                   failures=[Failure(f["path"], f["reason"]) for f in s["failures"]],
                   files=[Path(f) for f in s["files"]],
                   job_files=[Path(f) for f in s.get("job_files", [])],
                   items=list(s.get("items", [])),
                   report_json=Path(s["report_json"]) if s["report_json"] else None,
                   report_html=Path(s["report_html"]) if s["report_html"] else None,
                   rate=s["rate"], message=s["message"])

    @property
    def ok(self) -> bool:
        return self.state == "finished" and self.failed == 0
