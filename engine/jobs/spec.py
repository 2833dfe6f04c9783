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

Relative paths in a recipe FILE are relative to the file's folder, so a recipe kept
next to its data runs the same from any working directory.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UsageError

TASKS = ("caption", "detect", "segment", "restore", "explain")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
VIDEO_CODECS = ("h264", "h265", "vp9", "ffv1")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
RECIPE_VERSION = 1

# Known options and their checks; other keys pass through to the task handler.
_POSITIVE_INT = ("every_nth_frame", "batch_size", "tile_size", "crf", "max_new_tokens")
_UNIT_FLOAT = ("threshold", "scene_threshold", "track_high", "track_low", "track_iou")


class RecipeError(UsageError):
    """A job recipe or spec is invalid; the message names the field and the fix."""


@dataclass
class JobSpec:
    task: str
    model: str
    inputs: list[str]
    output_dir: str
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> JobSpec:
        """Raise RecipeError naming the first wrong field; return self when valid."""
        if self.task not in TASKS:
            raise RecipeError(f"job task '{self.task}' is not one of {', '.join(TASKS)}.")
        if not isinstance(self.model, str) or not self.model.strip():
            raise RecipeError("job model is empty; give a catalog id or a hub repo id.")
        if (not isinstance(self.inputs, list) or not self.inputs
                or not all(isinstance(p, str) and p for p in self.inputs)):
            raise RecipeError("job inputs must be a non-empty list of paths, folders or globs.")
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            raise RecipeError("job output_dir is empty; choose a folder for the results.")
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise RecipeError(f"job device '{self.device}' is not auto, cpu, mps, cuda or "
                              f"cuda:N.")
        if self.precision not in PRECISIONS:
            raise RecipeError(f"job precision '{self.precision}' is not one of "
                              f"{', '.join(PRECISIONS)}.")
        if not isinstance(self.options, dict):
            raise RecipeError("job options must be a table of settings.")
        _validate_options(self.options)
        return self

    # -- recipes ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "job": {"version": RECIPE_VERSION, "task": self.task, "model": self.model,
                    "inputs": list(self.inputs), "output_dir": self.output_dir,
                    "device": self.device, "precision": self.precision},
            "options": dict(self.options),
        }

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
                   precision=job.get("precision", "auto"))
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


def _validate_options(options: dict[str, Any]) -> None:
    for key, value in options.items():
        if value is None:
            raise RecipeError(f"option '{key}' has no value; remove it to use the default.")
        if key in _POSITIVE_INT and (not isinstance(value, int) or isinstance(value, bool)
                                     or value < 1):
            if key == "crf" and isinstance(value, int) and value == 0:
                continue  # crf 0 is lossless
            raise RecipeError(f"option '{key}' must be a whole number ≥ 1 (got {value!r}).")
        if key in _UNIT_FLOAT and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                   or not 0.0 <= float(value) <= 1.0):
            raise RecipeError(f"option '{key}' must be a number from 0 to 1 (got {value!r}).")
    if "time_range" in options:
        tr = options["time_range"]
        ok = (isinstance(tr, list) and 1 <= len(tr) <= 2
              and all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0
                      for t in tr))
        if not ok or (len(tr) == 2 and tr[1] <= tr[0]):
            raise RecipeError(f"option 'time_range' must be [start_s, end_s] with end after "
                              f"start, or [start_s] to run to the end (got {tr!r}).")
    if "segment_seconds" in options:
        seg = options["segment_seconds"]
        if not isinstance(seg, (int, float)) or isinstance(seg, bool) or seg <= 0:
            raise RecipeError(f"option 'segment_seconds' must be a positive number "
                              f"(got {seg!r}).")
    codec = options.get("video_codec")
    if codec is not None and codec not in VIDEO_CODECS:
        raise RecipeError(f"option 'video_codec' must be one of {', '.join(VIDEO_CODECS)} "
                          f"(got {codec!r}).")
    select = options.get("frames")
    if select is not None and select not in ("all", "keyframes", "scenes"):
        raise RecipeError(f"option 'frames' must be all, keyframes or scenes (got {select!r}).")
    exports = options.get("export")
    if exports is not None and (not isinstance(exports, list)
                                or not all(isinstance(e, str) for e in exports)):
        raise RecipeError(f"option 'export' must be a list of format names (got {exports!r}).")
