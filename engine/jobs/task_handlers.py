"""The built-in job handlers, one per task (engine.jobs.handler_registry names them).

A handler loads its model once, runs the task on batches of images (or video
frames), and writes each input's files through its OutputPlan (atomic, never over
an input). Every input also gets a small machine-readable `<name>.<task>.json`;
`finish` builds the batch-level files (COCO JSON, CSV, JSONL) from those, so a job
resumed after a crash still exports every input exactly once.

Output formats are chosen with the job option `formats` (defaults per task:
engine.vocabulary.DEFAULT_FORMATS).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from engine.errors import UsageError
from engine.exporters.edits import box_record, detections_from_record
from engine.jobs.handler_protocol import BaseHandler, ItemResult
from engine.results import Caption, Detections, Segmentation

if TYPE_CHECKING:
    from engine.events import CancelToken, ProgressCallback
    from engine.runtimes import RunnerCache
    from engine.settings import Settings
    from engine.jobs.outputs import OutputPlan
    from engine.jobs.spec import JobSpec
    from engine.media.image import LoadedImage

RESULT_SUFFIX = {"detect": ".detections.json", "segment": ".segments.json",
                 "caption": ".caption.json", "restore": ".restore.json",
                 "explain": ".explain.json"}


class ModelHandler(BaseHandler):
    """Loads the job's model once; subclasses implement `run_batch`."""

    task = ""
    needs_attention = False

    def prepare(self, spec: "JobSpec", progress: "ProgressCallback",
                cancel: "CancelToken", settings: "Settings | None" = None) -> None:
        from engine.catalog.catalog import load_catalog
        from engine.settings import Settings

        self.prepare_finish(spec, settings)
        self.cancel = cancel
        self.progress = progress
        settings = settings if settings is not None else Settings()  # run_job passes the user's
        card = load_catalog().resolve(spec.model, settings=settings)
        if not card.supports(self.task) and not (self.task == "explain"):
            raise UsageError(f"Model '{card.id}' does {', '.join(card.tasks)}, not {self.task}. "
                             f"Pick a {self.task} model (`ocula models list --task {self.task}`).")
        self.card = card
        # Loaded models stay in a process-wide LRU cache (bounded by settings.runner_cache_mb),
        # so the GUI's second run of a model does not load it again.
        device, precision = settings.requested_placement(spec.device, spec.precision)
        self.runner = runner_cache(settings).get_or_load(
            card, device=device, precision=precision, attention=self.needs_attention,
            speed=getattr(self.options, "speed", "off"),  # token merging (caption, explain)
            settings=settings, progress=progress, cancel=cancel)
        self.batch_size = self.options.batch_size or self.batch_size
        self.quality = getattr(self.options, "quality", None)
        self.image_ext = "." + getattr(self.options, "output_format", "png")

    def prepare_finish(self, spec: "JobSpec", settings: "Settings | None" = None) -> None:
        """What `finish` reads (the job's options and formats), without the model."""
        from engine.vocabulary import DEFAULT_FORMATS

        self.spec = spec
        self.options = spec.options  # the task's typed options (engine.options), validated
        self.formats = self.options.formats or DEFAULT_FORMATS[self.task]

    @property
    def placement(self) -> str:
        return self.runner.placement.describe()

    def process_batch(self, images: list["LoadedImage"],
                      outs: list["OutputPlan"]) -> list[ItemResult]:
        results = self.run_batch(images)  # runners serialise their own forward passes
        items = [self.write(image, out, result)
                 for image, out, result in zip(images, outs, results)]
        for item in items:  # what really ran, for reports and the GUI's status bar
            item.info.setdefault("placement", self.placement)
        return items

    def process_image(self, image: "LoadedImage", out: "OutputPlan") -> ItemResult:
        return self.process_batch([image], [out])[0]

    def run_batch(self, images: list["LoadedImage"]) -> list[Any]:
        raise NotImplementedError

    def write(self, image: "LoadedImage", out: "OutputPlan", result: Any) -> ItemResult:
        raise NotImplementedError

    def write_record(self, image: "LoadedImage", out: "OutputPlan", payload: dict,
                     extra_outputs: dict[str, Path] | None = None) -> None:
        """The per-input JSON that `finish` aggregates (skipped for video frames).

        Written last, so its `outputs` ({kind: path relative to the output folder}) names
        every file this input produced: a script finds them from the record alone.
        """
        if out.is_frame:
            return
        outputs = {kind: Path(os.path.relpath(path, out.output_dir)).as_posix()
                   for kind, path in {**out.by_kind, **(extra_outputs or {})}.items()}
        record = {"input": image.label or None, "key": out.key,
                  "image_name": _image_name(image, out), "width": image.size[0],
                  "height": image.size[1], "outputs": outputs, **payload}
        out.write_text(RESULT_SUFFIX[self.task], json.dumps(record), kind="record")

    def close(self) -> None:
        self.runner = None  # the cache owns the model; `release_models()` frees it


