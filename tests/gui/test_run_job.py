"""Drop files, run a real job, see its results; cancel mid-job; stay responsive.

The model is a tiny randomly initialised DETR built here and imported from its local
folder, run by the engine's own detect handler through desktop.workers.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QElapsedTimer, QMimeData, QPoint, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from desktop.main_window import MainWindow

pytestmark = pytest.mark.slow  # torch + transformers load in the worker


@pytest.fixture
def detr_window(qtbot, qsettings, settings_path, tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))  # import index, job store
    from engine.catalog.local_import import import_model
    from tests.fixtures.tiny_detectors import build_detr

    card = import_model(build_detr(tmp_path / "tiny-detr"), task="detect", name="Tiny DETR")
    win = MainWindow(qsettings=qsettings, settings_path=settings_path)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    win.task_combo.setCurrentIndex(win.task_combo.findData("detect"))
    win.model_picker.select(win.catalog.get(card.id))
    form = win.task_panel.forms["detect"]
    form.threshold.setValue(0.05)  # random weights: low scores, keep some boxes
    win.task_panel.output_dir.setText(str(tmp_path / "out"))
    yield win
    win.close()


def _images(folder: Path, count: int, size=(96, 64)) -> list[Path]:
    from tests.fixtures.tiny_detectors import noise_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:04d}.png"
        noise_image(*size, seed=i).save(path)
        paths.append(path)
    return paths


def _drop(widget, paths: list[Path]) -> None:
    """A real drag-and-drop: enter, then drop, through Qt's event dispatch."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPoint(20, 20), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, drop)


def test_drop_run_and_see_overlays(detr_window, qtbot, tmp_path, photos):
    win = detr_window
    _drop(win.viewer.canvas.viewport(), [photos[0].parent])  # a folder, dropped on the image
    assert win.workspace.inputs == sorted(photos)
    qtbot.waitUntil(lambda: win.workspace.shown_path is not None, timeout=10_000)
    with qtbot.waitSignal(win.jobFinished, timeout=180_000) as finished:
        op = win.run()
    assert finished.args[0] is op and op.outcome == "succeeded", \
        op.failure and op.failure.details
    summary = op.result
    assert (summary.done, summary.failed) == (2, 0)

    for index, path in enumerate(win.workspace.inputs):
        win.workspace.set_current(index)
        qtbot.waitUntil(lambda p=path: win.workspace.shown_path == p, timeout=10_000)
        # the oracle: what the job wrote to disk for this image
        record = json.loads((tmp_path / "out" / f"{path.stem}.detections.json").read_text())
        boxes = record["boxes"] if isinstance(record, dict) and "boxes" in record \
            else record["result"]["boxes"]
        assert boxes, "the tiny DETR at threshold 0.05 finds something"
        assert win.viewer.boxes is not None
        assert len(win.viewer.boxes.box_items) == len(boxes)
        assert win.results_panel.table.rowCount() == len(boxes)
        drawn = sorted(round(i.box.score, 4) for i in win.viewer.boxes.box_items)
        assert drawn == sorted(round(b["score"], 4) for b in boxes)
        assert win.workspace.strip.item(index).text().startswith("✓")
    row = win.queue.rows[0]
    assert row.operation is op and "finished" in row.detail.text()
    assert row.folder_button.isVisible() and row.output_dir == str(tmp_path / "out")
    assert "on cpu" in win.placement_label.text()


def _run_then_cancel(win, qtbot, tmp_path, *, after: int) -> tuple[list[Path], object]:
    """60 images dropped, Run, then the toolbar's Cancel (Esc) once `after` are done."""
    images = _images(tmp_path / "many", 60)
    win.workspace.add_paths([tmp_path / "many"])
    op = win.run()
    done_items: list[str] = []
    op.events.connect(lambda batch: done_items.extend(
        e.item for e in batch if getattr(e, "kind", "") == "item_done"))
    qtbot.waitUntil(lambda: len(done_items) >= after, timeout=180_000)
    with qtbot.waitSignal(op.done, timeout=30_000):
        win.act_cancel.trigger()
    return images, op


