"""`ocula models optimize ID --precision int8|fp16`: a quantized or half-precision ONNX
variant of a model, measured against its fp32 source through the task code a job uses.

    variant = make_variant(card, "int8", images, settings=settings)
    variant.recommended, variant.verdict   # "not recommended: mAP@0.5 vs fp32 boxes 0.93 …"

The fp32 source is the model's verified ONNX export (torch models: engine.export_onnx
makes it first) or, for ONNX models, the model's own graphs. Where the hub publishes the
variant (`onnx/model_quantized.onnx`, `onnx/model_fp16.onnx`) it is measured as it is;
otherwise it is made with engine.runtimes.quantize (the recipe the model family's entry in
its table names). The fp32 graph runs the task on the calibration images first: its results
are the reference, and the feeds it received calibrate a static quantization. Then the
variant runs the same task on the same images and engine.quality turns the two into
figures (mAP@0.5, mIoU, PSNR, token agreement, correlation); a variant is recommended only
when every figure passes (it loses at most 1 %), which is what precision "auto" on the CPU
then picks (engine.runtimes.loading).

This module runs the tasks, so it sits in the tools layer with engine.export_onnx.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import quality
from engine.errors import UnsupportedModelError, UsageError
from engine.paths import make_temp_dir
from engine.registry import Registry
from engine.runtimes.optimized import (
    VARIANT_MANIFEST,
    Variant,
    find_variant,
    onnx_runner_for_export,
    onnx_runner_for_variant,
    source_stamp,
    variant_dir,
)
from engine.runtimes.quantize import make_graph_variant, quantized_ops, recipe_for, record_feeds

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard
    from engine.media.image import LoadedImage
    from engine.runtimes.base import Runner
    from engine.settings import Settings

BUNDLED_IMAGES = 8  # the synthetic calibration set used without --calibration
MAX_CALIBRATION_IMAGES = 32
VARIANT_DETECT_THRESHOLD = 0.05  # the variant's boxes are ranked (mAP), not cut at the job's
# Small files a model's graphs need beside them (processor, labels, generation settings).
SIDE_FILES = ("config.json", "preprocessor_config.json", "processor_config.json",
              "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
              "merges.txt", "special_tokens_map.json", "added_tokens.json", "vocab.txt")


# -- calibration images ---------------------------------------------------------------------


def calibration_images(folder: str | os.PathLike | None = None, *,
                       limit: int = MAX_CALIBRATION_IMAGES) -> tuple[list[LoadedImage], str]:
    """(images, where they came from): the user's folder (its first `limit` images, sorted),
    or without one the bundled synthetic set."""
    from engine.media.image import from_pil, read_image
    from engine.media.inputs import expand_inputs

    if folder is None:
        return ([from_pil(image) for image in synthetic_set()],
                f"bundled ({BUNDLED_IMAGES} synthetic images)")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UsageError(f"--calibration {folder}: not a folder of images.")
    items = [i for i in expand_inputs([path]) if i.kind == "image"]
    images = [read_image(i.path) for i in sorted(items, key=lambda i: i.path)[:limit]]
    if not images:
        raise UsageError(f"--calibration {folder}: no images found there (png, jpg, webp, tiff…).")
    return images, str(path)


def synthetic_set(count: int = BUNDLED_IMAGES) -> list[Any]:
    """Deterministic photo-like images: gradients, noise, flat coloured shapes with hard
    edges, at a few sizes, so both smooth and detailed regions reach the activations."""
    from PIL import Image, ImageDraw

    from engine.export_onnx import sample_image

    images = []
    for index in range(count):
        rng = np.random.default_rng(1000 + index)
        width, height = (224, 160, 320, 192)[index % 4], (160, 224, 240, 192)[index % 4]
        image = sample_image((width, height), seed=index)
        draw = ImageDraw.Draw(image)
        for _ in range(3 + index % 3):
            x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            x1, y1 = x0 + int(rng.integers(20, 80)), y0 + int(rng.integers(20, 80))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        images.append(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return images


# -- how each task is measured ------------------------------------------------------------------


@dataclass(frozen=True)
class TaskMeasure:
    """Run the task on images, and compare the variant's results with fp32's."""

    task: str
    run: Callable[[Runner, Sequence[Any], bool], list[Any]]  # (runner, images, is_variant)
    compare: Callable[[Runner, Runner, Sequence[Any], list[Any], list[Any]],
                      list[quality.QualityFigure]]
    # what is timed, on what `prepare(fp32 runner, images)` makes of the images; default: run
    timed: Callable[[Runner, Sequence[Any], bool], list[Any]] | None = None
    prepare: Callable[[Runner, Sequence[Any]], Sequence[Any]] | None = None


MEASURES: Registry[str, TaskMeasure] = Registry("variant quality measure",
                                                missing=UnsupportedModelError)


def _measure(task: str):
    def deco(functions: tuple[Callable, ...]) -> TaskMeasure:
        measure = TaskMeasure(task, *functions)
        MEASURES.register(task, measure, where=f"engine.export_quantize ({task})")
        return measure
    return deco


def _detect_run(runner: Runner, images: Sequence[Any], is_variant: bool) -> list[Any]:
    from engine.options import DetectOptions
    from engine.tasks.detect import detect

    threshold = VARIANT_DETECT_THRESHOLD if is_variant else DetectOptions().threshold
    return detect(runner, images, threshold=threshold)


def _boxes(result: Any, threshold: float = 0.0) -> quality.ImageBoxes:
    kept = [b for b in result.boxes if b.score >= threshold]
    return quality.ImageBoxes.of([(b.x0, b.y0, b.x1, b.y1) for b in kept],
                                 [b.label_id for b in kept], [b.score for b in kept])


def _detect_compare(ref_runner: Runner, runner: Runner, images: Sequence[Any],
                    reference: list[Any], variant: list[Any]) -> list[quality.QualityFigure]:
    from engine.options import DetectOptions

    truth = [_boxes(r) for r in reference]
    # nothing found by fp32 anywhere: compare with what the variant finds at the job's threshold
    floor = 0.0 if any(len(t.labels) for t in truth) else DetectOptions().threshold
    return [quality.detection_map50(truth, [_boxes(v, floor) for v in variant])]


_measure("detect")((_detect_run, _detect_compare))


def _segment_run(runner: Runner, images: Sequence[Any], is_variant: bool) -> list[Any]:
    from engine.tasks.segment import segment

    return segment(runner, images)


def label_map(result: Any) -> np.ndarray:
    """One int label per pixel of a Segmentation (semantic map, alpha > 0.5, or instances)."""
    width, height = result.image_size
    if result.label_map is not None:
        return np.asarray(result.label_map)
    if result.alpha is not None:
        return (np.asarray(result.alpha) > 0.5).astype(np.int32)
    labels = np.full((height, width), -1, np.int32)
    for instance in sorted(result.instances, key=lambda i: i.score):
        labels[np.asarray(instance.mask, bool)] = instance.label_id
    return labels


def _segment_compare(ref_runner: Runner, runner: Runner, images: Sequence[Any],
                     reference: list[Any], variant: list[Any]) -> list[quality.QualityFigure]:
    return [quality.segmentation_miou([label_map(r) for r in reference],
                                      [label_map(v) for v in variant])]


_measure("segment")((_segment_run, _segment_compare))


def _restore_run(runner: Runner, images: Sequence[Any], is_variant: bool) -> list[Any]:
    from engine.tasks.restore import restore

    return [restore(runner, image, tile_size=256) for image in images]


def _restore_compare(ref_runner: Runner, runner: Runner, images: Sequence[Any],
                     reference: list[Any], variant: list[Any]) -> list[quality.QualityFigure]:
    return [quality.restoration_psnr([r.image for r in reference], [v.image for v in variant])]


_measure("restore")((_restore_run, _restore_compare))


def _caption_run(runner: Runner, images: Sequence[Any], is_variant: bool) -> list[Any]:
    from engine.tasks.caption import caption

    return caption(runner, images, max_new_tokens=20)


def _caption_compare(ref_runner: Runner, runner: Runner, images: Sequence[Any],
                     reference: list[Any], variant: list[Any]) -> list[quality.QualityFigure]:
    return [quality.caption_agreement([r.token_ids for r in reference],
                                      [v.token_ids for v in variant])]


_measure("caption")((_caption_run, _caption_compare))


def _features_run(runner: Runner, images: Sequence[Any], is_variant: bool) -> list[Any]:
    from engine.explain.api import explain
    from engine.tasks.caption import to_pil

    return [explain(runner, to_pil(image), method="rollout") for image in images]


def _feeds(runner: Runner, images: Sequence[Any]) -> list[dict[str, np.ndarray]]:
    """The graph feeds of the images, pre-processed as the explain task does."""
    from engine.explain.api import resolve
    from engine.tasks.caption import to_pil

    kind, model, _ = resolve(runner)
    if kind != "onnx":
        raise UnsupportedModelError(f"{runner.card.id}: not an ONNX runner")
    return [{model.input_name: model.preprocess(to_pil(image))[0]} for image in images]


def _float_outputs(runner: Runner, feed: dict[str, np.ndarray]) -> np.ndarray:
    outputs = runner.forward_arrays(feed)
    return np.concatenate([np.asarray(v, np.float64).ravel() for _, v in sorted(outputs.items())
                           if np.issubdtype(np.asarray(v).dtype, np.floating)])


def _features_compare(ref_runner: Runner, runner: Runner, images: Sequence[Any],
                      reference: list[Any], variant: list[Any]) -> list[quality.QualityFigure]:
    feeds = _feeds(ref_runner, images)
    return [quality.correlation("attention_correlation", [r.grid_map for r in reference],
                                [v.grid_map for v in variant]),
            quality.correlation("output_correlation",
                                [_float_outputs(ref_runner, f) for f in feeds],
                                [_float_outputs(runner, f) for f in feeds])]


def _features_time(runner: Runner, feeds: Sequence[Any], is_variant: bool) -> list[Any]:
    """A backbone's speed is its forward (explain rebuilds a graph with attention outputs)."""
    return [_float_outputs(runner, feed) for feed in feeds]