def runner_cache(settings: "Settings | None" = None) -> "RunnerCache":
    """The process-wide cache of loaded models (engine.runtimes.runner_cache)."""
    from engine.runtimes.runner_cache import shared_runner_cache

    return shared_runner_cache(settings)


def release_models(card_id: str | None = None) -> int:
    """Free loaded models (all, or one card's); returns how many were released."""
    from engine.runtimes.runner_cache import release_shared

    return release_shared(card_id)


def _map_kind(path: os.PathLike | str, stem: str) -> str:
    """`cat.rollout.overlay.png` (stem `cat`) -> "rollout.overlay.png": the record's key."""
    name = Path(path).name
    return name[len(stem) + 1:] if name.startswith(stem + ".") else name


def _image_name(image: "LoadedImage", out: "OutputPlan") -> str:
    suffix = (image.path.suffix if image.path
              else Path(image.source).suffix if image.source else "") or ".png"
    return out.key + suffix


def _records(out_dir: Path, task: str,
             outputs: Iterable[os.PathLike | str] | None = None) -> Iterator[dict]:
    """The per-input records of this job's finished inputs (`outputs`: the files they
    wrote, from the job store), in a stable order. Never every record under the folder:
    a folder that holds another job's results must not add them to this job's export.
    Without `outputs` (a direct caller), every record under `out_dir`."""
    suffix = RESULT_SUFFIX[task]
    if outputs is None:
        paths = sorted(out_dir.rglob("*" + suffix))
    else:
        paths = sorted({Path(p) for p in outputs if os.fspath(p).endswith(suffix)})
    for path in paths:
        try:
            yield json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # a damaged record is reported by its own item, not here


# -- detection ------------------------------------------------------------------------------


class DetectHandler(ModelHandler):
    task = "detect"
    batch_size = 8

    def run_batch(self, images):
        from engine.tasks.detect import detect

        opts = self.options
        return detect(self.runner, images, threshold=opts.threshold, nms_iou=opts.nms_iou,
                      max_detections=opts.max_detections, classes=opts.classes,
                      batch_size=len(images))

    def write(self, image, out, det: Detections) -> ItemResult:
        from engine.exporters.detections import voc_xml, yolo_lines
        from engine.exporters.overlay import draw_detections

        # Video frames: the pipeline draws the boxes after tracking (with track ids).
        if "overlay" in self.formats and not out.is_frame:
            out.write_image(".overlay" + self.image_ext, draw_detections(image.rgb, det),
                            kind="overlay", quality=self.quality)
        if not out.is_frame:
            if "yolo" in self.formats:
                lines = yolo_lines(det, det.labels)
                out.write_text(".txt", "\n".join(lines) + ("\n" if lines else ""), kind="yolo")
            if "voc" in self.formats:
                out.write_text(".xml", voc_xml(det, _image_name(image, out)), kind="voc")
        self.write_record(image, out, {"boxes": [box_record(b) for b in det.boxes],
                                       "labels": {str(k): v for k, v in det.labels.items()}})
        return ItemResult(result=det, written=list(out.written),
                          info={"boxes": len(det.boxes)})

    def finish(self, spec, out_dir: Path, outputs=None) -> list[Path]:
        from engine.exporters.detections import write_coco, write_csv

        records = list(_records(out_dir, self.task, outputs))
        if not records:
            return []
        results = [detections_from_record(r) for r in records]
        names = [r["image_name"] for r in records]
        inputs = [Path(r["input"]) for r in records if r.get("input")]
        written = []
        if "coco" in self.formats:
            written.append(write_coco(out_dir / "detections.coco.json", results, names,
                                      inputs=inputs))
        if "csv" in self.formats:
            written.append(write_csv(out_dir / "detections.csv", results, names, inputs=inputs))
        if "yolo" in self.formats:
            from engine.exporters.detections import label_ids
            from engine.media.image import atomic_write_bytes

            labels = label_ids(results)
            names_list = [labels.get(i, f"class_{i}") for i in range(max(labels, default=-1) + 1)]
            classes = out_dir / "classes.txt"
            atomic_write_bytes(classes, ("\n".join(names_list) + "\n").encode("utf-8"))
            written.append(classes)
        return written


