"""One typed contract per task: the options a job of that task takes.

Each task has one frozen dataclass (CaptionOptions, DetectOptions, SegmentOptions,
RestoreOptions, ExplainOptions, all extending JobOptions for what every job shares:
output formats, batching, video). Each field carries an `Option` (kind, range, choices,
help, label, group) as metadata, and everything else is derived from it:

* the CLI builds `ocula <task>`'s flags, types, defaults and help text (engine.cli),
* the GUI builds the task's settings form (desktop/views/options_form.py),
* the job spec validates with `parse_options` (unknown keys are an error that suggests
  the nearest name) and recipes store `options_dict` (the non-default values).

A base module: it imports nothing from the engine but engine.errors and engine.vocabulary.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.errors import OptionError
from engine.vocabulary import (
    EXPLAIN_METHOD_ALIASES,
    EXPLAIN_METHOD_WORDS,
    EXPLAIN_METHODS,
    FORMATS,
    HEAD_FUSIONS,
    IMAGE_FORMATS,
    SEGMENT_MODES,
    SPEED_MODES,
    VIDEO_CODECS,
    VIDEO_FRAME_SELECTIONS,
)

# kind -> what a value looks like. Lists are tuples in the dataclass (frozen, hashable).
KINDS = ("int", "float", "bool", "str", "choice", "str_list", "formats", "points", "boxes",
         "time_range", "point")
GROUPS = ("task", "output", "video", "advanced")  # GUI sections; CLI help groups


@dataclass(frozen=True)
class Option:
    """What one option is: everything a front end needs to offer it."""

    kind: str
    help: str
    label: str = ""  # GUI label; default: the help's first words
    low: float | None = None  # inclusive range for int/float
    high: float | None = None
    choices: tuple[str, ...] | None = None  # kind "choice"
    group: str = "task"
    none_label: str | None = None  # what None means here ("automatic", "model default")
    step: float | None = None  # GUI spin-box step
    name: str = ""  # filled in by `options_of`
    default: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def opt(kind: str, default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field holding its Option (the contract's one way to declare a field)."""
    if kind not in KINDS:
        raise ValueError(f"unknown option kind {kind!r}")
    return field(default=default, metadata={"option": Option(kind, help, **spec)})


@dataclass(frozen=True)
class JobOptions:
    """What every job shares: outputs, batching, image limits, video handling."""

    task: ClassVar[str] = ""

    formats: tuple[str, ...] | None = opt(
        "formats", None, "output files to write, e.g. coco,overlay (default: the task's set)",
        label="Outputs", group="output", none_label="task default")
    batch_size: int | None = opt(
        "int", None, "images per forward pass (default: the task's)", label="Batch size",
        low=1, high=256, group="advanced", none_label="task default")
    pixel_limit: int | None = opt(
        "int", None, "largest image accepted, in pixels (default: Settings, 178,956,970)",
        label="Largest image (pixels)", low=1, high=2**31 - 1, group="advanced",
        none_label="settings", step=1_000_000)
    # video inputs
    every_nth_frame: int = opt("int", 1, "video: process every Nth frame", low=1, high=10_000,
                               label="Every Nth frame", group="video")
    time_range: tuple[float, ...] | None = opt(
        "time_range", None, "video: only START[,END] seconds", label="Time range (s)",
        group="video", none_label="whole video")
    frames: str | None = opt(
        "choice", None, "video: which frames (default: scenes for captions, else all)",
        choices=VIDEO_FRAME_SELECTIONS, label="Frames", group="video",
        none_label="task default")
    scene_threshold: float = opt("float", 0.15, "video: how different a frame must be to "
                                 "start a new scene (0-1)", low=0.0, high=1.0, step=0.05,
                                 label="Scene change", group="video")
    segment_seconds: float = opt("float", 20.0, "video: seconds per resumable output segment",
                                 low=0.1, high=3600.0, step=1.0, label="Segment length (s)",
                                 group="video")
    video_output: bool | None = opt(
        "bool", None, "video: write an annotated/restored video (default: yes, except for "
        "captions)", label="Write a video", group="video", none_label="task default")
    annotations: bool = opt("bool", True, "video: per-frame results as JSONL",
                            label="Per-frame JSONL", group="video")
    hold_results: bool = opt("bool", True, "video: draw the last results on frames that "
                             "were not processed", label="Hold results", group="video")
    video_codec: str | None = opt("choice", None, "video: codec of the written video "
                                  "(default: the input's, when it can be written)",
                                  choices=VIDEO_CODECS, label="Codec", group="video",
                                  none_label="like the input")
    crf: int | None = opt("int", None, "video: encoder quality (0 lossless - 51 worst)",
                          low=0, high=51, label="Quality (CRF)", group="video",
                          none_label="encoder default")
    video_preset: str | None = opt(
        "choice", None, "video: encoder speed preset", label="Encoder preset", group="video",
        choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                 "slower", "veryslow"), none_label="encoder default")
    allow_partial_video: bool = opt("bool", False, "video: keep the frames of a truncated "
                                    "video instead of failing it", label="Accept truncated",
                                    group="video")


