"""One output folder, one job: the folder lock, per-job exports, stale temporaries, and a
full disk (issue 16)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import OculaError, OutputDiskFullError
from engine.jobs import JobSpec, LocalJobExecutor, register_handler, resume_job, run_job
from engine.jobs.folder_lock import LOCK_NAME, OutputFolderBusy, read_lock
from engine.jobs.task_handlers import CaptionHandler, DetectHandler
from engine.results import Box, Caption, Detections
from tests.fixtures.jobs import grow_disk
from tests.fixtures.media import make_images


def hidden_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*"))


def wait_for(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- 1. the folder lock -----------------------------------------------------------------------


def test_a_second_job_into_a_folder_in_use_refuses_and_overwrites_nothing(
        tmp_path, store, test_handlers):
    a_in, b_in, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    a_inputs = make_images(a_in, 12, size=(24, 24), seed=1)
    make_images(b_in, 12, size=(24, 24), seed=2)  # the same names, other pixels
    events = []
    executor = LocalJobExecutor(store, mode="thread")
    first = executor.submit(JobSpec("restore", "invert", [str(a_in)], str(out),
                                    options={"test_delay_s": 0.05}), on_event=events.append)
    wait_for(lambda: any(e.kind == "item_done" for e in list(events)))
    assert read_lock(out)["job_id"] == first.job_id

    with pytest.raises(OutputFolderBusy) as refused:
        run_job(JobSpec("restore", "invert", [str(b_in)], str(out)), store=store)
    message = str(refused.value)
    assert first.job_id in message and "--out" in message and str(out) in message

    summary = first.wait(60)
    assert summary.state == "finished" and summary.done == 12
    for src in a_inputs:  # every output is the first job's, none overwritten by the second
        restored = np.asarray(Image.open(out / (src.stem + ".restored.png")))
        assert np.array_equal(restored, 255 - np.asarray(Image.open(src)))
    assert not (out / LOCK_NAME).exists()  # released when the job ended
    refused_job = [j for j in store.list_jobs() if j.id != first.job_id][0]
    assert refused_job.state == "failed" and refused_job.done == 0


def test_two_threads_racing_for_one_folder_one_wins(tmp_path, store, test_handlers):
    out = tmp_path / "out"
    inputs = [make_images(tmp_path / f"in{n}", 6, size=(16, 16), seed=n) for n in range(2)]
    outcomes: list[object] = [None, None]
    start = threading.Barrier(2)

    def run(n: int) -> None:
        start.wait()
        try:
            outcomes[n] = run_job(JobSpec("restore", "invert", [str(inputs[n][0].parent)],
                                          str(out), options={"test_delay_s": 0.02}),
                                  store=store)
        except OculaError as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    busy = [o for o in outcomes if isinstance(o, OutputFolderBusy)]
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(busy) == 1 and len(done) == 1 and done[0].done == 6
    winner = inputs[outcomes.index(done[0])]
    for src in winner:
        restored = np.asarray(Image.open(out / (src.stem + ".restored.png")))
        assert np.array_equal(restored, 255 - np.asarray(Image.open(src)))


def test_a_stale_lock_is_taken_over_and_said_so(tmp_path, store, test_handlers):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"job_id": "killed-job", "pid": dead_pid()}))
    make_images(tmp_path / "in", 2, size=(16, 16))
    events = []
    summary = run_job(JobSpec("restore", "invert", [str(tmp_path / "in")], str(out)),
                      store=store, on_event=events.append)
    assert summary.state == "finished" and summary.done == 2
    assert any("took over the lock of job 'killed-job'" in e.message for e in events)
    assert not (out / LOCK_NAME).exists()


def test_the_same_job_resumed_takes_its_own_lock_back(tmp_path, store, test_handlers):
    out = tmp_path / "out"
    make_images(tmp_path / "in", 3, size=(16, 16))
    spec = JobSpec("restore", "invert", [str(tmp_path / "in")], str(out))
    job_id = store.create_job(spec)
    out.mkdir()
    for pid in (dead_pid(), os.getpid()):  # killed elsewhere, or left by this process
        (out / LOCK_NAME).write_text(json.dumps({"job_id": job_id, "pid": pid}))
        summary = resume_job(job_id, store=store)
        assert summary.state == "finished" and summary.done == 3
        assert not (out / LOCK_NAME).exists()


# -- 1b. an export lists only its own job's inputs ---------------------------------------------------


class _NoModel:
    """The built-in handlers' writing and `finish`, with the model call replaced."""

    def prepare(self, spec, progress, cancel, settings=None) -> None:
        self.spec, self.cancel, self.progress = spec, cancel, progress
        self.options = spec.options
        self.formats = self.options.formats or self.default_formats
        self.batch_size, self.quality, self.image_ext = 2, None, ".png"

    @property
    def placement(self) -> str:
        return "test"


class BrightDetect(_NoModel, DetectHandler):
    default_formats = ("coco", "csv")

    def run_batch(self, images):
        return [Detections([Box(1, 1, 5, 5, "thing", 0.9, label_id=0)], image.size,
                           {0: "thing"}) for image in images]


class NameCaption(_NoModel, CaptionHandler):
    default_formats = ("jsonl",)

    def run_batch(self, images):
        return [Caption(f"a picture of {image.path.stem}", image_size=image.size)
                for image in images]