# -- segmentation ----------------------------------------------------------------------------


class SegmentHandler(ModelHandler):
    task = "segment"
    batch_size = 4

    def run_batch(self, images):
        from engine.tasks.segment import segment

        opts = self.options
        return segment(self.runner, images, mode=opts.mode, points=opts.points,
                       boxes=opts.boxes, threshold=opts.threshold,
                       batch_size=len(images))

    def write(self, image, out, seg: Segmentation) -> ItemResult:
        from engine.exporters.masks import (alpha_to_uint8, coco_segmentation_dict,
                                            label_map_image)
        from engine.exporters.overlay import draw_segmentation

        if "overlay" in self.formats or out.is_frame:
            out.write_image(".overlay" + self.image_ext, draw_segmentation(image.rgb, seg),
                            kind="overlay", quality=self.quality)
        if not out.is_frame:
            if seg.alpha is not None:
                if "cutout" in self.formats:
                    out.write_image(".cutout.png", image.array, alpha=alpha_to_uint8(seg.alpha),
                                    kind="cutout")
                if "alpha" in self.formats:
                    out.write_image(".alpha.png", alpha_to_uint8(seg.alpha), kind="alpha")
            elif "labelmap" in self.formats:
                from engine.exporters.masks import instances_to_label_map

                label_map = seg.label_map if seg.label_map is not None \
                    else instances_to_label_map(seg)
                out.write_image(".labels.png", label_map_image(label_map), kind="labelmap")
        coco = coco_segmentation_dict([seg], [_image_name(image, out)])
        self.write_record(image, out, {"kind": seg.kind, "coco": coco,
                                       "labels": {str(k): v for k, v in seg.labels.items()}})
        return ItemResult(result=seg, written=list(out.written),
                          info={"kind": seg.kind, "segments": len(seg.instances)})

    def finish(self, spec, out_dir: Path, outputs=None) -> list[Path]:
        if "coco" not in self.formats:
            return []
        records = list(_records(out_dir, self.task, outputs))
        if not records:
            return []
        merged = {"images": [], "annotations": [], "categories": {}}
        for image_id, record in enumerate(records, start=1):
            coco = record["coco"]
            for img in coco["images"]:
                merged["images"].append(dict(img, id=image_id))
            for ann in coco["annotations"]:
                merged["annotations"].append(dict(ann, image_id=image_id,
                                                  id=len(merged["annotations"]) + 1))
            for cat in coco["categories"]:
                merged["categories"][cat["id"]] = cat
        merged["categories"] = [merged["categories"][k] for k in sorted(merged["categories"])]
        from engine.media.image import atomic_write_bytes

        path = out_dir / "segments.coco.json"
        atomic_write_bytes(path, json.dumps(merged, indent=1).encode("utf-8"))
        return [path]


# -- captioning -------------------------------------------------------------------------------


