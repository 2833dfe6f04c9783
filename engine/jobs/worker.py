"""Job worker process: `python -m engine.jobs.worker --store DB --job-id ID [--import MOD]`.

Runs (or resumes) one job from the store. Events go to stdout as JSON lines; the
commands "pause", "resume" and "cancel" arrive on stdin, one per line. If the
process dies (crash, kill), the store still says what is done: resume the job.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading

from engine.errors import OculaError
from engine.events import CancelToken
from engine.jobs.job_events import JobEvent, PauseToken
from engine.jobs.job_loop import resume_job
from engine.jobs.executors import _import_handlers, event_to_dict
from engine.jobs.store import JobStore

DEFAULT_IMPORTS: tuple[str, ...] = ()  # the built-in handlers load on first use


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.worker")
    parser.add_argument("--store", required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        help="module (or module:function) that registers task handlers; repeatable")
    args = parser.parse_args(argv)
    # Modules named with --import replace the defaults (tests register their own handlers).
    for module in (DEFAULT_IMPORTS if not args.imports else ()):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but something it needs is missing
                raise
    # "package.module" imports it; "package.module:function" also calls function().
    _import_handlers(args.imports)

    cancel, pause = CancelToken(), PauseToken()
    lock = threading.Lock()

    def emit(event: JobEvent) -> None:
        line = json.dumps(event_to_dict(event), default=str)
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def commands() -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "cancel":
                pause.resume()
                cancel.cancel()
            elif word == "pause":
                pause.pause()
            elif word == "resume":
                pause.resume()

    threading.Thread(target=commands, daemon=True).start()
    try:
        resume_job(args.job_id, on_event=emit, cancel=cancel, pause=pause,
                   store=JobStore(args.store))
    except OculaError as exc:
        with lock:
            sys.stdout.write(json.dumps({"kind": "", "job_id": args.job_id,
                                         "error": str(exc)}) + "\n")
            sys.stdout.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
