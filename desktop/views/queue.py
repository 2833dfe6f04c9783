"""The job queue dock: one row per job or download with progress, ETA and controls.

Each row listens to its own Operation's coalesced `events` (at most ten batches
a second) and draws only the latest state of the batch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QSize, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication, QResizeEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.format import human_bytes, human_duration
from desktop.workers import Operation

ETA_MIN_SECONDS = 1.0  # no byte rate (nor ETA) before this much time of samples…
ETA_MIN_BYTES = 256 * 1024  # …and this many bytes moved: a few early chunks say little
RATE_TIME_CONSTANT_S = 3.0  # the rate is an exponential moving average over about this long


class RateMeter:
    """A smoothed transfer rate from (time, done) samples.

    The instantaneous rate between samples is averaged with weight 1 - exp(-dt / tau), so
    irregular sample spacing counts by time, not by sample. Until enough time and bytes
    have passed, `rate` is None: two chunks 10 ms apart (a small file's whole download)
    would give an ETA that is wrong by orders of magnitude."""

    def __init__(self, *, min_seconds: float = ETA_MIN_SECONDS,
                 min_amount: float = ETA_MIN_BYTES,
                 time_constant_s: float = RATE_TIME_CONSTANT_S) -> None:
        self.min_seconds, self.min_amount = min_seconds, min_amount
        self.time_constant_s = time_constant_s
        self._first: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None
        self._smoothed: float | None = None

    def add(self, now: float, done: float) -> None:
        import math

        if self._first is None:
            self._first = self._last = (now, done)
            return
        t_last, d_last = self._last
        dt = now - t_last
        if dt <= 0:
            return
        instant = max(0.0, done - d_last) / dt
        self._last = (now, done)
        if self._smoothed is None or not self._enough():
            # until there is enough to go on: the plain average since the first sample,
            # so an early burst (a small file, a cached chunk) weighs only its share
            t0, d0 = self._first
            self._smoothed = max(0.0, done - d0) / (now - t0)
        else:
            weight = 1.0 - math.exp(-dt / self.time_constant_s)
            self._smoothed += weight * (instant - self._smoothed)

    def _enough(self) -> bool:
        (t0, d0), (t1, d1) = self._first, self._last
        return t1 - t0 >= self.min_seconds and d1 - d0 >= self.min_amount

    @property
    def rate(self) -> float | None:
        if self._first is None or self._smoothed is None or not self._enough():
            return None
        return self._smoothed or None

    def eta_s(self, done: float, total: float | None) -> float | None:
        rate = self.rate
        if not rate or not total:
            return None
        return max(0.0, total - done) / rate


class ElidedLabel(QLabel):
    """One line that never widens its row: text too long for the width ends in "…" and
    the full text is the tooltip. `text()` gives the full text."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self._tip = ""  # a tooltip set from outside, kept when the text fits
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def text(self) -> str:  # noqa: D401 — the full text, not the elided one
        return self._full

    def setText(self, text: str) -> None:  # noqa: N802
        self._full = str(text)
        self._elide()

    def setToolTip(self, tip: str) -> None:  # noqa: N802
        self._tip = tip
        self._elide()

    def sizeHint(self) -> QSize:  # noqa: N802
        fm = self.fontMetrics()
        return QSize(min(fm.horizontalAdvance(self._full), 240), fm.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(0, self.fontMetrics().height())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        one_line = " ".join(self._full.split())
        shown = self.fontMetrics().elidedText(one_line, Qt.TextElideMode.ElideRight,
                                              max(self.width(), 1))
        QLabel.setText(self, shown)
        QLabel.setToolTip(self, self._full if shown != one_line else self._tip)


class JobRow(QFrame):
    """One operation: name, bar, '12/40 · 3.1 img/s · 9 s left', pause, cancel, folder."""

    removeRequested = Signal(object)
    resumeRequested = Signal(str)  # job id of an interrupted job

    def __init__(self, operation: Operation, output_dir: str | None = None,
                 parent: QWidget | None = None, *, unsaved: bool = False) -> None:
        super().__init__(parent)
        self.setObjectName("jobRow")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.operation = operation
        self.output_dir = output_dir
        self.unsaved = unsaved  # "Save results to files" was off: no folder to open
        self.job_id: str | None = None
        self.done = 0.0
        self.total: float | None = None
        self.failed_items = 0
        self.updates = 0  # how many times this row redrew (tests read it)

        self.name = ElidedLabel(operation.label)
        self.name.setObjectName("jobName")
        self.bar = QProgressBar()
        self.bar.setObjectName("jobProgress")
        self.bar.setRange(0, 0)  # busy until the first event says how much there is
        self.bar.setTextVisible(True)
        self.detail = ElidedLabel(self.tr("starting…"))
        self.detail.setObjectName("jobDetail")
        self.pause_button = QToolButton()
        self.pause_button.setText(self.tr("Pause"))
        self.pause_button.setObjectName("pauseButton")
        self.pause_button.setCheckable(True)
        self.pause_button.toggled.connect(self._on_pause)
        self.pause_button.setVisible(operation.kind == "job")
        self.cancel_button = QToolButton()
        self.cancel_button.setText(self.tr("Cancel"))
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.clicked.connect(operation.cancel)
        self.folder_button = QToolButton()
        self.folder_button.setText(self.tr("Open folder"))
        self.folder_button.setObjectName("openFolderButton")
        self.folder_button.clicked.connect(self.open_output_folder)
        self.folder_button.setVisible(bool(output_dir))
        self.copy_button = QToolButton()
        self.copy_button.setText(self.tr("Copy path"))
        self.copy_button.setObjectName("copyPathButton")
        self.copy_button.setToolTip(self.tr("Copy the output folder's path"))
        self.copy_button.clicked.connect(self.copy_output_path)
        self.copy_button.setVisible(bool(output_dir))
        self.path_label = ElidedLabel()
        self.path_label.setObjectName("jobOutputPath")
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.meter = RateMeter()
        self.remove_button = QToolButton()
        self.remove_button.setText("✕")
        self.remove_button.setToolTip(self.tr("Remove from the list"))
        self.remove_button.clicked.connect(lambda: self.removeRequested.emit(self))
        self.remove_button.setVisible(False)

        top = QHBoxLayout()
        top.addWidget(self.name, 1)
        for button in (self.pause_button, self.cancel_button, self.folder_button,
                       self.copy_button, self.remove_button):
            top.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.bar)
        layout.addWidget(self.detail)
        # a cluster job (Ray): one line per worker replica, from the executor's progress events
        self.workers_label = QLabel()
        self.workers_label.setObjectName("jobWorkers")
        self.workers_label.setVisible(False)
        layout.addWidget(self.workers_label)
        layout.addWidget(self.path_label)
        self._show_path()

        operation.events.connect(self.on_events)
        operation.done.connect(self.on_done)

    def on_events(self, batch: list[Any]) -> None:
        latest = None
        for event in batch:
            kind = getattr(event, "kind", None)
            if kind == "item_failed":
                self.failed_items += 1
            if kind == "started" and getattr(event, "job_id", None):
                self.job_id = event.job_id
            if hasattr(event, "stage") and getattr(event, "item", ""):
                continue  # a download's per-file report; the row shows the whole download
            if hasattr(event, "done"):
                latest = event
            cluster = getattr(event, "result", None)
            if kind == "progress" and hasattr(cluster, "workers"):
                self._draw_workers(cluster)
        if latest is not None:
            self._draw(latest)

    def _draw_workers(self, cluster: Any) -> None:
        """engine.jobs.ray_executor.ClusterStatus -> "#0 host pid 123 · cpu · 12 done · 3.1/s"."""
        lines = []
        for w in cluster.workers:
            state = f"{w.done} done · {w.rate:.1f}/s" if w.alive else self.tr("lost (its inputs retried)")
            lines.append(f"#{w.index} {w.host} pid {w.pid} · {w.placement or '?'} · {state}")
        tail = self.tr("driver {:.2f} ms/input").format(cluster.driver_ms_per_item)
        if cluster.retried:
            tail += self.tr(" · {} retried").format(cluster.retried)
        self.workers_label.setText("\n".join(lines + [tail]))
        self.workers_label.setToolTip(self.workers_label.text())
        self.workers_label.setVisible(bool(lines))

    def _draw(self, event: Any) -> None:
        self.updates += 1
        self.done = float(event.done or 0)
        self.total = float(event.total) if event.total else None
        unit = getattr(event, "unit", "items")
        if self.total:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(1000 * min(1.0, self.done / self.total)))
        parts: list[str] = []
        if unit == "bytes":
            parts.append(f"{human_bytes(self.done)} / {human_bytes(self.total)}")
        elif self.total:
            parts.append(f"{self.done:.0f} / {self.total:.0f}")
        rate = getattr(event, "rate", None)
        if rate is None and unit == "bytes":
            rate = self._byte_rate(event)
        if rate:
            parts.append(f"{human_bytes(rate)}/s" if unit == "bytes" else f"{rate:.1f}/s")
        eta = getattr(event, "eta_s", None)
        if eta is None and rate and self.total:
            eta = (self.total - self.done) / rate
        if eta is not None and self.operation.running:
            parts.append(self.tr("{} left").format(human_duration(eta)))
        if self.failed_items:
            parts.append(self.tr("{} failed").format(self.failed_items))
        item = getattr(event, "item", "")
        if item:
            parts.append(Path(str(item)).name)
        if self.operation.paused:
            parts.insert(0, self.tr("paused"))
        self.detail.setText(" · ".join(parts))

    def _byte_rate(self, event: Any) -> float | None:
        self.meter.add(getattr(event, "time", time.monotonic()), float(event.done or 0))
        return self.meter.rate

    def on_done(self) -> None:
        op = self.operation
        self.pause_button.setVisible(False)
        self.cancel_button.setVisible(False)
        self.remove_button.setVisible(True)
        if op.outcome == "succeeded":
            self.bar.setRange(0, 1000)
            self.bar.setValue(1000)
            result = op.result
            failed = getattr(result, "failed", self.failed_items) or 0
            done = getattr(result, "done", None)
            text = self.tr("finished")
            if done is not None:
                text += self.tr(": {} done").format(done)
            if failed:
                text += self.tr(", {} failed").format(failed)
            out = getattr(result, "output_dir", None)
            if out and not self.unsaved:
                self.output_dir = str(out)
            if self.unsaved:
                text += self.tr(" (not saved to files)")
            self.detail.setText(text + f" · {human_duration(op.finished_at - op.started_at)}")
        elif op.outcome == "cancelled":
            if self.bar.maximum() == 0:
                self.bar.setRange(0, 1)
            self.detail.setText(self.tr("cancelled") + (
                f" · {self.done:.0f} / {self.total:.0f}" if self.total else ""))
        else:
            if self.bar.maximum() == 0:
                self.bar.setRange(0, 1)
            message = op.failure.message if op.failure else ""
            self.detail.setText(self.tr("failed: {}").format(message))
            self.detail.setToolTip(message)
        self.folder_button.setVisible(bool(self.output_dir))
        self.copy_button.setVisible(bool(self.output_dir))
        self._show_path()

    def _show_path(self, note: str = "") -> None:
        self.path_label.setVisible(bool(self.output_dir))
        if self.output_dir:
            self.path_label.setText(note or self.tr("Output: {}").format(self.output_dir))
            self.folder_button.setToolTip(self.output_dir)

    def copy_output_path(self) -> None:
        if self.output_dir:
            QGuiApplication.clipboard().setText(self.output_dir)

    def _on_pause(self, paused: bool) -> None:
        if paused:
            self.operation.pause()
            self.pause_button.setText(self.tr("Resume"))
            self.detail.setText(self.tr("paused") + " · " + self.detail.text())
        else:
            self.operation.resume()
            self.pause_button.setText(self.tr("Pause"))

    def open_output_folder(self) -> bool:
        """Open the folder in the file manager; without one, say so and copy the path."""
        if not self.output_dir:
            return False
        if QDesktopServices.openUrl(QUrl.fromLocalFile(self.output_dir)):
            return True
        self.copy_output_path()
        self._show_path(self.tr("No file manager could open it; path copied: {}").format(
            self.output_dir))
        return False