def test_cancel_mid_job_then_resume_it(detr_window, qtbot, tmp_path):
    win = detr_window
    images, op = _run_then_cancel(win, qtbot, tmp_path, after=3)
    assert op.outcome == "cancelled"
    summary = op.result
    assert summary.cancelled and 3 <= summary.done < len(images)
    assert "cancelled" in win.queue.rows[0].detail.text()
    marked = [i for i in range(win.workspace.strip.count())
              if win.workspace.strip.item(i).text().startswith("✓")]
    assert len(marked) == summary.done  # exactly the finished images carry results
    assert not win.act_cancel.isEnabled()

    # the job store remembers it: offered for resuming, it finishes the rest
    win.list_unfinished_jobs()
    qtbot.waitUntil(lambda: bool(win.queue.interrupted), timeout=10_000)
    (row,) = win.queue.interrupted
    assert row.record.id == summary.job_id and row.record.pending == len(images) - summary.done
    row.findChild(type(win.queue.rows[0].pause_button), "resumeButton").click()
    resumed = win.jobs[-1]
    assert resumed is not op and not win.queue.interrupted
    with qtbot.waitSignal(resumed.done, timeout=180_000):
        pass
    assert resumed.outcome == "succeeded", resumed.failure and resumed.failure.details
    assert (resumed.result.done, resumed.result.failed) == (len(images), 0)
    outputs = sorted(p.name for p in (tmp_path / "out").glob("*.detections.json"))
    assert outputs == sorted(f"{p.stem}.detections.json" for p in images)  # each exactly once


def _tick_gaps(duration_ms: int | None, until=None) -> list[tuple[int, int]]:
    """Run the event loop with a 10 ms timer; return (gap, at) pairs in ms.

    Runs for `duration_ms`, or until the `until` signal fires."""
    from PySide6.QtCore import QEventLoop

    clock = QElapsedTimer()
    clock.start()
    last = [0]
    gaps: list[tuple[int, int]] = []

    def tick() -> None:
        now = clock.elapsed()
        gaps.append((now - last[0], now))
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    loop = QEventLoop()
    if until is not None:
        until.connect(loop.quit)
    if duration_ms is not None:
        QTimer.singleShot(duration_ms, loop.quit)
    timer.start()
    loop.exec()
    timer.stop()
    if until is not None:
        until.disconnect(loop.quit)
    return gaps


@pytest.fixture(scope="module")
def timed_job(qapp, tmp_path_factory):
    """One 120-image job with a tiny DETR, its event loop watched by a 10 ms timer.

    Returns the tick gaps, when the last image's result reached the UI and when the
    job finished (all in ms), and an idle baseline: what this machine's scheduler
    alone does to the same timer (other processes share the CPU)."""
    tmp = tmp_path_factory.mktemp("responsive")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OCULA_HOME", str(tmp / "home"))
        from PySide6.QtCore import QSettings

        from engine.catalog.local_import import import_model
        from tests.fixtures.tiny_detectors import build_detr

        card = import_model(build_detr(tmp / "tiny-detr"), task="detect", name="Tiny DETR")
        qs = QSettings(str(tmp / "ui.ini"), QSettings.Format.IniFormat)
        qs.setValue("ui/welcomed", True)
        win = MainWindow(qsettings=qs, settings_path=tmp / "settings.toml")
        win.show()
        win.task_combo.setCurrentIndex(win.task_combo.findData("detect"))
        win.model_picker.select(win.catalog.get(card.id))
        win.task_panel.forms["detect"].threshold.setValue(0.05)
        win.task_panel.output_dir.setText(str(tmp / "out"))
        # load torch/transformers once first: the measured run is the batch itself
        _images(tmp / "warm", 1)
        win.workspace.add_paths([tmp / "warm"])
        win.run()
        _tick_gaps(None, until=win.jobFinished)
        win.workspace.clear()
        images = _images(tmp / "batch", 120, size=(320, 240))
        win.workspace.add_paths([tmp / "batch"])
        _tick_gaps(1500)  # thumbnails load before the job starts
        baseline = _tick_gaps(3000)

        last_item = [0.0]
        began = time.monotonic()
        op = win.run()
        # when the job thread finished the last image (the event's own time stamp)
        op.events.connect(lambda batch: [last_item.__setitem__(0, (e.time - began) * 1000)
                                         for e in batch if getattr(e, "kind", "") == "item_done"])
        gaps = _tick_gaps(None, until=op.done)
        finished = (time.monotonic() - began) * 1000
        win.close()
    assert op.outcome == "succeeded" and op.result.done == len(images)
    return {"gaps": gaps, "last_item_ms": last_item[0], "finished_ms": finished,
            "baseline": baseline, "images": len(images), "deliveries": op.deliveries}


