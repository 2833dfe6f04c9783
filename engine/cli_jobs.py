"""`ocula jobs list|show|resume|forget|reset-store`: the job store from the command line.

Every task command is a job in the store (OCULA_HOME/jobs.sqlite). A job killed or
cancelled half-way is resumed by running the same command again (engine.cli_tasks), or
here by its id. A job stored as running whose process is gone is listed as
"interrupted". A damaged store is never moved on its own: `ocula jobs reset-store` moves
it aside (jobs.sqlite.corrupt-<time>) and a new, empty one starts.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from engine.cli_output import emit
from engine.cli_tasks import (
    add_executor_arguments,
    executor_from_args,
    open_store,
    run_printed,
    say_resuming,
)
from engine.errors import InputError, UsageError

MAX_FAILURES_SHOWN = 20


def _find(store, text: str) -> str:
    """A job id, or a unique beginning or end of one (`…-a1b2c3`)."""
    if store.has_job(text):
        return text
    ids = [r.id for r in store.list_jobs()]
    matches = [i for i in ids if text and (i.startswith(text) or i.endswith(text))]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"'{text}' matches {len(matches)} jobs ({', '.join(matches[:5])}); "
                         f"give more of the id.")
    raise UsageError(f"no job '{text}' in {store.path}; see `ocula jobs list`.")


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def _record_dict(record) -> dict[str, Any]:
    from engine.cli_output import jsonable

    return dict(jsonable(record), resumable=record.state not in ("finished", "running",
                                                                  "paused"))


def cmd_jobs_list(args) -> int:
    store = open_store()
    records = store.list_jobs()

    def text() -> str:
        if not records:
            return "No jobs."
        lines = [(f"{'ID':24} {'STATE':11} {'TASK':8} {'DONE':>11} {'FAILED':>6}  "
                  f"{'CREATED':16}  MODEL → OUTPUT")]
        for r in records:
            lines.append(f"{r.id:24} {r.state:11} {r.task:8} {f'{r.done}/{r.total}':>11} "
                         f"{r.failed:>6}  {_when(r.created):16}  {r.model} → {r.output_dir}")
        if any(r.state == "interrupted" for r in records):
            lines.append("\nResume an interrupted job with `ocula jobs resume ID` (or run "
                         "its command again).")
        return "\n".join(lines)

    emit(args, [_record_dict(r) for r in records], text)
    return 0


def cmd_jobs_show(args) -> int:
    store = open_store()
    job_id = _find(store, args.job)
    record = store.job_record(job_id)
    spec = store.spec(job_id)
    failures = []
    for item in store.job_items(job_id, "failed"):
        failures.append({"input": item.path, "error": item.error or ""})
        if len(failures) >= MAX_FAILURES_SHOWN:
            break
    data = dict(_record_dict(record), spec=spec.to_dict(), failures=failures)

    def text() -> str:
        lines = [f"job {record.id}: {record.state}",
                 f"  {'task':10} {record.task}", f"  {'model':10} {record.model}",
                 f"  {'inputs':10} {', '.join(spec.inputs)}",
                 f"  {'output':10} {record.output_dir}",
                 (f"  {'progress':10} {record.done} of {record.total} done, "
                  f"{record.failed} failed, {record.pending} left"),
                 f"  {'created':10} {_when(record.created)} (updated {_when(record.updated)})"]
        if spec.options_dict:
            lines.append(f"  {'options':10} " + ", ".join(
                f"{k}={v}" for k, v in spec.options_dict.items()))
        if record.message:
            lines.append(f"  {'message':10} {record.message}")
        for failure in failures:
            lines.append(f"  failed: {failure['input']}: {failure['error']}")
        if record.failed > len(failures):
            lines.append(f"  … and {record.failed - len(failures)} more failed")
        if data["resumable"]:
            lines.append(f"Resume it with `ocula jobs resume {record.id}`.")
        return "\n".join(lines)

    emit(args, data, text)
    return 0


def cmd_jobs_resume(args) -> int:
    from engine.cli_output import user_settings
    from engine.jobs import resume_job

    store = open_store()
    job_id = _find(store, args.job)
    pid = store.live_pid(job_id)
    if pid is not None:
        raise InputError(f"job {job_id} is still running in process {pid}.")
    if store.job_record(job_id).state == "finished":
        raise InputError(f"job {job_id} is finished; nothing to resume (its outputs are in "
                         f"{store.job_row(job_id)['output_dir']}).")
    from engine.jobs.executors import job_run_for

    job_run = job_run_for(executor_from_args(args))  # any executor: the store knows what's done
    settings = user_settings()
    say_resuming(store, job_id)
    return run_printed(args, lambda printer: resume_job(
        job_id, on_event=printer, store=store, settings=settings, job_run=job_run))


def cmd_jobs_forget(args) -> int:
    store = open_store()
    job_id = _find(store, args.job)
    pid = store.live_pid(job_id)
    if pid is not None:
        raise InputError(f"job {job_id} is running in process {pid}; cancel it there first.")
    output_dir = store.job_row(job_id)["output_dir"]
    store.delete_job(job_id)
    emit(args, {"forgotten": job_id, "output_dir": output_dir},
         f"Forgot job {job_id}; its outputs in {output_dir} are kept.")
    return 0


def cmd_jobs_reset_store(args) -> int:
    """Move a damaged job store aside; a new, empty one starts on the next command."""
    from engine.jobs.store import default_store_path, move_store_aside, store_problem

    path = default_store_path()
    problem = store_problem(path)
    if problem is None and not args.force:
        emit(args, {"store": str(path), "moved_to": None, "problem": None},
             f"The job store {path} is fine; nothing moved (--force moves it aside anyway).")
        return 0
    try:
        moved = move_store_aside(path)
    except OSError as exc:
        raise InputError(f"the job store {path} cannot be moved aside ({exc.strerror}).") from exc
    emit(args, {"store": str(path), "moved_to": str(moved) if moved else None,
                "problem": problem},
         f"Moved the job store aside: {moved}. A new, empty one starts with the next job."
         if moved else f"There is no job store at {path}; nothing moved.")
    return 0


def add_jobs_commands(sub, add: Callable[..., argparse.ArgumentParser]) -> None:
    """`ocula jobs …` under the main parser (`add` adds a command with --json)."""
    jobs = sub.add_parser("jobs", help="list, show, resume and forget jobs (the job store)",
                          description=__doc__.split("\n\n")[1].replace("\n", " "))
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    add(jsub, "list", cmd_jobs_list, "list jobs, newest first (interrupted ones can be resumed)")
    p = add(jsub, "show", cmd_jobs_show, "show one job: its command, progress and failures")
    p.add_argument("job", metavar="ID", help="job id (or a unique beginning or end of one)")
    p = add(jsub, "resume", cmd_jobs_resume,
            "continue an interrupted, cancelled or failed job where it stopped")
    p.add_argument("job", metavar="ID")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_arguments(p.add_argument_group("executor"))
    p = add(jsub, "forget", cmd_jobs_forget,
            "remove a job from the store (its output files are kept)")
    p.add_argument("job", metavar="ID")
    p = add(jsub, "reset-store", cmd_jobs_reset_store,
            "move a damaged job store aside (to jobs.sqlite.corrupt-<time>) and start anew")
    p.add_argument("--force", action="store_true", help="move it aside even if it reads fine")