class CaptionHandler(ModelHandler):
    task = "caption"
    batch_size = 8

    def run_batch(self, images):
        from engine.events import Progress
        from engine.tasks.caption import caption

        def on_token(index: int, text: str) -> None:
            # streamed to the GUI as "partial" job events (the CLI ignores them)
            item = images[index].label
            self.progress(Progress(stage="partial", done=0, item=item, message=text))

        opts = self.options
        return caption(self.runner, images, prompt=opts.prompt,
                       max_new_tokens=opts.max_new_tokens, num_beams=opts.num_beams,
                       batch_size=len(images), on_token=on_token)

    def write(self, image, out, cap: Caption) -> ItemResult:
        if "txt" in self.formats and not out.is_frame:
            # the dataset-builder convention: `<image name>.txt` beside the image's name
            out.write_text(".txt", cap.text + "\n", kind="caption")
        self.write_record(image, out, {"caption": cap.text, "prompt": cap.prompt,
                                       "token_ids": cap.token_ids})
        return ItemResult(result=cap, written=list(out.written), info={"caption": cap.text})

    def finish(self, spec, out_dir: Path, outputs=None) -> list[Path]:
        if "jsonl" not in self.formats:
            return []
        lines = [json.dumps({"image": r["image_name"], "input": r["input"],
                             "caption": r["caption"]}, ensure_ascii=False)
                 for r in _records(out_dir, self.task, outputs)]
        if not lines:
            return []
        from engine.media.image import atomic_write_bytes

        path = out_dir / "captions.jsonl"
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
        return [path]


# -- restoration -------------------------------------------------------------------------------


class RestoreHandler(ModelHandler):
    task = "restore"
    batch_size = 1

    def run_batch(self, images):
        from engine.tasks.restore import restore

        opts = self.options
        return [restore(self.runner, image, tile_size=opts.tile_size,
                        tile_overlap=opts.tile_overlap,
                        precision=None if self.spec.precision == "auto" else self.spec.precision,
                        cancel=self.cancel)  # a huge image stops between tiles
                for image in images]

    def open_image(self, path, *, pixel_limit: int | None = None):
        """Very large images (engine.media.large_image.STREAM_MIN_PIXELS and up) are opened
        lazily and restored streamed, when pyvips is installed; others are read whole."""
        from engine.errors import InputError
        from engine.media import large_image as large
        from engine.media.image import read_image

        pixels = large.image_pixels(Path(path))
        streamable = large.streamable_suffix("." + getattr(self.options, "output_format", "png"))
        if pixels >= large.STREAM_MIN_PIXELS and streamable and large.pyvips_available():
            return large.open_large_image(path, pixel_limit=pixel_limit)
        try:
            return read_image(path, pixel_limit=pixel_limit)
        except InputError as exc:
            if pixels > (pixel_limit or 0) and not large.pyvips_available():
                raise InputError(f"{exc} Or restore it streamed, in bounded memory: "
                                 f"{large.INSTALL_HINT}.") from exc
            raise

    def process_batch(self, images, outs) -> list[ItemResult]:
        from engine.media.large_image import LargeImage

        return [self._stream(image, out) if isinstance(image, LargeImage)
                else super(RestoreHandler, self).process_batch([image], [out])[0]
                for image, out in zip(images, outs)]

    def _stream(self, image, out) -> ItemResult:
        """Restore a LargeImage straight into its output file (never whole in memory)."""
        from engine.tasks.restore import output_scale
        from engine.tasks.restore_stream import restore_to_file

        ext = self._extension(image.bit_depth == 16)
        target = out.reserve(f".x{output_scale(self.runner)}{ext}", kind="restored")
        opts = self.options
        restored = restore_to_file(
            self.runner, image, target, tile_size=opts.tile_size,
            tile_overlap=opts.tile_overlap, quality=self.quality, cancel=self.cancel,
            precision=None if self.spec.precision == "auto" else self.spec.precision)
        self.write_record(image, out, {"scale": restored.scale, "tile_size": restored.tile_size,
                                       "size": list(restored.size), "streamed": True})
        return ItemResult(result=None, written=list(out.written),
                          info={"scale": restored.scale, "tile_size": restored.tile_size,
                                "streamed": True, "placement": self.placement})

    def _extension(self, sixteen_bit: bool) -> str:
        ext = self.image_ext
        if sixteen_bit and ext not in (".png", ".tif", ".tiff"):
            ext = ".png"  # keep 16-bit input 16-bit: JPEG/WebP cannot hold it
        return ext

    def write(self, image, out, restored) -> ItemResult:
        ext = self._extension(restored.image.dtype.itemsize == 2)
        out.write_image(f".x{restored.scale}{ext}", restored.image, kind="restored",
                        quality=self.quality)
        self.write_record(image, out, {"scale": restored.scale, "tile_size": restored.tile_size,
                                       "size": [int(restored.image.shape[1]),
                                                int(restored.image.shape[0])]})
        return ItemResult(result=restored, written=list(out.written),
                          info={"scale": restored.scale, "tile_size": restored.tile_size})