class InterruptedRow(QFrame):
    """A job from an earlier session that did not finish: resume it or forget it.

    Resume continues where "Run on" in the task panel says; its menu picks this machine or
    Ray (a job started on Ray resumes on this machine and vice versa: the job store knows
    what is done either way)."""

    resumeRequested = Signal(str, str)  # job id, executor name ("": as "Run on" says)
    forgetRequested = Signal(str)

    def __init__(self, record: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("interruptedRow")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.record = record
        text = self.tr("{} — {} of {} done ({}), {} left").format(
            record.spec_summary, record.done, record.total, record.state,
            record.pending)
        label = ElidedLabel(text)
        label.setToolTip(record.message or record.output_dir)
        resume = QToolButton()
        resume.setText(self.tr("Resume"))
        resume.setObjectName("resumeButton")
        resume.setToolTip(self.tr("Resume where it stopped (the menu: where it runs)"))
        resume.clicked.connect(lambda: self.resumeRequested.emit(record.id, ""))
        from engine.jobs.spec import EXECUTORS

        menu = QMenu(resume)
        for name in EXECUTORS:
            where = {"local": self.tr("this machine"), "ray": self.tr("Ray")}.get(name, name)
            action = menu.addAction(self.tr("Resume on {}").format(where))
            action.setObjectName(f"resumeOn_{name}")
            action.triggered.connect(lambda _=False, n=name: self.resumeRequested.emit(record.id, n))
        resume.setMenu(menu)
        resume.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        self.resume_menu = menu
        forget = QToolButton()
        forget.setText(self.tr("Forget"))
        forget.clicked.connect(lambda: self.forgetRequested.emit(record.id))
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 4, 6, 4)
        row.addWidget(label, 1)
        row.addWidget(resume)
        row.addWidget(forget)