def _speed() -> Any:
    """The token-merging speed mode of the tasks whose models have ViT encoders."""
    return opt("choice", "off", "ViT, DeiT and DINOv2 encoders (ViT-GPT2's too): merge similar "
               "image tokens as the model runs (ToMe); balanced ≈1.4×, fast ≈2× encoder "
               "throughput, outputs change slightly; attention maps still cover every patch. "
               "Torch models only: others refuse it", choices=SPEED_MODES, label="Speed")


@dataclass(frozen=True)
class CaptionOptions(JobOptions):
    task: ClassVar[str] = "caption"

    prompt: str | None = opt("str", None, "text the caption starts from (BLIP, GIT), or a "
                             "Florence-2 task token", label="Prompt", none_label="none")
    max_new_tokens: int = opt("int", 30, "longest caption, in tokens", low=1, high=512,
                              label="Max tokens")
    num_beams: int = opt("int", 1, "beam search width (1 = greedy)", low=1, high=16,
                         label="Beams")
    speed: str = _speed()


@dataclass(frozen=True)
class DetectOptions(JobOptions):
    task: ClassVar[str] = "detect"

    threshold: float = opt("float", 0.5, "minimum score of a box (0-1)", low=0.0, high=1.0,
                           step=0.05, label="Score threshold")
    nms_iou: float | None = opt("float", None, "overlap above which boxes are merged (0-1)",
                                low=0.0, high=1.0, step=0.05, label="Overlap (NMS IoU)",
                                none_label="model default")
    max_detections: int = opt("int", 100, "most boxes kept per image", low=1, high=10_000,
                              label="Max boxes")
    classes: tuple[str, ...] | None = opt(
        "str_list", None, "comma-separated class filter, or what to find (open-vocabulary "
        "models)", label="Find these", none_label="all classes")
    track: bool | None = opt("bool", None, "video: keep box identities across frames "
                             "(default: on)", label="Track objects", group="video",
                             none_label="on")
    track_high: float = opt("float", 0.5, "video: score that starts a track", low=0.0,
                            high=1.0, step=0.05, label="Track start score", group="video")
    track_low: float = opt("float", 0.1, "video: lowest score that continues a track",
                           low=0.0, high=1.0, step=0.05, label="Track keep score",
                           group="video")
    track_iou: float = opt("float", 0.3, "video: overlap that matches a box to a track",
                           low=0.0, high=1.0, step=0.05, label="Track match IoU",
                           group="video")


@dataclass(frozen=True)
class SegmentOptions(JobOptions):
    task: ClassVar[str] = "segment"

    threshold: float = opt("float", 0.5, "minimum score of a segment (0-1)", low=0.0,
                           high=1.0, step=0.05, label="Score threshold")
    mode: str | None = opt("choice", None, "what to segment (default: the model's first)",
                           choices=SEGMENT_MODES, label="Mode", none_label="model default")
    points: tuple[tuple[float, ...], ...] | None = opt(
        "points", None, "SAM: point prompts as x,y (x,y,0 for background)",
        label="Point prompts", none_label="none")
    boxes: tuple[tuple[float, ...], ...] | None = opt(
        "boxes", None, "SAM: box prompts as x0,y0,x1,y1", label="Box prompts",
        none_label="none")


@dataclass(frozen=True)
class RestoreOptions(JobOptions):
    task: ClassVar[str] = "restore"

    tile_size: int | None = opt("int", None, "tile edge in pixels (default: from free memory)",
                                low=16, high=8192, step=64, label="Tile size (px)",
                                none_label="automatic")
    tile_overlap: int = opt("int", 32, "overlap between tiles in pixels", low=0, high=512,
                            step=8, label="Tile overlap (px)")
    output_format: str = opt("choice", "png", "file format of restored images",
                             choices=IMAGE_FORMATS, label="Save as", group="output")
    quality: int | None = opt("int", None, "JPEG/WebP quality (1-100)", low=1, high=100,
                              label="Quality", group="output", none_label="format default")