# -- attention maps ------------------------------------------------------------------------------


class ExplainHandler(ModelHandler):
    task = "explain"
    needs_attention = True
    batch_size = 1

    def prepare(self, spec, progress, cancel, settings=None) -> None:
        model = Path(spec.model).expanduser()
        if model.suffix.lower() != ".onnx" or not model.is_file():
            return super().prepare(spec, progress, cancel, settings)
        # any ONNX ViT file: its attention Softmax outputs are exposed by graph surgery
        from engine.explain import OnnxAttentionModel

        if spec.options.speed != "off":
            raise UsageError(f"speed '{spec.options.speed}' (token merging) needs a torch model; "
                             f"{model.name} is an ONNX graph. Run it with speed off.")

        self.spec, self.cancel, self.progress = spec, cancel, progress
        self.options = spec.options
        self.formats = self.options.formats or ("overlay", "npy", "sheet")
        self.runner = OnnxAttentionModel.from_path(model)
        self.batch_size = 1
        self.quality, self.image_ext = None, ".png"

    @property
    def placement(self) -> str:
        found = getattr(self.runner, "placement", None)
        return found.describe() if found is not None else "onnxruntime cpu fp32"

    def run_batch(self, images):
        from engine.explain.with_options import explain_with_options

        return [explain_with_options(self.runner, image.rgb, self.options) for image in images]

    def write(self, image, out, maps) -> ItemResult:
        from engine.explain import overlay

        if out.is_frame:
            out.write_image(".overlay.png", overlay(image.rgb, maps.heatmap), kind="overlay")
            return ItemResult(result=maps, written=list(out.written))
        from engine.explain import save_maps

        out.folder.mkdir(parents=True, exist_ok=True)
        written = save_maps(maps, image.rgb, out.folder, out.stem)
        payload: dict[str, Any] = {"method": maps.method, "notes": list(maps.notes)}
        if maps.box is not None:  # discover: the object's box, aggregated by `finish`
            from engine.explain.render import discovered_detections

            det = discovered_detections(maps)
            payload.update(boxes=[box_record(b) for b in det.boxes], labels=det.labels)
        self.write_record(image, out, payload,
                          extra_outputs={_map_kind(p, out.stem): Path(p) for p in written})
        return ItemResult(result=maps, written=list(out.written) + list(written),
                          info={"method": maps.method})

    def finish(self, spec, out_dir: Path, outputs=None) -> list[Path]:
        """discover: one COCO file of every input's discovered box (`discovered.coco.json`)."""
        from engine.exporters.detections import write_coco

        records = [r for r in _records(out_dir, self.task, outputs) if "boxes" in r]
        if not records:
            return []
        inputs = [Path(r["input"]) for r in records if r.get("input")]
        return [write_coco(out_dir / "discovered.coco.json", [detections_from_record(r) for r in records],
                           [r["image_name"] for r in records], inputs=inputs)]