_measure("features")((_features_run, _features_compare, _features_time, _feeds))


# -- the fp32 source ---------------------------------------------------------------------------


@dataclass
class Source:
    """The fp32 graphs a variant is made from, and a runner over them."""

    runner: Runner
    folder: Path  # graphs and side files
    graphs: dict[str, str]  # session key -> file, relative to folder
    card: ModelCard  # the card that opens the folder (sidecar included)
    snapshot: Path | None  # ONNX models: their snapshot (published variants live there)
    model_type: str | None


def _torch_source(card: ModelCard, settings: Settings) -> Source:
    from engine.export_onnx import optimize, sample_image
    from engine.runtimes import load_runner

    torch_settings = dataclasses.replace(settings, use_onnx_fast_path=False)
    runner = load_runner(card, device="cpu", precision="fp32", settings=torch_settings)
    model_type = getattr(getattr(runner.module, "config", None), "model_type", None)
    try:
        path = optimize(card, runner, sample_image())
    finally:
        runner.release()
    folder = path if path.is_dir() else path.parent
    onnx_runner = onnx_runner_for_export(card, path)
    graphs = {key: os.path.relpath(p, folder) for key, p in _graph_files(onnx_runner).items()}
    return Source(onnx_runner, folder, graphs, onnx_runner.card, None, model_type)


