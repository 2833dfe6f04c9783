"""JobStore: chunked inserts from generators, output-name reservation, streaming reads,
and a 100,000-input queue with bounded memory."""
from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

from engine.jobs import JobSpec, JobStore
from engine.jobs.store import SegmentRecord
from engine.media.inputs import InputItem


def spec(tmp_path: Path) -> JobSpec:
    return JobSpec(task="restore", model="m", inputs=[str(tmp_path / "in")],
                   output_dir=str(tmp_path / "out"))


def test_output_names_are_reserved_once_and_collision_safe(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job(spec(tmp_path))
    items = [InputItem(Path("/d/a/photo.jpg"), Path("a/photo.jpg"), "image"),
             InputItem(Path("/d/a/photo.png"), Path("a/photo.png"), "image"),
             InputItem(Path("/e/a/photo.png"), Path("a/photo.png"), "image"),
             InputItem(Path("/d/a/PHOTO.jpg"), Path("a/PHOTO.jpg"), "image"),  # case-insensitive FS
             InputItem(Path("/d/a/photo.jpg"), Path("a/photo.jpg"), "image"),  # same path again
             InputItem(Path("/d/ocula-report.png"), Path("ocula-report.png"), "image"),
             InputItem(Path("/d/gone"), Path("gone"), "error", "gone: not found"),
             InputItem(Path("/d/b/photo.jpg"), Path("b/photo.jpg"), "image")]
    assert store.add_items(job, items) == 7
    keys = {i.path: i.out_key for i in store.job_items(job)}
    assert keys == {"/d/a/photo.jpg": "a/photo", "/d/a/photo.png": "a/photo_png",
                    "/e/a/photo.png": "a/photo_png-2", "/d/a/PHOTO.jpg": "a/PHOTO_jpg",
                    "/d/ocula-report.png": "_ocula-report", "/d/gone": "",
                    "/d/b/photo.jpg": "b/photo"}
    assert store.counts(job) == {"pending": 6, "running": 0, "done": 0, "failed": 1}
    failed = list(store.job_items(job, "failed"))
    assert [f.error for f in failed] == ["gone: not found"]
    # Queuing again (a resumed expansion) adds nothing and keeps every name.
    assert store.add_items(job, items) == 0
    assert {i.path: i.out_key for i in store.job_items(job)} == keys


def test_states_records_and_listing(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job(spec(tmp_path))
    store.add_items(job, (InputItem(Path(f"/x/{i}.png"), Path(f"{i}.png"), "image")
                          for i in range(5)))
    store.mark_running(job, [0, 1])
    store.record(job, [(0, "done", None, ["/o/0.png"], {"k": 1}, time.time()),
                       (1, "failed", "broken", [], {}, time.time())])
    assert [i.seq for i in store.pending_items(job, batch=2)] == [2, 3, 4]
    done = list(store.job_items(job, "done"))
    assert done[0].outputs == ["/o/0.png"] and done[0].info == {"k": 1}
    assert done[0].attempts == 1 and done[0].duration_s is not None
    (record,) = store.list_jobs()
    assert (record.id, record.total, record.done, record.failed, record.pending) == (
        job, 5, 1, 1, 3)
    # The stored spec has absolute paths so a resume works from any folder.
    assert store.spec(job).output_dir == str((tmp_path / "out").resolve())
    store.add_segment(job, 2, SegmentRecord(0, "/w/seg0.mov", 0, 12, 5632, 12,
                                            {"tracker": {"next_id": 3}}))
    assert store.segments(job, 2)[0].state == {"tracker": {"next_id": 3}}
    store.clear_segments(job, 2)
    assert store.segments(job, 2) == []


def test_store_is_shared_across_threads(tmp_path):
    import threading

    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job(spec(tmp_path))
    errors = []

    def add(offset: int) -> None:
        try:
            other = JobStore(store.path)
            other.add_items(job, (InputItem(Path(f"/t{offset}/{i}.png"), Path(f"t{offset}/{i}.png"),
                                            "image") for i in range(200)), chunk=50)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.counts(job)["pending"] == 600


class PeakMemory:
    """Peak memory growth of a block: the kernel's own high-water mark (VmHWM, reset
    through /proc/self/clear_refs) where Linux allows it, else tracemalloc (slower,
    Python objects only)."""

    def __enter__(self):
        self.kernel = _reset_hwm()
        if self.kernel:
            self.base = _status_kib("VmRSS")
        else:
            tracemalloc.start()
        return self

    def __exit__(self, *exc):
        if self.kernel:
            self.peak_mib = (_status_kib("VmHWM") - self.base) / 1024
        else:
            self.peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def test_queue_of_100k_inputs_streams_in_bounded_memory(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job(spec(tmp_path))
    n = 100_000

    def synthetic():  # a generator: the inputs never exist as a list
        for i in range(n):
            yield InputItem(f"/data/set{i % 97}/img{i:06d}.jpg",
                            f"set{i % 97}/img{i:06d}.jpg", "image")

    began = time.perf_counter()
    with PeakMemory() as insert_mem:
        assert store.add_items(job, synthetic()) == n
    insert_s = time.perf_counter() - began
    began = time.perf_counter()
    count, last = 0, -1
    with PeakMemory() as read_mem:
        for item in store.pending_items(job):
            assert item.seq > last
            last = item.seq
            count += 1
    read_s = time.perf_counter() - began
    assert count == n
    print(f"100k inputs: insert {insert_s:.2f} s, read {read_s:.2f} s, peak growth "
          f"{insert_mem.peak_mib:.1f} / {read_mem.peak_mib:.1f} MiB")
    # Holding 100k items as Python objects would take 25–60 MiB; the queue stays low.
    assert insert_mem.peak_mib < 16 and read_mem.peak_mib < 16
    assert insert_s < 60 and read_s < 60  # generous: a shared 2-core machine
