"""A worker process killed with SIGKILL mid-job; the job resumes from the store.

Every input ends with exactly one set of outputs, nothing partial is left behind,
inputs finished before the kill are not redone, and a video render continues
after its last finished segment.
"""
from __future__ import annotations

import os
import signal
import sys
import time

import av
import numpy as np
import pytest
from PIL import Image

from engine.jobs import JobSpec, JobStore, LocalJobExecutor, resume_job
from tests.fixtures.media import make_images, make_video

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
WORKER_IMPORTS = ["tests.fixtures.media:register_test_handlers"]


def wait_until(predicate, timeout: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(handle) -> None:
    os.kill(handle.pid, signal.SIGKILL)
    handle.process.wait(10)
    assert handle.process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_killed_worker_resumes_each_image_exactly_once(tmp_path, test_handlers):
    store = JobStore(tmp_path / "jobs.sqlite")
    src = tmp_path / "in"
    inputs = make_images(src, 40, size=(32, 24), subfolders=3)
    log = tmp_path / "processed.log"
    out = tmp_path / "out"
    spec = JobSpec("restore", "invert", [str(src)], str(out),
                   options={"test_delay_s": 0.04, "test_log": str(log)})
    runner = LocalJobExecutor(store, mode="subprocess", imports=WORKER_IMPORTS)
    handle = runner.submit(spec)
    wait_until(lambda: store.counts(handle.job_id)["done"] >= 10, what="10 inputs done")
    kill(handle)

    done_before = {i.path for i in store.job_items(handle.job_id, "done")}
    assert 10 <= len(done_before) < 40
    assert store.job_row(handle.job_id)["state"] == "running"  # it never got to say otherwise

    summary = resume_job(handle.job_id, store=store)
    assert (summary.state, summary.done, summary.failed) == ("finished", 40, 0)

    outputs = sorted(out.rglob("*.restored.png"))
    assert len(outputs) == 40  # one per input, no duplicates like name-2
    for path in inputs:
        rel = path.relative_to(src)
        target = out / rel.parent / f"{rel.stem}.restored.png"
        assert np.array_equal(np.asarray(Image.open(target)), 255 - np.asarray(Image.open(path)))
    assert [p for p in out.rglob(".*")] == []  # no temporary or partial files
    lines = log.read_text().splitlines()
    for path in done_before:
        assert lines.count(path) == 1  # finished before the kill: never redone
    # At most the one input in flight at the kill (its output written, its "done" not
    # yet committed) is processed a second time — to the same file name.
    assert set(lines) == {str(p) for p in inputs}
    assert len(lines) - 40 <= 1


@pytest.mark.slow
def test_killed_video_render_resumes_after_its_last_segment(tmp_path, test_handlers):
    store = JobStore(tmp_path / "jobs.sqlite")
    video = make_video(tmp_path / "clip.mp4", seconds=2.0)
    out = tmp_path / "out"
    spec = JobSpec("restore", "invert", [str(video.path)], str(out),
                   options={"test_delay_s": 0.03, "segment_seconds": 0.4, "batch_size": 2})
    runner = LocalJobExecutor(store, mode="subprocess", imports=WORKER_IMPORTS)
    handle = runner.submit(spec)
    wait_until(lambda: len(store.segments(handle.job_id, 0)) >= 2, what="two segments")
    kill(handle)
    segments = store.segments(handle.job_id, 0)
    resume_point = segments[-1].next_frame
    assert 0 < resume_point < video.frames

    summary = resume_job(handle.job_id, store=store)
    assert (summary.done, summary.failed) == (1, 0)
    (item,) = list(store.job_items(handle.job_id))
    assert item.info["resumed_from_frame"] == resume_point  # finished segments not redone
    target = out / "clip.restored.mp4"
    assert item.outputs[0] == str(target)
    with av.open(str(target)) as result, av.open(str(video.path)) as source:
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in result.decode(video=0)]
        originals = [f.to_ndarray(format="rgb24") for f in source.decode(video=0)]
    assert [p for p, _ in frames] == video.pts  # every frame once, original timestamps
    for (_, got), original in zip(frames, originals):
        error = np.abs(got.astype(int) - (255 - original.astype(int))).mean()
        assert error < 4.0  # the negative of each input frame
    assert not (out / ".ocula-work").exists()
    assert [p for p in out.rglob(".*")] == []


def test_worker_process_reports_events_and_obeys_pause_and_cancel(tmp_path, test_handlers):
    store = JobStore(tmp_path / "jobs.sqlite")
    make_images(tmp_path / "in", 30, size=(16, 16))
    events = []
    runner = LocalJobExecutor(store, mode="subprocess", imports=WORKER_IMPORTS)
    handle = runner.submit(JobSpec("restore", "invert", [str(tmp_path / "in")],
                                   str(tmp_path / "out"), options={"test_delay_s": 0.03}),
                           on_event=events.append)
    kinds = lambda: [e.kind for e in list(events)]
    wait_until(lambda: kinds().count("item_done") >= 3, what="3 items")
    handle.pause()
    wait_until(lambda: "paused" in kinds(), what="paused")
    handle.resume()
    wait_until(lambda: "resumed" in kinds(), what="resumed")
    handle.cancel()
    summary = handle.wait(60)
    assert summary is not None and summary.cancelled and 3 <= summary.done < 30
    assert kinds()[0] == "started" and kinds()[-1] == "cancelled"
    done_events = [e for e in events if e.kind == "item_done"]
    assert done_events[0].total == 30 and done_events[0].result.written[0].exists()
    assert summary.report_json is not None and summary.report_json.exists()