def _graph_files(runner: Any) -> dict[str, Path]:
    from engine.runtimes.onnx_backend import select_graphs

    folder = runner.folder
    files, _roles, _notes = select_graphs(runner.card, Path(runner.card.local_path or folder),
                                          "fp32")
    return files


def _onnx_source(card: ModelCard, settings: Settings, precision: str) -> Source:
    from engine.runtimes.base import Placement
    from engine.runtimes.loading import fetch_variant_files, resolve_snapshot
    from engine.runtimes.onnx_backend import load_onnx, select_graphs

    snapshot = resolve_snapshot(card, settings=settings)
    fetch_variant_files(card, precision, snapshot, settings=settings)  # the hub's, if any
    runner = load_onnx(card, snapshot, Placement("onnx", "cpu", "fp32",
                                                 provider="CPUExecutionProvider"))
    folder = snapshot.parent if snapshot.is_file() else snapshot
    files, _roles, _notes = select_graphs(card, snapshot, "fp32")
    graphs = {key: os.path.relpath(p, folder) for key, p in files.items()}
    return Source(runner, folder, graphs, card, snapshot,
                  (card.sidecar or {}).get("model_type") or _config_model_type(folder))


def _config_model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def _published(source: Source, precision: str) -> dict[str, str] | None:
    """The hub-published files of `precision` for every graph of an ONNX model, or None."""
    from engine.runtimes.onnx_backend import PRECISION_SUFFIXES, select_graphs

    if source.snapshot is None or source.snapshot.is_file():
        return None
    files, _roles, _notes = select_graphs(source.card, source.snapshot, precision)
    chosen = {key: os.path.relpath(p, source.folder) for key, p in files.items()}
    suffixes = PRECISION_SUFFIXES[precision]
    if all(Path(rel).stem.rpartition("_")[2] in suffixes for rel in chosen.values()):
        return chosen
    return None


# -- the entry point ---------------------------------------------------------------------------