@dataclass(frozen=True)
class ExplainOptions(JobOptions):
    task: ClassVar[str] = "explain"

    method: str = opt("choice", "rollout", "attention-map method",
                      choices=EXPLAIN_METHODS + EXPLAIN_METHOD_WORDS
                      + tuple(EXPLAIN_METHOD_ALIASES), label="Method")
    layer: int | None = opt("int", None, "layer index (default: last)", low=-64, high=64,
                            label="Layer", none_label="last")
    head: int | None = opt("int", None, "head index (default: heads fused)", low=0, high=64,
                           label="Head", none_label="all")
    head_fusion: str = opt("choice", "mean", "how heads are fused", choices=HEAD_FUSIONS,
                           label="Heads combined by")
    discard_ratio: float = opt("float", 0.0, "rollout: share of the weakest attention "
                               "dropped per layer", low=0.0, high=0.99, step=0.05,
                               label="Rollout discard ratio")
    start_layer: int = opt("int", 0, "rollout/relevance: first layer used", low=0, high=64,
                           label="Start layer", group="advanced")
    target: int | None = opt("int", None, "class index for relevance / Grad-CAM (default: "
                             "the top class)", low=0, high=100_000, label="Target class",
                             group="advanced", none_label="top class")
    patch: tuple[float, ...] | None = opt("point", None, "similarity: the clicked point x,y",
                                          label="Clicked point", none_label="none")
    threshold: float = opt("float", 0.5, "similarity: cosine above which a patch joins the "
                           "segment", low=-1.0, high=1.0, step=0.05,
                           label="Similarity threshold", group="advanced")
    keep_mass: float = opt("float", 0.6, "dino: share of the CLS attention mass kept",
                           low=0.01, high=1.0, step=0.05, label="DINO kept mass",
                           group="advanced")
    max_new_tokens: int = opt("int", 20, "captioners: tokens to generate and map", low=1,
                              high=512, label="Max tokens", group="advanced")
    prompt: str | None = opt("str", None, "captioners: text the caption starts from",
                             label="Prompt", group="advanced", none_label="none")
    detection_threshold: float = opt("float", 0.7, "DETR: score of the objects mapped",
                                     low=0.0, high=1.0, step=0.05,
                                     label="Object score", group="advanced")
    discover_algorithm: str = opt("choice", "tokencut", "discover: TokenCut (normalized cut) "
                                  "or LOST (seed expansion)", choices=("tokencut", "lost"),
                                  label="Discovery algorithm")
    discover_tau: float = opt("float", 0.2, "discover (TokenCut): cosine above which two "
                              "patches are linked", low=-1.0, high=1.0, step=0.05,
                              label="TokenCut tau", group="advanced")
    discover_features: str = opt("choice", "auto", "discover: the last layer's keys, its "
                                 "output tokens, or auto (the graph that cuts better)",
                                 choices=("auto", "keys", "tokens"), label="Discovery features",
                                 group="advanced")
    discover_foreground: str = opt("choice", "attention", "discover (TokenCut): foreground = "
                                   "the side the CLS attends to, or the eigenvector's peak side "
                                   "(the paper)", choices=("attention", "eigenvector"),
                                   label="Discovery foreground", group="advanced")
    lost_k: int = opt("int", 100, "discover (LOST): lowest-degree patches that expand the "
                      "seed", low=1, high=100_000, label="LOST k", group="advanced")
    suppress_artifacts: bool = opt("bool", False, "leave high-norm artifact tokens out of "
                                   "rollout and similarity maps", label="Suppress artifact tokens",
                                   group="advanced")
    artifact_k: float = opt("float", 3.0, "artifact token: norm above mean + k·std of the "
                            "patch-token norms", low=0.0, high=100.0, step=0.5,
                            label="Artifact threshold (std)", group="advanced")
    speed: str = _speed()


OPTIONS: dict[str, type[JobOptions]] = {
    cls.task: cls for cls in (CaptionOptions, DetectOptions, SegmentOptions, RestoreOptions,
                              ExplainOptions)}


def options_class(task: str) -> type[JobOptions]:
    try:
        return OPTIONS[task]
    except KeyError:
        raise OptionError(f"task '{task}' is not one of {', '.join(OPTIONS)}.") from None


def options_of(cls: type[JobOptions] | JobOptions) -> list[Option]:
    """Every option of a task, in declaration order (shared ones first)."""
    out = []
    for f in dataclasses.fields(cls):
        spec: Option | None = f.metadata.get("option")
        if spec is None:
            continue
        out.append(dataclasses.replace(spec, name=f.name, default=f.default,
                                       label=spec.label or f.name.replace("_", " ").capitalize()))
    return out


def defaults(task: str) -> JobOptions:
    return options_class(task)()


# -- validation -------------------------------------------------------------------------------


