"""Corrected detections: save a user's box edits and re-write a job's exports from them.

A detect job writes one record per input (`<name>.detections.json`: boxes, labels and
the files it wrote, relative to the output folder) and batch files built from all
records (`detections.coco.json`, `detections.csv`, `classes.txt`). Label correction
replaces a record's boxes atomically, keeping the model's own boxes once under
`model_boxes`, and then re-writes every export that job produced — the batch files that
exist in the folder and each record's YOLO txt, VOC XML and overlay — so the files agree
with what the user corrected. The input images are only read (for the overlay).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from engine.errors import OculaError
from engine.media.image import atomic_write_bytes
from engine.results import Box, Detections

RECORD_SUFFIX = ".detections.json"
BATCH_FILES = ("detections.coco.json", "detections.csv", "classes.txt")
USER_SCORE = 1.0  # a box the user drew or corrected is certain


class EditError(OculaError):
    """The result record to correct is missing or is not a detection record."""


def box_record(box: Box) -> dict:
    return {"xyxy": [float(box.x0), float(box.y0), float(box.x1), float(box.y1)],
            "label": box.label, "score": float(box.score), "label_id": int(box.label_id),
            "track_id": box.track_id}


def detections_from_record(record: dict) -> Detections:
    boxes = [Box(*b["xyxy"], label=b["label"], score=b["score"],
                 label_id=b.get("label_id", -1), track_id=b.get("track_id"))
             for b in record.get("boxes", [])]
    labels = {int(k): str(v) for k, v in record.get("labels", {}).items()}
    return Detections(boxes=boxes, image_size=(record["width"], record["height"]),
                      labels=labels)


def read_record(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EditError(f"Cannot read the result record {path} ({exc}). Run the job again "
                        f"to write it.") from exc
    if not isinstance(record, dict) or "boxes" not in record or "width" not in record:
        raise EditError(f"{path} is not a detection result record (no boxes); corrections "
                        f"apply to detect results only.")
    return record


def with_label_ids(detections: Detections) -> Detections:
    """Boxes whose label is one of the model's labels get its id; new labels get -1, so
    the exporters give them the next free ids (engine.exporters.detections.label_ids)."""
    by_name = {name: i for i, name in sorted(detections.labels.items(), reverse=True)}
    boxes = [Box(b.x0, b.y0, b.x1, b.y1, label=b.label, score=b.score,
                 label_id=by_name.get(b.label, -1), track_id=b.track_id)
             for b in detections.boxes]
    return Detections(boxes=boxes, image_size=detections.image_size, labels=detections.labels)


def save_box_edits(record_path: str | os.PathLike, detections: Detections) -> Path:
    """Replace a record's boxes with the corrected ones (atomically); the model's own
    boxes are kept, the first time, as `model_boxes`."""
    path = Path(record_path)
    record = read_record(path)
    record.setdefault("model_boxes", record["boxes"])
    record["boxes"] = [box_record(b) for b in with_label_ids(detections).boxes]
    record["edited_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_bytes(path, json.dumps(record).encode("utf-8"))
    return path


def _records(output_dir: Path, record_paths: Iterable[os.PathLike | str] | None) -> list[dict]:
    paths = (sorted(output_dir.rglob("*" + RECORD_SUFFIX)) if record_paths is None
             else sorted({Path(p) for p in record_paths}))
    return [read_record(p) for p in paths]


def reexport_detections(output_dir: str | os.PathLike,
                        record_paths: Sequence[os.PathLike | str] | None = None) -> list[Path]:
    """Re-write the exports of the detect job in `output_dir` from its records (all records
    under it, or `record_paths`): only the formats the job wrote are written again."""
    from engine.exporters.detections import label_ids, voc_xml, write_coco, write_csv, yolo_lines

    out = Path(output_dir)
    records = _records(out, record_paths)
    if not records:
        return []
    results = [detections_from_record(r) for r in records]
    names = [r["image_name"] for r in records]
    inputs = [Path(r["input"]) for r in records if r.get("input")]
    labels = label_ids(results)
    written: list[Path] = []
    for record, det in zip(records, results):
        outputs = record.get("outputs", {})
        if "yolo" in outputs:
            lines = yolo_lines(det, labels)
            target = out / outputs["yolo"]
            atomic_write_bytes(target, ("\n".join(lines) + ("\n" if lines else "")).encode())
            written.append(target)
        if "voc" in outputs:
            target = out / outputs["voc"]
            atomic_write_bytes(target, voc_xml(det, record["image_name"]).encode("utf-8"))
            written.append(target)
        if "overlay" in outputs and record.get("input") and Path(record["input"]).is_file():
            from engine.exporters.overlay import draw_detections
            from engine.media.image import read_image, write_image

            target = out / outputs["overlay"]
            write_image(target, draw_detections(read_image(record["input"]).rgb, det))
            written.append(target)
    if (out / "detections.coco.json").exists():
        written.append(write_coco(out / "detections.coco.json", results, names, inputs=inputs))
    if (out / "detections.csv").exists():
        written.append(write_csv(out / "detections.csv", results, names, inputs=inputs))
    if (out / "classes.txt").exists():
        classes = [labels.get(i, f"class_{i}") for i in range(max(labels, default=-1) + 1)]
        atomic_write_bytes(out / "classes.txt", ("\n".join(classes) + "\n").encode("utf-8"))
        written.append(out / "classes.txt")
    return written


def correct_detections(record_path: str | os.PathLike, detections: Detections,
                       output_dir: str | os.PathLike | None = None) -> list[Path]:
    """Save one input's corrected boxes, then re-write the job's exports; returns the
    files written (the record first). `output_dir`: the job's folder (default: the
    folder the record's `key` is relative to)."""
    record_path = Path(record_path)
    record = read_record(record_path)
    if output_dir is None:
        depth = len(Path(record.get("key", record_path.stem)).parts)
        output_dir = record_path.parents[depth - 1] if depth > 0 else record_path.parent
    saved = save_box_edits(record_path, detections)
    return [saved, *reexport_detections(output_dir)]