RESUMABLE = ("queued", "running", "paused", "cancelled", "failed", "interrupted")


class QueueView(QWidget):
    """All operations of this session, newest first."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("queueView")
        self.rows: list[JobRow] = []
        self.inner = QWidget()
        self.list_layout = QVBoxLayout(self.inner)
        self.list_layout.setContentsMargins(4, 4, 4, 4)
        self.list_layout.addStretch(1)
        self.empty = QLabel(self.tr("No jobs yet. Choose a task and a model, add images, "
                                    "then press Run (Ctrl+R)."))
        self.empty.setObjectName("queueEmpty")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.list_layout.insertWidget(0, self.empty)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.inner)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.clear_button = QPushButton(self.tr("Clear finished"))
        self.clear_button.clicked.connect(self.clear_finished)
        bar = QHBoxLayout()
        bar.addStretch(1)
        bar.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll, 1)
        layout.addLayout(bar)
        self.on_resume: Callable[[str, str | None], None] | None = None
        self.on_forget: Callable[[str], None] | None = None
        self.interrupted: list[InterruptedRow] = []

    def show_unfinished(self, records: list[Any]) -> list[InterruptedRow]:
        """Jobs left unfinished by an earlier session (from the job store)."""
        for row in self.interrupted:
            row.setParent(None)
            row.deleteLater()
        self.interrupted = []
        for record in records:
            if record.state in RESUMABLE and record.pending > 0:
                row = InterruptedRow(record)
                row.resumeRequested.connect(self._resume)
                row.forgetRequested.connect(self._forget)
                self.interrupted.append(row)
                self.list_layout.insertWidget(self.list_layout.count() - 1, row)
        self.empty.setVisible(not self.rows and not self.interrupted)
        return self.interrupted

    def _resume(self, job_id: str, executor: str = "") -> None:
        self._drop_interrupted(job_id)
        if self.on_resume is not None:
            self.on_resume(job_id, executor or None)

    def _forget(self, job_id: str) -> None:
        self._drop_interrupted(job_id)
        if self.on_forget is not None:
            self.on_forget(job_id)

    def _drop_interrupted(self, job_id: str) -> None:
        for row in list(self.interrupted):
            if row.record.id == job_id:
                self.interrupted.remove(row)
                row.setParent(None)
                row.deleteLater()
        self.empty.setVisible(not self.rows and not self.interrupted)

    def add(self, operation: Operation, output_dir: str | None = None, *,
            unsaved: bool = False) -> JobRow:
        row = JobRow(operation, output_dir, unsaved=unsaved)
        row.removeRequested.connect(self.remove)
        self.rows.insert(0, row)
        self.list_layout.insertWidget(0, row)
        self.empty.setVisible(False)
        return row

    def remove(self, row: JobRow) -> None:
        if row in self.rows and not row.operation.running:
            self.rows.remove(row)
            row.setParent(None)
            row.deleteLater()
        self.empty.setVisible(not self.rows)

    def clear_finished(self) -> None:
        for row in list(self.rows):
            if not row.operation.running:
                self.remove(row)

    def running(self) -> list[Operation]:
        return [r.operation for r in self.rows if r.operation.running]

    def cancel_all(self) -> None:
        for op in self.running():
            op.cancel()
