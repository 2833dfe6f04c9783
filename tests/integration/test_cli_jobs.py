"""`ocula jobs …` and resuming by running the same command again (issue 16).

A CLI job killed with SIGKILL is resumed by the same command: every input is processed
exactly once overall. `ocula jobs list|show|resume|forget` work on the store, a job left
"running" by a dead process is listed as "interrupted", and a damaged job store is one
message naming the file and `ocula jobs reset-store`, never a traceback.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.jobs import JobSpec, JobStore
from tests.fixtures.media import make_images

ROOT = Path(__file__).resolve().parents[2]
MODEL = "swin2sr-x2"  # a curated restore card (resolved offline); the test handler runs
CLI_WITH_TEST_HANDLERS = (
    "import sys; from tests.fixtures.media import register_test_handlers; "
    "register_test_handlers(); from engine.cli import main; raise SystemExit(main(sys.argv[1:]))")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh OCULA_HOME (settings and job store) for this test and its subprocesses."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("OCULA_HOME", str(path))
    return path


def cli_process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI_WITH_TEST_HANDLERS, *args], cwd=ROOT,
                            env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_until(predicate, timeout: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def json_out(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_killed_cli_job_resumes_when_the_same_command_runs_again(home, tmp_path, capsys,
                                                                  test_handlers):
    inputs = make_images(tmp_path / "in", 12, size=(16, 12))
    log, out = tmp_path / "processed.log", tmp_path / "out"
    recipe = tmp_path / "job.toml"
    recipe.write_text(JobSpec("restore", MODEL, [str(tmp_path / "in")], str(out), options={
        "test_delay_s": 0.15, "test_log": str(log)}).to_toml())
    command = ["run", "--recipe", str(recipe), "--quiet"]

    first = cli_process(command)
    try:
        wait_until(lambda: len(lines(log)) >= 3 or first.poll() is not None, what="3 inputs")
        time.sleep(0.05)  # inside the next input's delay: the third one's "done" is stored
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(10)
    assert first.returncode == -signal.SIGKILL
    done_before = len(lines(log))
    assert 3 <= done_before < 12

    assert main(["jobs", "list", "--json"]) == 0
    (job,) = json_out(capsys)
    assert job["state"] == "interrupted" and job["resumable"] is True  # stored "running"
    assert (job["done"], job["total"]) == (done_before, 12)

    again = subprocess.run([sys.executable, "-c", CLI_WITH_TEST_HANDLERS, *command, "--json"],
                           cwd=ROOT, env=dict(os.environ), check=False, capture_output=True,
                           text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resuming job {job['id']} ({done_before} of 12 done)" in again.stderr
    summary = json.loads(again.stdout)
    assert (summary["job_id"], summary["done"], summary["failed"]) == (job["id"], 12, 0)
    processed = lines(log)
    assert sorted(processed) == sorted(str(p) for p in inputs)  # each input exactly once
    assert len(sorted(out.rglob("*.restored.png"))) == 12

    assert main(["jobs", "show", job["id"][-6:], "--json"]) == 0  # the id's end is enough
    shown = json_out(capsys)
    assert shown["state"] == "finished" and shown["spec"]["options"]["test_delay_s"] == 0.15
    assert main(["jobs", "forget", job["id"]]) == 0
    assert "outputs" in capsys.readouterr().out
    assert main(["jobs", "list", "--json"]) == 0
    assert json_out(capsys) == []
    assert len(list(out.rglob("*.restored.png"))) == 12  # forgetting keeps the outputs
    assert main(["jobs", "show", job["id"]]) == 2
    assert "no job" in capsys.readouterr().err


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _interrupted_job(store: JobStore, spec: JobSpec, done: int) -> str:
    """A job as a killed process leaves it: `done` inputs done, one "running", state
    "running" with a pid that is gone."""
    from engine.media.inputs import expand_inputs

    job_id = store.create_job(spec)
    store.add_items(job_id, expand_inputs(spec.inputs))
    store.mark_expanded(job_id)
    items = list(store.job_items(job_id))
    store.record(job_id, [(i.seq, "done", None, [], {}, time.time()) for i in items[:done]])
    store.mark_running(job_id, [items[done].seq])
    store.set_state(job_id, "running", pid=_dead_pid())
    return job_id


def test_the_same_task_command_resumes_and_restart_starts_fresh(home, tmp_path, monkeypatch,
                                                                 capsys, test_handlers):
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "in", 5, size=(8, 8))
    store = JobStore()
    spec = JobSpec("restore", MODEL, [str(tmp_path / "in")], str(tmp_path / "out"))
    job_id = _interrupted_job(store, spec, done=2)
    assert store.list_jobs()[0].state == "interrupted"
    other = _interrupted_job(store, JobSpec("restore", MODEL, [str(tmp_path / "in")],
                                            str(tmp_path / "out"), options={"tile_size": 64}),
                             done=1)  # another command (an option differs): not this one

    # the same command, with relative paths: the interrupted job goes on
    assert main(["restore", "in", "--model", MODEL, "--out", "out", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"resuming job {job_id} (2 of 5 done)" in captured.err
    summary = json.loads(captured.out)
    assert summary["job_id"] == job_id and summary["done"] == 5
    assert len(list((tmp_path / "out").glob("*.restored.png"))) == 3  # only the unfinished
    assert store.job_record(other).state == "interrupted"

    # --restart: a fresh job, everything done again
    assert main(["restore", "in", "-m", MODEL, "-o", "out", "--restart", "--json"]) == 0
    captured = capsys.readouterr()
    assert "resuming" not in captured.err
    fresh = json.loads(captured.out)
    assert fresh["job_id"] not in (job_id, other) and fresh["done"] == 5
    # the newest job with this command finished: running it again starts anew as well
    assert main(["restore", "in", "-m", MODEL, "-o", "out", "--json"]) == 0
    assert "resuming" not in capsys.readouterr().err

    # `jobs resume ID` finishes the other one
    assert main(["jobs", "resume", other, "--json"]) == 0
    assert json_out(capsys)["done"] == 5
    assert main(["jobs", "resume", other]) == 1
    assert "finished; nothing to resume" in capsys.readouterr().err


def test_a_damaged_job_store_is_one_message_and_reset_store_moves_it_aside(
        home, tmp_path, capsys, test_handlers):
    make_images(tmp_path / "in", 2, size=(8, 8))
    store_file = home / "jobs.sqlite"
    store_file.write_bytes(b"this is not a database, just garbage " * 100)
    for argv in (["jobs", "list"], ["jobs", "show", "x"],
                 ["restore", str(tmp_path / "in"), "-m", MODEL, "-o", str(tmp_path / "out")]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert str(store_file) in err and "ocula jobs reset-store" in err
    assert not (tmp_path / "out").exists()  # refused before any work

    assert main(["jobs", "list", "--json"]) == 1
    assert "reset-store" in json_out(capsys)["error"]
    assert main(["jobs", "reset-store"]) == 0
    assert "Moved the job store aside" in capsys.readouterr().out
    (moved,) = home.glob("jobs.sqlite.corrupt-*")
    assert moved.read_bytes().startswith(b"this is not a database")
    assert main(["jobs", "list", "--json"]) == 0
    assert json_out(capsys) == []
    assert main(["restore", str(tmp_path / "in"), "-m", MODEL, "-o", str(tmp_path / "out"),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["jobs", "reset-store"]) == 0  # a healthy store stays where it is
    assert "is fine; nothing moved" in capsys.readouterr().out
    assert store_file.exists()
