"""JobSpec: task + model + inputs + settings, saved as a TOML recipe and re-run identically.

A recipe file looks like:

    [job]
    task = "detect"
    model = "hustvl/yolos-tiny"
    inputs = ["photos", "clips/*.mp4"]
    output_dir = "out"
    device = "auto"
    precision = "auto"

    [options]
    threshold = 0.5
    every_nth_frame = 2

    [executor]          # optional: where the job runs (default: this machine)
    name = "ray"
    address = "auto"    # or "ray://head:10001"; absent: a local Ray runtime
    workers = 4

The executor is how a job runs, not what it computes: it is not part of the job's
identity in the store, so a job started on Ray resumes with the local executor (and
vice versa) and writes the same files.

Relative paths in a recipe FILE are relative to the file's folder, so a recipe kept
next to its data runs the same from any working directory.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UsageError
from engine.options import JobOptions, options_dict, parse_options
from engine.vocabulary import JOB_TASKS, normalize_device, normalize_precision

RECIPE_VERSION = 1
EXECUTORS = ("local", "ray")  # engine.jobs.executors.executor_for builds each


@dataclass(frozen=True)
class ExecutorChoice:
    """Where a job runs: "local" (this process / machine) or "ray" (a Ray cluster).

    Ray only: `address` None starts a local Ray runtime, "auto" joins the one `ray start`
    runs here, "ray://host:10001" a remote cluster; `workers` model replicas (None: as
    many as the cluster's CPUs allow at `threads_per_worker` each); `threads_per_worker`
    the torch / onnxruntime threads of each replica (None: the CPUs divided by
    `workers`, so replicas never oversubscribe cores); `gpus_per_worker` Ray's
    `num_gpus` per replica (0: CPU).
    """

    name: str = "local"
    address: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    gpus_per_worker: float = 0.0

    def validate(self) -> ExecutorChoice:
        if self.name not in EXECUTORS:
            raise RecipeError(f"executor '{self.name}' is not one of {', '.join(EXECUTORS)}.")
        if self.name == "local" and (self.address or self.workers or self.threads_per_worker
                                     or self.gpus_per_worker):
            raise RecipeError("address, workers, threads_per_worker and gpus_per_worker are "
                              "settings of the Ray executor; add `name = \"ray\"` (or "
                              "`--executor ray`).")
        for key in ("workers", "threads_per_worker"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise RecipeError(f"executor {key} must be a whole number ≥ 1, not {value!r}.")
        if not isinstance(self.gpus_per_worker, (int, float)) or self.gpus_per_worker < 0:
            raise RecipeError(f"executor gpus_per_worker must be ≥ 0, not "
                              f"{self.gpus_per_worker!r}.")
        if self.address is not None and (not isinstance(self.address, str)
                                         or not self.address.strip()):
            raise RecipeError("executor address is empty; give `auto` or ray://host:10001, "
                              "or leave it out to start a local Ray runtime.")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The recipe's [executor] table: only what differs from the defaults."""
        defaults = ExecutorChoice()
        return {key: getattr(self, key) for key in EXECUTOR_KEYS
                if getattr(self, key) != getattr(defaults, key)}

    @classmethod
    def from_dict(cls, data: Any) -> ExecutorChoice:
        if not isinstance(data, dict):
            raise RecipeError("recipe [executor] must be a table (name, address, workers…).")
        unknown = set(data) - set(EXECUTOR_KEYS)
        if unknown:
            raise RecipeError(f"recipe [executor] has unknown keys: "
                              f"{', '.join(sorted(unknown))} (known: {', '.join(EXECUTOR_KEYS)}).")
        return cls(**data).validate()


EXECUTOR_KEYS = ("name", "address", "workers", "threads_per_worker", "gpus_per_worker")


class RecipeError(UsageError):
    """A job recipe or spec is invalid; the message names the field and the fix."""


@dataclass
class JobSpec:
    """A job: task + model + inputs + output folder + placement + the task's typed options.

    `options` may be given as a mapping (a recipe's [options], a front end's form); it is
    parsed into the task's options dataclass (engine.options) at once, so a typo is an
    error here, not a silently ignored key later. A handler may extend its task's options
    (`options_class` on the handler class, as the test handlers do).
    """

    task: str
    model: str
    inputs: list[str]
    output_dir: str
    options: JobOptions | dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "auto"
    executor: ExecutorChoice = field(default_factory=ExecutorChoice)  # how, not what

    def __post_init__(self) -> None:
        if self.task not in JOB_TASKS:
            raise RecipeError(f"job task '{self.task}' is not one of {', '.join(JOB_TASKS)}.")
        if not isinstance(self.options, (dict, JobOptions)):
            raise RecipeError("job options must be a table of settings.")
        if not isinstance(self.executor, ExecutorChoice):
            raise RecipeError("job executor must be an ExecutorChoice.")
        self.executor.validate()
        try:
            self.options = parse_options(self.task, self.options,
                                         cls=_handler_options_class(self.task))
        except UsageError as exc:
            raise RecipeError(str(exc)) from exc

    def validate(self) -> JobSpec:
        """Raise RecipeError naming the first wrong field; return self when valid."""
        self.__post_init__()  # task and options again: a field may have been set since
        if not isinstance(self.model, str) or not self.model.strip():
            raise RecipeError("job model is empty; give a catalog id or a hub repo id.")
        if (not isinstance(self.inputs, list) or not self.inputs
                or not all(isinstance(p, str) and p for p in self.inputs)):
            raise RecipeError("job inputs must be a non-empty list of paths, folders or globs.")
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            raise RecipeError("job output_dir is empty; choose a folder for the results.")
        try:
            normalize_device(self.device if isinstance(self.device, str) else "?")
            normalize_precision(self.precision if isinstance(self.precision, str) else "?")
        except UsageError as exc:
            raise RecipeError(f"job {exc}") from exc
        return self

    @property
    def options_dict(self) -> dict[str, Any]:
        """The options that differ from the task's defaults, as plain values."""
        return options_dict(self.options)

    # -- recipes ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {
            "job": {"version": RECIPE_VERSION, "task": self.task, "model": self.model,
                    "inputs": list(self.inputs), "output_dir": self.output_dir,
                    "device": self.device, "precision": self.precision},
            "options": self.options_dict,
        }
        executor = self.executor.to_dict()
        if executor:
            data["executor"] = executor
        return data

    def to_toml(self) -> str:
        import tomli_w

        self.validate()
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | os.PathLike) -> Path:
        from engine.media.image import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, self.to_toml().encode("utf-8"))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: Path | None = None) -> JobSpec:
        job = data.get("job")
        if not isinstance(job, dict):
            raise RecipeError("recipe has no [job] table (task, model, inputs, output_dir).")
        version = job.get("version", RECIPE_VERSION)
        if version != RECIPE_VERSION:
            raise RecipeError(f"recipe version {version} is not supported (this Ocula reads "
                              f"version {RECIPE_VERSION}).")
        unknown = set(job) - {"version", "task", "model", "inputs", "output_dir", "device",
                              "precision"}
        if unknown:
            raise RecipeError(f"recipe [job] has unknown keys: {', '.join(sorted(unknown))}. "
                              f"Put task settings under [options].")
        for key in ("task", "model", "inputs", "output_dir"):
            if key not in job:
                raise RecipeError(f"recipe [job] is missing '{key}'.")
        inputs = job["inputs"]
        if isinstance(inputs, str):
            inputs = [inputs]
        output_dir = job["output_dir"]
        if base_dir is not None and isinstance(inputs, list):
            inputs = [_under(base_dir, p) for p in inputs]
            output_dir = _under(base_dir, output_dir)
        spec = cls(task=job["task"], model=job["model"], inputs=inputs, output_dir=output_dir,
                   options=dict(data.get("options", {})), device=job.get("device", "auto"),
                   precision=job.get("precision", "auto"),
                   executor=ExecutorChoice.from_dict(data.get("executor", {})))
        return spec.validate()

    @classmethod
    def from_toml(cls, text_or_path: str | os.PathLike) -> JobSpec:
        """Read a recipe from TOML text, or from a file when given a path.

        A `Path`, or a one-line string naming an existing file, is read as a file.
        """
        base_dir = None
        if isinstance(text_or_path, os.PathLike) or (
                isinstance(text_or_path, str) and "\n" not in text_or_path
                and "=" not in text_or_path):
            path = Path(text_or_path)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise RecipeError(f"recipe {path}: cannot be read ({exc.strerror}).") from exc
            base_dir = path.resolve().parent
            where = str(path)
        else:
            text = str(text_or_path)
            where = "recipe"
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{where}: not valid TOML ({exc}).") from exc
        try:
            return cls.from_dict(data, base_dir=base_dir)
        except RecipeError as exc:
            if where != "recipe":
                raise RecipeError(f"{where}: {exc}") from exc
            raise


def _under(base: Path, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else str(base / expanded)


def _handler_options_class(task: str):
    """The registered handler's own options class, when it extends the task's."""
    from engine.jobs.handler_registry import handler_options_class

    return handler_options_class(task)