def parse_options(task: str, data: Mapping[str, Any] | JobOptions | None, *,
                  cls: type[JobOptions] | None = None) -> JobOptions:
    """A mapping (a recipe's [options], the CLI's flags, the GUI's form) as the task's
    typed options. Unknown keys, wrong types and out-of-range values raise OptionError
    naming the option and the fix."""
    cls = cls or options_class(task)
    if isinstance(data, JobOptions):
        if isinstance(data, cls):
            return data
        data = options_dict(data)
    specs = {o.name: o for o in options_of(cls)}
    values: dict[str, Any] = {}
    for key, value in dict(data or {}).items():
        spec = specs.get(key)
        if spec is None:
            raise OptionError(_unknown(key, task, specs))
        if value is None:
            continue  # None = the default (TOML has no null; a GUI "automatic" passes None)
        values[key] = _check(spec, value, task)
    return cls(**values)


def _unknown(key: str, task: str, specs: Mapping[str, Option]) -> str:
    close = difflib.get_close_matches(key, list(specs), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (f"option '{key}' is not a {task} option.{hint} Known: {', '.join(specs)} "
            f"(`ocula {task} --help` explains each).")


def _number(spec: Option, value: Any, task: str, integral: bool) -> float | int:
    ok = isinstance(value, int) if integral else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (not integral and not math.isfinite(value)):
        raise OptionError(f"option '{spec.name}' must be a {'whole number' if integral else 'number'}"
                          f"{_range_text(spec)} (got {value!r}).")
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise OptionError(f"option '{spec.name}' must be{_range_text(spec)} (got {value!r}).")
    return int(value) if integral else float(value)


def _range_text(spec: Option) -> str:
    if spec.low is not None and spec.high is not None:
        return f" from {_fmt(spec.low)} to {_fmt(spec.high)}"
    if spec.low is not None:
        return f" ≥ {_fmt(spec.low)}"
    return ""


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _numbers(spec: Option, value: Any, sizes: tuple[int, ...], shape: str) -> tuple[float, ...]:
    given = value
    if isinstance(value, str):  # the CLI's "320,240"
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            value = None
    if (not isinstance(value, (list, tuple)) or len(value) not in sizes
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in value)):
        hint = (" (an input after a list flag is read as one of its values: put inputs "
                "first, or end the list with another option)" if isinstance(given, str) else "")
        raise OptionError(f"option '{spec.name}' takes {shape}; {given!r} is not one{hint}.")
    return tuple(float(v) for v in value)


def _check(spec: Option, value: Any, task: str) -> Any:
    kind = spec.kind
    if kind in ("int", "float"):
        return _number(spec, value, task, kind == "int")
    if kind == "bool":
        if not isinstance(value, bool):
            raise OptionError(f"option '{spec.name}' must be true or false (got {value!r}).")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise OptionError(f"option '{spec.name}' must be text (got {value!r}).")
        return value.strip() or None
    if kind == "choice":
        if value not in (spec.choices or ()):
            raise OptionError(f"option '{spec.name}' must be one of {', '.join(spec.choices or ())}"
                              f" (got {value!r}).")
        return value
    if kind in ("str_list", "formats"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise OptionError(f"option '{spec.name}' must be a list of names (got {value!r}).")
        items = tuple(v.strip() for v in items if v.strip())
        if kind == "formats":
            known = FORMATS.get(task, ())
            unknown = [v for v in items if v not in known]
            if unknown:
                raise OptionError(f"unknown output format(s) for {task}: {', '.join(unknown)}. "
                                  f"Choose from {', '.join(known)}.")
        return items or None
    if kind in ("points", "boxes"):
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"option '{spec.name}' must be a list (got {value!r}).")
        sizes, shape = ((2, 3), "x,y points (x,y,0 for background)") if kind == "points" \
            else ((4,), "x0,y0,x1,y1 boxes")
        return tuple(_numbers(spec, v, sizes, shape) for v in value) or None
    if kind == "point":
        return _numbers(spec, value, (2,), "one x,y point")
    if kind == "time_range":
        tr = _numbers(spec, value, (1, 2), "[start_s] or [start_s, end_s]")
        if tr[0] < 0 or (len(tr) == 2 and tr[1] <= tr[0]):
            raise OptionError(f"option 'time_range' must be [start_s, end_s] with end after "
                              f"start, or [start_s] to run to the end (got {value!r}).")
        return tr
    raise AssertionError(kind)


# -- serialising -------------------------------------------------------------------------------


def options_dict(options: JobOptions, *, changed_only: bool = True) -> dict[str, Any]:
    """Plain values (lists, not tuples) for TOML/JSON; by default only what differs from
    the task's defaults (a recipe says what was chosen, not every default), never None."""
    out: dict[str, Any] = {}
    for spec in options_of(options):
        value = getattr(options, spec.name)
        if value is None or (changed_only and value == spec.default):
            continue
        out[spec.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