@pytest.mark.parametrize("task", ["detect", "caption"])
def test_an_export_lists_only_this_jobs_inputs(tmp_path, store, task):
    from tests.fixtures.jobs import handlers_restored

    out = tmp_path / "out"
    make_images(tmp_path / "old", 5, size=(16, 16), seed=1)
    (new,) = make_images(tmp_path / "new", 1, size=(16, 16), seed=2, suffix=".jpg")
    new = new.rename(new.with_name("fresh.jpg"))
    with handlers_restored():
        register_handler("detect", BrightDetect, replace=True)
        register_handler("caption", NameCaption, replace=True)
        first = run_job(JobSpec(task, "m", [str(tmp_path / "old")], str(out)), store=store)
        assert first.state == "finished" and first.done == 5
        second = run_job(JobSpec(task, "m", [str(new)], str(out)), store=store)
    assert second.state == "finished" and second.done == 1
    if task == "detect":
        coco = json.loads((out / "detections.coco.json").read_text())
        assert [img["file_name"] for img in coco["images"]] == ["fresh.jpg"]
        assert len(coco["annotations"]) == 1
        with open(out / "detections.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and {tuple(r.values())[0] for r in rows} == {"fresh.jpg"}
    else:
        lines = (out / "captions.jsonl").read_text().splitlines()
        assert [json.loads(line)["image"] for line in lines] == ["fresh.jpg"]
    # the first job's per-input files are still there, untouched
    assert len(list(out.glob("img*." + task + ("ions" if task == "detect" else "") + ".json"))) \
        == 5


# -- 4. stale temporaries ----------------------------------------------------------------------------


def test_resume_removes_this_jobs_stale_temporaries_and_nothing_else(
        tmp_path, store, test_handlers):
    out = tmp_path / "out"
    make_images(tmp_path / "in", 4, size=(16, 16), subfolders=2)
    spec = JobSpec("restore", "invert", [str(tmp_path / "in")], str(out))
    summary = run_job(spec, store=store)
    assert summary.state == "finished"
    # What killed runs leave: mkstemp'd names, 0 bytes (killed before the first write).
    stale = [out / "part0" / ".img00000.restored.k3j4h5g6.png",
             out / "part1" / ".img00001.restored.png.ab_cd123.part",
             out / ".ocula-report.json.zz9yy8xx.part",
             out / "part0" / ".img00002.frames.jsonl.part"]
    mine = [out / ".my-notes.txt", out / "part0" / ".holiday.k3j4h5g6.png",
            out / ".photo.abcdefgh.part", out / "part1" / ".img00001.restored.png.swp"]
    for path in stale + mine:
        path.write_bytes(b"")
    resumed = resume_job(summary.job_id, store=store)
    assert resumed.state == "finished"
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in mine)  # user files and other names are never touched


def test_a_new_job_also_cleans_up_at_start(tmp_path, store, test_handlers):
    out = tmp_path / "out"
    out.mkdir()
    make_images(tmp_path / "in", 2, size=(16, 16))
    leftover = out / ".img00000.restored.q1w2e3r4.png"
    leftover.write_bytes(b"")
    assert run_job(JobSpec("restore", "invert", [str(tmp_path / "in")], str(out)),
                   store=store).state == "finished"
    assert hidden_files(out) == []


# -- 3. a full disk -------------------------------------------------------------------------------


# `small_disk` and `grow_disk`: tests/fixtures/jobs.py


def test_a_full_disk_stops_the_job_cleanly_and_it_resumes(tmp_path, store, test_handlers,
                                                          small_disk):
    inputs = make_images(tmp_path / "in", 30, size=(256, 256))  # ~200 KB each as PNG
    out = small_disk / "out"
    spec = JobSpec("restore", "invert", [str(tmp_path / "in")], str(out))
    with pytest.raises(OutputDiskFullError) as stopped:
        run_job(spec, store=store)
    message = str(stopped.value)
    assert isinstance(stopped.value, OculaError)  # the CLI prints a sentence, no traceback
    assert str(out) in message and "written in this run" in message and "resume" in message
    assert "report" in message.lower()  # where it is, or why it could not be written
    (job,) = store.list_jobs()
    assert job.state == "failed" and "resume" in store.job_row(job.id)["message"]
    assert 0 < job.done < 30

    assert hidden_files(out) == []  # no temporaries, no lock left behind
    for item in store.job_items(job.id):
        if item.state == "done":  # finished inputs: complete files
            for path in item.outputs:
                Image.open(path).load()
        else:  # failed or unfinished: nothing on disk
            assert not (out / (Path(item.path).stem + ".restored.png")).exists()

    grow_disk(small_disk, "64m")  # space freed
    resumed = resume_job(job.id, store=store)
    assert resumed.state == "finished" and resumed.done == 30 and resumed.failed == 0
    for src in inputs:
        restored = np.asarray(Image.open(out / (src.stem + ".restored.png")))
        assert np.array_equal(restored, 255 - np.asarray(Image.open(src)))
    assert (out / "ocula-report.json").exists()


def test_a_full_disk_in_the_batch_files_is_no_traceback(tmp_path, store, small_disk):
    from engine.jobs import BaseHandler, ItemResult
    from engine.media.image import atomic_write_bytes
    from tests.fixtures.jobs import handlers_restored

    class BigExport(BaseHandler):
        def process_image(self, image, out):
            out.write_text(".txt", "ok", kind="text")
            return ItemResult()

        def finish(self, spec, out_dir, outputs=None):
            path = out_dir / "export.bin"
            atomic_write_bytes(path, b"x" * (4 * 1024 * 1024))  # more than the disk holds
            return [path]

    make_images(tmp_path / "in", 3, size=(16, 16))
    out = small_disk / "out"
    with handlers_restored():
        register_handler("restore", BigExport, replace=True)
        with pytest.raises(OutputDiskFullError) as stopped:
            run_job(JobSpec("restore", "x", [str(tmp_path / "in")], str(out)), store=store)
    assert "batch files" in str(stopped.value) and str(out) in str(stopped.value)
    assert hidden_files(out) == []  # the half-written export's temporary is gone
    assert not (out / "export.bin").exists()
    assert (out / "ocula-report.json").exists()  # the report still fitted
