"""run_job end to end with real handlers on real files: outputs, failures, events,
reports, pause / resume / cancel, batch isolation, runners."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.jobs import (
    BaseHandler,
    ItemResult,
    JobSpec,
    JobStore,
    LocalJobExecutor,
    list_jobs,
    register_handler,
    resume_job,
    run_job,
    unregister_handler,
)
from tests.fixtures.jobs import handlers_restored
from tests.fixtures.media import make_audio_only, make_images
from tests.fixtures.unprivileged import as_unprivileged
from tests.unit.test_jobs_inputs import make_locked_tree, open_tmp  # noqa: F401


def hidden_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")]


def test_a_batch_records_broken_inputs_and_finishes_the_rest(tmp_path, store, test_handlers):
    src = tmp_path / "in"
    good = make_images(src, 6, subfolders=2)
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    jpeg = src / "whole.jpg"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), np.uint8)).save(jpeg)
    (src / "truncated.jpg").write_bytes(jpeg.read_bytes()[:300])
    jpeg.unlink()
    (src / "empty.png").write_bytes(b"")
    (src / "letter.jpg").write_text("Dear reader, this is not a picture.")
    make_audio_only(src / "song.mp4")
    (src / "nothing.mp4").write_bytes(b"")
    events = []
    spec = JobSpec(task="restore", model="invert", inputs=[str(src), str(tmp_path / "gone.png")],
                   output_dir=str(tmp_path / "out"))
    summary = run_job(spec, on_event=events.append, store=store)

    assert summary.state == "finished" and not summary.cancelled
    assert (summary.total, summary.done, summary.failed) == (13, 6, 7)
    reasons = {Path(f.path).name: f.reason for f in summary.failures}
    assert "corrupt" in reasons["corrupt.png"] or "not an image" in reasons["corrupt.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "empty file (0 bytes)" in reasons["empty.png"]
    assert "not an image Ocula can read" in reasons["letter.jpg"]
    assert "has no video stream (found: audio)" in reasons["song.mp4"]
    assert "empty file (0 bytes)" in reasons["nothing.mp4"]
    assert "not found" in reasons["gone.png"]
    for reason in reasons.values():
        assert str(tmp_path) in reason  # each reason names its file

    out = tmp_path / "out"
    for path in good:  # mirrored structure, real work done
        rel = path.relative_to(src)
        target = out / rel.parent / (rel.stem + ".restored.png")
        assert np.array_equal(np.asarray(Image.open(target)), 255 - np.asarray(Image.open(path)))
    assert hidden_files(out) == []

    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("item_done") == 6 and kinds.count("item_failed") == 7
    last_done = [e for e in events if e.kind == "item_done"][-1]
    assert last_done.total == 13 and last_done.rate > 0
    assert events[-1].result is summary

    report = json.loads(summary.report_json.read_text())
    assert report["counts"] == {"total": 13, "done": 6, "failed": 7}
    assert {Path(f["path"]).name for f in report["failures"]} == set(reasons)
    assert report["timings"]["elapsed_s"] > 0 and "per_item_median_s" in report["timings"]
    page = summary.report_html.read_text()
    assert page.startswith("<!doctype html>") and "Dear reader" not in page
    assert "letter.jpg" in page and "<script" not in page


def test_html_report_escapes_what_it_shows(tmp_path, store, test_handlers):
    src = tmp_path / "<b>odd & name"
    src.mkdir()
    (src / "<script>alert(1).png").write_bytes(b"nope")
    summary = run_job(JobSpec("restore", "invert", [str(src)], str(tmp_path / "out")),
                      store=store)
    page = summary.report_html.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1).png" in page
    assert "&lt;b&gt;odd &amp; name" in page and "<b>odd" not in page


class TinyRefusing(BaseHandler):
    """Inverts, but refuses images under 16 px (as a model with a minimum input size)."""

    batch_size = 4

    def prepare(self, spec, progress, cancel, settings=None):
        self.calls: list[int] = []

    def process_batch(self, images, outs):
        self.calls.append(len(images))
        return super().process_batch(images, outs)

    def process_image(self, image, out):
        if min(image.size) < 16:
            raise ValueError(f"image is {image.size[0]}×{image.size[1]}; the model needs ≥16 px")
        out.write_image(".png", 255 - image.array, kind="restored")
        return ItemResult()


def test_a_failing_input_in_a_batch_does_not_take_the_batch_down(tmp_path, store):
    handler = TinyRefusing()
    with handlers_restored():
        register_handler("restore", handler, replace=True)
        src = tmp_path / "in"
        make_images(src, 7, size=(32, 32))
        Image.new("RGB", (8, 8), "white").save(src / "img00003.png")  # replaced by a tiny one
        summary = run_job(JobSpec("restore", "m", [str(src)], str(tmp_path / "out")),
                          store=store)
    assert (summary.done, summary.failed) == (6, 1)
    assert "the model needs ≥16 px" in summary.failures[0].reason
    assert summary.failures[0].path.endswith("img00003.png")
    assert handler.calls[:2] == [4, 1]  # the broken batch, then its inputs one by one
    assert len(list((tmp_path / "out").glob("*.png"))) == 6


def test_same_names_from_different_inputs_do_not_collide(tmp_path, store, test_handlers):
    src = tmp_path / "in"
    src.mkdir()
    for name, colour in [("a.png", "red"), ("a.jpg", "blue"), ("a.webp", "green")]:
        Image.new("RGB", (16, 16), colour).save(src / name)
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (16, 16), "yellow").save(other / "a.png")
    run_job(JobSpec("restore", "invert", [str(src), str(other)], str(tmp_path / "out")),
            store=store)
    names = sorted(p.name for p in (tmp_path / "out").glob("a*"))
    assert names == ["a.restored.png", "a_png-2.restored.png", "a_png.restored.png",
                     "a_webp.restored.png"]
    # Running into an output folder inside the input folder never re-reads outputs.
    summary = run_job(JobSpec("restore", "invert", [str(src)], str(src / "out")), store=store)
    assert summary.total == 3
    again = run_job(JobSpec("restore", "invert", [str(src)], str(src / "out")), store=store)
    assert again.total == 3


def test_pause_resume_cancel_and_resume_job(tmp_path, store, test_handlers):
    src = tmp_path / "in"
    inputs = make_images(src, 24, size=(24, 24))
    log = tmp_path / "processed.log"
    spec = JobSpec("restore", "invert", [str(src)], str(tmp_path / "out"),
                   options={"test_delay_s": 0.03, "test_log": str(log)})
    events = []
    runner = LocalJobExecutor(store, mode="thread")
    handle = runner.submit(spec, on_event=events.append)

    def count(kind: str) -> int:
        return sum(1 for e in list(events) if e.kind == kind)

    def wait_for(predicate, timeout=30.0):
        end = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < end, "timed out"
            time.sleep(0.01)

    wait_for(lambda: count("item_done") >= 4)
    handle.pause()
    wait_for(lambda: count("paused") == 1)
    frozen = count("item_done")
    time.sleep(0.4)
    assert count("item_done") == frozen  # nothing runs while paused
    assert store.job_row(handle.job_id)["state"] == "paused"
    handle.resume()
    wait_for(lambda: count("resumed") == 1)
    wait_for(lambda: count("item_done") >= frozen + 4)
    handle.cancel()
    summary = handle.wait(30)
    assert summary.cancelled and 0 < summary.done < 24
    assert events[-1].kind == "cancelled"
    assert "resume" in summary.message
    (record,) = list_jobs(store)
    assert record.state == "cancelled" and record.pending == 24 - summary.done

    resumed = resume_job(handle.job_id, store=store)
    assert resumed.state == "finished" and resumed.done == 24 and resumed.failed == 0
    lines = log.read_text().splitlines()
    assert sorted(lines) == sorted(str(p) for p in inputs)  # each input exactly once
    assert len(list((tmp_path / "out").glob("*.restored.png"))) == 24
    assert hidden_files(tmp_path / "out") == []


def test_inline_runner_and_pause_with_a_threading_event(tmp_path, store, test_handlers):
    src = tmp_path / "in"
    make_images(src, 3)
    runner = LocalJobExecutor(store, mode="inline")
    handle = runner.submit(JobSpec("restore", "invert", [str(src)], str(tmp_path / "o")))
    assert handle.done and handle.wait().done == 3
    # The GUI passes a threading.Event as the pause flag (set = paused).
    pause = threading.Event()
    pause.set()
    events = []
    timer = threading.Timer(0.3, pause.clear)
    timer.start()
    began = time.monotonic()
    summary = run_job(JobSpec("restore", "invert", [str(src)], str(tmp_path / "p")),
                      pause=pause, on_event=events.append, store=store)
    assert time.monotonic() - began >= 0.25 and summary.done == 3
    assert [e.kind for e in events].count("paused") == 1


def test_a_job_that_cannot_start_is_marked_failed_and_resumable(tmp_path, store):
    with handlers_restored():
        unregister_handler("segment")
        make_images(tmp_path / "in", 1)
        with pytest.raises(Exception, match="no handler is registered for task 'segment'"):
            run_job(JobSpec("segment", "m", [str(tmp_path / "in")], str(tmp_path / "out")),
                    store=store, job_id="job-1")
        assert store.job_row("job-1")["state"] == "failed"
        register_handler("segment", TinyRefusing)  # a class: one instance per job
        summary = resume_job("job-1", store=store)
        assert summary.done == 1


def test_an_unreadable_folder_fails_alone(test_handlers, open_tmp):  # noqa: F811
    """Permission denied on a sub-folder: recorded with its reason, the rest is done
    (as root, the job runs in a thread with an unprivileged filesystem uid)."""
    import os

    root, locked = make_locked_tree(open_tmp)
    for name in ("b.png", "ok/a.png"):  # real pictures in the readable part
        Image.new("RGB", (8, 8), "teal").save(root / name)
    out = open_tmp / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)

    def job():
        return run_job(JobSpec("restore", "invert", [str(root)], str(out)),
                       store=JobStore(out / "jobs.sqlite"))

    # The unprivileged thread cannot read the interpreter's files under /root, so
    # every module the job needs is imported first by a run of the same job as ourselves.
    warm = open_tmp / "warm"
    make_images(warm, 1)
    run_job(JobSpec("restore", "invert", [str(warm), str(warm / "gone")], str(open_tmp / "w")),
            store=JobStore(open_tmp / "warm.sqlite"))
    summary = as_unprivileged(job)
    assert (summary.done, summary.failed) == (2, 1), summary.failures
    assert summary.failures[0].path == str(locked)
    assert "cannot read this folder (Permission denied)" in summary.failures[0].reason
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.restored.png")) == [
        "b.restored.png", "ok/a.restored.png"]
    if os.geteuid() == 0:
        assert (out / "b.restored.png").stat().st_uid == 65534  # really ran unprivileged


def test_deferred_runner_runs_where_the_caller_says(tmp_path, store, test_handlers):
    """The GUI's way: submit only prepares the handle; `run()` on the caller's thread
    creates and runs the job; a spec that fails validation is the handle's failure."""
    src = tmp_path / "in"
    make_images(src, 3)
    runner = LocalJobExecutor(store, mode="deferred")
    events = []
    handle = runner.submit(JobSpec("restore", "invert", [str(src)], str(tmp_path / "out")),
                           on_event=events.append)
    assert not handle.done and handle.outcome is None and not store.has_job(handle.job_id)
    worker = threading.Thread(target=handle.run)
    worker.start()
    worker.join(30)
    assert handle.outcome == "succeeded" and handle.wait(0).done == 3
    assert handle.result is handle.summary and events[-1].kind == "finished"

    bad = JobSpec("restore", "invert", [str(src)], str(tmp_path / "o2"))
    bad.output_dir = ""
    broken = runner.submit(bad)  # no exception here: the job is created in run()
    broken.run()
    assert broken.outcome == "failed" and "output_dir" in broken.failure.message
    assert "Traceback" in broken.failure.details and broken.failure.exception is broken.error
    with pytest.raises(type(broken.error)):
        broken.wait(0)

    cancelled = runner.submit(JobSpec("restore", "invert", [str(src)], str(tmp_path / "o3")))
    cancelled.cancel()  # before it starts: the job stops at its first safe point
    cancelled.run()
    assert cancelled.outcome == "cancelled" and cancelled.summary.cancelled
