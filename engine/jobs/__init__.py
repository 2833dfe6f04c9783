"""Jobs: the one spine the CLI and the GUI share.

    spec = JobSpec(task="detect", model="…", inputs=["photos", "clip.mp4"], output_dir="out")
    summary = run_job(spec, on_event=print)          # or LocalJobExecutor().submit(spec)
    resume_job(summary.job_id)                         # after a crash, quit or cancel

Task handlers are registered per task with `register_handler`; the built-in ones
(engine.jobs.task_handlers) are named in engine.jobs.handler_registry and load on first use. Everything heavy (PyAV, models) loads only when a job runs.
"""
from engine.jobs.job_events import EVENT_KINDS, Failure, JobEvent, JobSummary, PauseToken
from engine.jobs.handler_protocol import (
    BaseHandler,
    ItemHandler,
    ItemResult,
    get_handler,
    register_handler,
    registered_tasks,
    unregister_handler,
)
from engine.jobs.outputs import FrameInfo, FrameOutput, OutputPlan
from engine.jobs.job_loop import resume_job, run_job
from engine.jobs.executors import JobHandle, JobExecutor, LocalJobExecutor
from engine.jobs.spec import JobSpec, RecipeError
from engine.jobs.store import ItemRecord, JobRecord, JobStore


def list_jobs(store: JobStore | None = None) -> list[JobRecord]:
    return (store or JobStore()).list_jobs()


def job_items(job_id: str, state: str | None = None, *,
              store: JobStore | None = None):
    """Items of a job (streamed), optionally only those in `state`."""
    return (store or JobStore()).job_items(job_id, state)


__all__ = [
    "EVENT_KINDS", "BaseHandler", "Failure", "FrameInfo", "FrameOutput", "ItemHandler",
    "ItemRecord", "ItemResult", "JobEvent", "JobHandle", "JobRecord", "JobExecutor", "JobSpec",
    "JobStore", "JobSummary", "LocalJobExecutor", "OutputPlan", "PauseToken", "RecipeError",
    "get_handler", "job_items", "list_jobs", "register_handler", "registered_tasks",
    "resume_job", "run_job", "unregister_handler",
]
