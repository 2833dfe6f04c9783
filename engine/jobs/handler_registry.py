"""The task-handler registry: which handler runs the jobs of each task.

Below both the handler protocol (engine.jobs.handler_protocol) and the job spec (which asks a
registered handler for its options class), so neither imports the other. The built-in
handlers are promised here by name and imported from engine.jobs.task_handlers on first
use: nothing needs importing "for its side effect" before a job can run.
"""
from __future__ import annotations

from typing import Any

from engine.errors import UsageError
from engine.registry import Registry

# task -> ItemHandler instance, class or factory. A task registered twice is an error
# (DuplicateRegistrationError) unless the second registration says replace=True.
HANDLERS: Registry[str, Any] = Registry("task handler", missing=UsageError)
BUILT_IN = {"detect": "DetectHandler", "segment": "SegmentHandler",
            "caption": "CaptionHandler", "restore": "RestoreHandler",
            "explain": "ExplainHandler"}
for _task, _name in BUILT_IN.items():
    HANDLERS.register_lazy(_task, "engine.jobs.task_handlers", _name)


def register_handler(task: str, handler: Any, *, replace: bool = False) -> None:
    """Register the handler for a task; a second handler for the same task raises
    DuplicateRegistrationError naming both, unless `replace=True` (tests, user overrides).

    `handler` is an ItemHandler instance (shared by every job of that task), or a
    class / zero-argument factory (a fresh handler per job, so two jobs of one task
    can run at once).
    """
    HANDLERS.register(task, handler, replace=replace, stacklevel=2)


def unregister_handler(task: str) -> None:
    HANDLERS.unregister(task)


def registered_tasks() -> list[str]:
    return sorted(HANDLERS)


def get_handler(task: str) -> Any:
    """A handler (an ItemHandler) for one job of `task`."""
    entry = HANDLERS.find(task)
    if entry is None:
        raise UsageError(f"no handler is registered for task '{task}'; register one with "
                         f"engine.jobs.register_handler('{task}', handler).")
    if isinstance(entry, type) or (callable(entry) and not hasattr(entry, "process_image")):
        entry = entry()
    for name in ("prepare", "process_image", "finish", "close"):
        if not hasattr(entry, name):
            raise UsageError(f"handler for task '{task}' ({type(entry).__name__}) has no "
                             f"'{name}' method; derive it from engine.jobs.BaseHandler.")
    return entry



def handler_options_class(task: str) -> type | None:
    """The options class the task's registered handler reads (its `options_class`), when
    it extends the task's own (engine.options); None for the task's default."""
    entry = HANDLERS.find(task)
    return getattr(entry, "options_class", None)