def make_variant(card: ModelCard, precision: str, images: Sequence[Any], *,
                 settings: Settings, calibration: str = "", force: bool = False,
                 task: str | None = None) -> Variant:
    """Make (or adopt the published) `precision` variant of `card`, measure it against fp32
    on `images` with the task code, and store it with its manifest; return it."""
    if precision not in ("int8", "fp16"):
        raise UsageError(f"Variants are int8 or fp16, not {precision!r}.")
    existing = None if force else find_variant(card, precision)
    if existing is not None:
        return existing
    task = task or card.primary_task
    measure = MEASURES.get(task)
    source = (_torch_source(card, settings) if card.runtime != "onnx"
              else _onnx_source(card, settings, precision))
    final = variant_dir(card, precision)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(make_temp_dir(final.parent, prefix=f".{precision}.", suffix=".part"))
    variant_runner = None
    try:
        with record_feeds(source.runner) as feeds:
            reference = measure.run(source.runner, images, False)
        timing = measure.prepare(source.runner, images) if measure.prepare else images
        fp32_ms = _time_per_image(measure, source.runner, timing)
        published = _published(source, precision)
        if published is not None:
            graphs, origin, recipe_name, why = published, "published", "published", "hub file"
            ops = {k: quantized_ops(source.folder / rel) for k, rel in published.items()}
        else:
            main = source.folder / next(iter(source.graphs.values()))
            recipe, why = recipe_for(source.card, precision, model_type=source.model_type,
                                     graph=main)
            graphs, origin, recipe_name = dict(source.graphs), "ocula", recipe.name
            for key, rel in graphs.items():
                part = recipe.part_for(key)
                if part is not None:
                    make_graph_variant(source.folder / rel, staging / rel, part,
                                       calibration=feeds.get(key, ()))
                else:  # kept fp32 (e.g. a captioner's decoder): the source's own file
                    _link_or_copy(source.folder / rel, staging / rel)
            _copy_side_files(source.folder, staging)
            ops = {k: quantized_ops(staging / rel) for k, rel in graphs.items()}
        manifest: dict[str, Any] = {
            "card": card.id, "revision": card.revision, "source_stamp": source_stamp(card),
            "precision": precision,
            "source": origin, "recipe": recipe_name, "recipe_reason": why, "graphs": graphs,
            "quantized_ops": ops, "task": task,
            "calibration": {"images": len(images), "from": calibration or "given"},
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "onnxruntime": _ort_version()},
        }
        (staging / VARIANT_MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        probe = Variant(precision=precision, folder=staging, source=origin, recipe=recipe_name,
                        recommended=False, verdict="", graphs=graphs)
        variant_runner = onnx_runner_for_variant(source.card if origin == "ocula" else card,
                                                 probe, snapshot=source.snapshot)
        got = measure.run(variant_runner, images, True)
        figures = measure.compare(source.runner, variant_runner, images, reference, got)
        variant_ms = _time_per_image(measure, variant_runner, timing)
        recommended, verdict = quality.verdict(figures)
        if variant_ms > fp32_ms:
            verdict += (f"; slower than fp32 on this CPU ({variant_ms:.1f} vs {fp32_ms:.1f} ms "
                        f"per image" + (": ONNX Runtime's CPU provider has no fast fp16 path and "
                                        "runs most fp16 operators through casts"
                                        if precision == "fp16" else "")
                        + "), so precision auto does not pick it")
        manifest.update(quality=[f.to_dict() for f in figures], recommended=recommended,
                        verdict=verdict, latency_ms={"fp32": fp32_ms, "variant": variant_ms})
        (staging / VARIANT_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        variant_runner.release()
        variant_runner = None
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        if variant_runner is not None:
            variant_runner.release()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        source.runner.release()
    found = find_variant(card, precision)
    assert found is not None, "the variant just written must be found"
    return found


def _time_per_image(measure: TaskMeasure, runner: Runner, images: Sequence[Any],
                    passes: int = 2) -> float:
    """Milliseconds per image of the whole task (pre-processing, graph, post-processing),
    the best of `passes` passes (a pass already warmed the session up)."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        (measure.timed or measure.run)(runner, images, True)
        best = min(best, time.perf_counter() - start)
    return best * 1000 / max(1, len(images))


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` with `source`'s bytes: a hard link where the file system allows one (a
    kept fp32 decoder is hundreds of MB), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _copy_side_files(source: Path, target: Path) -> None:
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


__all__ = ("MEASURES", "TaskMeasure", "calibration_images", "label_map", "make_variant",
           "synthetic_set")
