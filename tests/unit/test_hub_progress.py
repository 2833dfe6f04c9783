"""Byte progress: per file and overall, resumed files start at their partial size."""
from __future__ import annotations

import pytest

from engine.errors import Cancelled
from engine.events import CancelToken
from engine.hub import progress as progress_mod
from engine.hub.progress import DownloadTracker


def test_tracker_reports_each_file_and_the_total(monkeypatch):
    monkeypatch.setattr(progress_mod, "MIN_INTERVAL_S", 0.0)
    events = []
    tracker = DownloadTracker({"a.bin": 100, "b.json": 10}, events.append, None, label="org/x")
    bar = tracker.bar_class("a.bin")(unit="B", total=100, initial=40, desc="a.bin")
    with bar:
        bar.update(30)
        bar.update(30)
    tracker.finish_file("a.bin")
    tracker.finish_file("b.json")
    per_file = [(e.done, e.total) for e in events if e.item == "a.bin"]
    assert per_file[:3] == [(40, 100), (70, 100), (100, 100)]
    overall = [e for e in events if e.item == ""]
    assert [e.done for e in overall][:3] == [40, 70, 100]
    assert (overall[-1].done, overall[-1].total) == (110, 110)
    assert overall[-1].message == "org/x 2/2 files"
    assert all(e.unit == "bytes" and e.stage == "download" for e in events)


def test_unknown_size_gives_unknown_total():
    tracker = DownloadTracker({"a": None, "b": 5}, None, None)
    assert tracker.total is None
    tracker.set_file("a", 0, total=7)
    assert tracker.total == 12


def test_update_raises_cancelled_once_token_is_set():
    cancel = CancelToken()
    tracker = DownloadTracker({"a": 10}, None, cancel)
    bar = tracker.bar_class("a")(total=10)
    bar.update(5)
    cancel.cancel()
    with pytest.raises(Cancelled):
        bar.update(5)
    assert tracker.done == 5


def test_fast_chunks_are_coalesced_but_the_end_is_always_reported():
    events = []
    tracker = DownloadTracker({"a": 1000}, events.append, None)
    bar = tracker.bar_class("a")(total=1000)
    for _ in range(100):
        bar.update(10)
    per_file = [e.done for e in events if e.item == "a"]
    assert per_file[-1] == 1000
    assert len(per_file) < 20