def _allowed_gap_ms(baseline: list[tuple[int, int]]) -> float:
    """100 ms, plus whatever the idle machine alone already adds to a 10 ms timer."""
    return 100.0 + max(0.0, max(g for g, _ in baseline) - 10.0)


def test_ui_stays_responsive_while_images_are_processed(timed_job):
    """A 10 ms timer keeps ticking while the batch runs: the worst gap is printed."""
    gaps, last_item = timed_job["gaps"], timed_job["last_item_ms"]
    during = [g for g, at in gaps if at <= last_item]
    worst = max(during)
    idle_worst = max(g for g, _ in timed_job["baseline"])
    seconds = last_item / 1000
    print(f"\n{timed_job['images']} images in {seconds:.1f} s "
          f"({timed_job['images'] / seconds:.1f} img/s), {len(during)} ticks: worst gap "
          f"{worst} ms, median {float(np.median(during)):.0f} ms (idle machine: worst "
          f"{idle_worst} ms); {timed_job['deliveries']} UI deliveries")
    print("largest gaps (ms, at ms after Run):", sorted(
        ((g, at) for g, at in gaps if at <= last_item), reverse=True)[:5])
    assert worst < _allowed_gap_ms(timed_job["baseline"]), f"the UI froze for {worst} ms"
    assert timed_job["deliveries"] <= timed_job["finished_ms"] / 100 + 3  # coalesced


def test_ui_stays_responsive_when_the_job_ends(timed_job):
    """The handler releases its model after the last image; the engine then runs
    gc.collect() on the job thread. desktop.workers.load_backend froze the model
    libraries' objects (gc.freeze), so that collection no longer stalls the UI."""
    gaps = timed_job["gaps"]
    after = [g for g, at in gaps if at > timed_job["last_item_ms"]]
    worst = max(after) if after else 0
    print(f"\nafter the last image until the job finished: worst gap {worst} ms")
    assert worst < _allowed_gap_ms(timed_job["baseline"])


def test_a_job_cancelled_here_resumes_on_ray_from_the_jobs_dock(detr_window, qtbot, tmp_path):
    """Issue 17: a job started on this machine resumes on Ray (the Resume button's menu),
    finishes the rest exactly once, and its row draws the Ray workers."""
    pytest.importorskip("ray")
    win = detr_window
    images, op = _run_then_cancel(win, qtbot, tmp_path, after=2)
    first = op.result.done
    assert 2 <= first < len(images)

    win.list_unfinished_jobs()
    qtbot.waitUntil(lambda: bool(win.queue.interrupted), timeout=10_000)
    (row,) = win.queue.interrupted
    names = [a.objectName() for a in row.resume_menu.actions()]
    assert names == ["resumeOn_local", "resumeOn_ray"]
    row.resume_menu.actions()[1].trigger()
    resumed = win.jobs[-1]
    assert resumed is not op and "on ray" in resumed.label
    with qtbot.waitSignal(resumed.done, timeout=300_000):
        pass
    assert resumed.outcome == "succeeded", resumed.failure and resumed.failure.details
    assert (resumed.result.done, resumed.result.failed) == (len(images), 0)
    outputs = sorted(p.name for p in (tmp_path / "out").glob("*.detections.json"))
    assert outputs == sorted(f"{p.stem}.detections.json" for p in images)
    job_row = win.queue.rows[0]
    assert job_row.operation is resumed
    assert "pid" in job_row.workers_label.text()  # one line per Ray worker replica
