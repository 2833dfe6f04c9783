"""desktop.workers: engine work off the UI thread, events coalesced, cancel, pause, errors."""
from __future__ import annotations

import threading
import time

import pytest

from desktop.workers import COALESCE_S, Operation, call_operation
from engine.errors import InputError
from engine.events import Progress


def test_fast_events_arrive_coalesced_in_order(qtbot):
    """20,000 events from a tight loop reach the UI in a handful of batches, all in order."""
    count = 20_000
    ui_thread = threading.get_ident()
    received: list[int] = []
    batch_threads: set[int] = set()

    def work(emit, cancel, pause):
        for i in range(count):
            emit(Progress("infer", i + 1, count))
            if i % 2000 == 0:
                time.sleep(0.03)  # ~0.3 s in all, so several drain periods pass
        return "ok"

    op = Operation(work, label="burst")
    op.events.connect(lambda batch: (batch_threads.add(threading.get_ident()),
                                     received.extend(int(e.done) for e in batch)))
    began = time.monotonic()
    with qtbot.waitSignal(op.done, timeout=20_000):
        op.start()
    elapsed = time.monotonic() - began
    assert op.outcome == "succeeded" and op.result == "ok"
    assert received == list(range(1, count + 1))
    assert batch_threads == {ui_thread}  # delivered on the UI thread
    # at most one delivery per coalescing period (+1 for the final flush)
    assert op.deliveries <= elapsed / COALESCE_S + 2
    assert op.deliveries < 60
    print(f"\n{count} events in {op.deliveries} UI deliveries over {elapsed:.2f} s")


def test_cancel_stops_the_work_and_reports_cancelled(qtbot):
    started = threading.Event()

    def work(emit, cancel, pause):
        started.set()
        for i in range(1000):
            cancel.raise_if_cancelled()
            emit(Progress("infer", i, 1000))
            time.sleep(0.01)
        return "finished"

    op = Operation(work)
    cancelled = []
    op.cancelled.connect(lambda: cancelled.append(True))
    op.start()
    assert started.wait(5)
    time.sleep(0.05)
    with qtbot.waitSignal(op.done, timeout=5000):
        op.cancel()
    assert op.outcome == "cancelled" and cancelled == [True]
    assert op.result is None


def test_pause_blocks_at_safe_points_until_resumed(qtbot):
    progress: list[int] = []
    lock = threading.Lock()

    def work(emit, cancel, pause):
        for i in range(40):
            while pause.is_set():  # the engine's jobs wait like this between batches
                time.sleep(0.005)
            with lock:
                progress.append(i)
            time.sleep(0.005)
        return len(progress)

    op = Operation(work)
    op.start()
    qtbot.waitUntil(lambda: len(progress) >= 3, timeout=5000)
    op.pause()
    time.sleep(0.05)
    with lock:
        frozen = len(progress)
    time.sleep(0.15)
    with lock:
        assert len(progress) <= frozen + 1  # at most the step that was under way
    assert op.paused
    with qtbot.waitSignal(op.done, timeout=5000):
        op.resume()
    assert op.outcome == "succeeded" and op.result == 40


def test_failures_reach_the_ui_as_sentences_with_details(qtbot):
    def broken(path):
        raise InputError(f"{path}: corrupt or truncated image.")

    op = call_operation(broken, "/photos/x.jpg")
    with qtbot.waitSignal(op.failed, timeout=5000) as blocker:
        op.start()
    failure = blocker.args[0]
    assert failure.message == "/photos/x.jpg: corrupt or truncated image."
    assert "Traceback" in failure.details and "broken" in failure.details
    assert op.outcome == "failed"


@pytest.mark.parametrize("value", [None, 0, "text"])
def test_any_result_value_is_delivered(qtbot, value):
    op = call_operation(lambda: value)
    with qtbot.waitSignal(op.succeeded, timeout=5000) as blocker:
        op.start()
    assert blocker.args == [value]
