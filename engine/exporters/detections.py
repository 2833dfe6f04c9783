"""Detection exports: COCO JSON, YOLO txt (+ classes.txt), Pascal VOC XML, CSV.

Category ids are the model's own label ids (its id2label), so files from
different runs of one model agree; COCO files shift them by one when the model counts
from 0 (`coco_category_offset`), because COCO tools treat 0 as "no category". Boxes arrive in original pixels (x0, y0, x1, y1);
each format converts: COCO [x, y, w, h], YOLO normalised centre/size, VOC
integer corners. Every file is written atomically and never over an input.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

from engine.media.image import atomic_write_bytes, ensure_not_input
from engine.results import Box, Detections


def label_ids(results: Sequence[Detections]) -> dict[int, str]:
    """One id -> name map for a batch: the models' label maps plus any label seen.

    Boxes without an id (label_id < 0: open-vocabulary text labels not in the map) get
    the next free ids, in order of first appearance, so the mapping is deterministic.
    """
    labels: dict[int, str] = {}
    for det in results:
        labels.update({int(k): str(v) for k, v in det.labels.items()})
        for box in det.boxes:
            if box.label_id >= 0:
                labels.setdefault(box.label_id, box.label)
    by_name = {name: i for i, name in sorted(labels.items(), reverse=True)}
    next_id = max(labels, default=-1) + 1
    for det in results:
        for box in det.boxes:
            if box.label_id < 0 and box.label not in by_name:
                labels[next_id] = box.label
                by_name[box.label] = next_id
                next_id += 1
    return labels


def _box_id(box: Box, by_name: dict[str, int]) -> int:
    return box.label_id if box.label_id >= 0 else by_name[box.label]


def _name_index(labels: dict[int, str]) -> dict[str, int]:
    return {name: i for i, name in sorted(labels.items(), reverse=True)}  # lowest id wins


def _check(results: Sequence[Detections], image_names: Sequence[str]) -> None:
    if len(results) != len(image_names):
        raise ValueError(f"{len(results)} results but {len(image_names)} image names")


# -- COCO ---------------------------------------------------------------------------------------


def coco_category_offset(label_ids: Iterable[int]) -> int:
    """1 when the model's ids start at 0 (YOLO, SegFormer...), else 0 (DETR's COCO ids 1-90
    already are COCO's): COCO category ids must be >= 1, and a model's own ids are kept
    whenever they already are."""
    return 1 if min(label_ids, default=1) <= 0 else 0


def coco_dict(results: Sequence[Detections], image_names: Sequence[str]) -> dict:
    """A COCO document: images (file name, size), categories, annotations with bbox [x,y,w,h]."""
    _check(results, image_names)
    labels = label_ids(results)
    by_name = _name_index(labels)
    offset = coco_category_offset(labels)
    images, annotations = [], []
    for image_id, (det, name) in enumerate(zip(results, image_names), start=1):
        w, h = det.image_size
        images.append({"id": image_id, "file_name": str(name), "width": int(w), "height": int(h)})
        for box in det.boxes:
            bw, bh = box.x1 - box.x0, box.y1 - box.y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": _box_id(box, by_name) + offset,
                    "bbox": [round(box.x0, 3), round(box.y0, 3), round(bw, 3), round(bh, 3)],
                    "area": round(max(0.0, bw) * max(0.0, bh), 3),
                    "iscrowd": 0,
                    "score": round(float(box.score), 6),
                }
            )
    categories = [{"id": i + offset, "name": n, "supercategory": ""}
                  for i, n in sorted(labels.items())]
    return {
        "info": {"description": "Ocula detections"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(
    path: str | os.PathLike,
    results: Sequence[Detections],
    image_names: Sequence[str],
    *,
    inputs: Iterable[Path] = (),
) -> Path:
    """One COCO JSON file for a whole batch."""
    path = Path(path)
    ensure_not_input(path, inputs)
    atomic_write_bytes(path, json.dumps(coco_dict(results, image_names), indent=1).encode())
    return path


# -- YOLO txt -----------------------------------------------------------------------------------


def yolo_lines(det: Detections, labels: dict[int, str], *, with_scores: bool = False) -> list[str]:
    """`class cx cy w h [score]` lines, coordinates normalised to the image size."""
    by_name = _name_index(labels)
    w, h = det.image_size
    lines = []
    for box in det.boxes:
        cx, cy = (box.x0 + box.x1) / 2 / w, (box.y0 + box.y1) / 2 / h
        bw, bh = (box.x1 - box.x0) / w, (box.y1 - box.y0) / h
        line = f"{_box_id(box, by_name)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}"
        if with_scores:
            line += f" {box.score:.6f}"
        lines.append(line)
    return lines


def write_yolo(
    folder: str | os.PathLike,
    results: Sequence[Detections],
    image_names: Sequence[str],
    *,
    with_scores: bool = False,
    inputs: Iterable[Path] = (),
) -> list[Path]:
    """`<image stem>.txt` per image plus `classes.txt` (line i = name of class id i)."""
    _check(results, image_names)
    folder = Path(folder)
    inputs = list(inputs)
    labels = label_ids(results)
    written = []
    classes = folder / "classes.txt"
    ensure_not_input(classes, inputs)
    names = [labels.get(i, f"class_{i}") for i in range(max(labels, default=-1) + 1)]
    atomic_write_bytes(classes, ("\n".join(names) + "\n").encode("utf-8"))
    written.append(classes)
    for det, name in zip(results, image_names):
        target = folder / (Path(name).stem + ".txt")
        ensure_not_input(target, inputs)
        text = "\n".join(yolo_lines(det, labels, with_scores=with_scores))
        atomic_write_bytes(target, (text + "\n" if text else "").encode("utf-8"))
        written.append(target)
    return written


# -- Pascal VOC XML ----------------------------------------------------------------------------


def voc_xml(det: Detections, image_name: str) -> str:
    """Pascal VOC annotation; corners rounded to integer pixels inside the image."""
    w, h = det.image_size
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = str(Path(image_name).parent.name)
    ET.SubElement(root, "filename").text = Path(image_name).name
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "Ocula"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(w))
    ET.SubElement(size, "height").text = str(int(h))
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for box in det.boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = box.label
        ET.SubElement(obj, "pose").text = "Unspecified"
        truncated = box.x0 <= 0 or box.y0 <= 0 or box.x1 >= w or box.y1 >= h
        ET.SubElement(obj, "truncated").text = "1" if truncated else "0"
        ET.SubElement(obj, "difficult").text = "0"
        ET.SubElement(obj, "score").text = f"{box.score:.6f}"
        bnd = ET.SubElement(obj, "bndbox")
        ET.SubElement(bnd, "xmin").text = str(round(min(max(box.x0, 0), w)))
        ET.SubElement(bnd, "ymin").text = str(round(min(max(box.y0, 0), h)))
        ET.SubElement(bnd, "xmax").text = str(round(min(max(box.x1, 0), w)))
        ET.SubElement(bnd, "ymax").text = str(round(min(max(box.y1, 0), h)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(
    folder: str | os.PathLike,
    results: Sequence[Detections],
    image_names: Sequence[str],
    *,
    inputs: Iterable[Path] = (),
) -> list[Path]:
    """`<image stem>.xml` per image."""
    _check(results, image_names)
    folder = Path(folder)
    inputs = list(inputs)
    written = []
    for det, name in zip(results, image_names):
        target = folder / (Path(name).stem + ".xml")
        ensure_not_input(target, inputs)
        atomic_write_bytes(target, voc_xml(det, name).encode("utf-8"))
        written.append(target)
    return written


# -- CSV ------------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "image",
    "image_width",
    "image_height",
    "label",
    "label_id",
    "score",
    "x0",
    "y0",
    "x1",
    "y1",
)


def csv_text(results: Sequence[Detections], image_names: Sequence[str]) -> str:
    _check(results, image_names)
    labels = label_ids(results)
    by_name = _name_index(labels)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for det, name in zip(results, image_names):
        w, h = det.image_size
        for box in det.boxes:
            writer.writerow(
                [
                    name,
                    w,
                    h,
                    box.label,
                    _box_id(box, by_name),
                    f"{box.score:.6f}",
                    f"{box.x0:.3f}",
                    f"{box.y0:.3f}",
                    f"{box.x1:.3f}",
                    f"{box.y1:.3f}",
                ]
            )
    return buf.getvalue()


def write_csv(
    path: str | os.PathLike,
    results: Sequence[Detections],
    image_names: Sequence[str],
    *,
    inputs: Iterable[Path] = (),
) -> Path:
    """One row per box (images without boxes have no rows)."""
    path = Path(path)
    ensure_not_input(path, inputs)
    atomic_write_bytes(path, csv_text(results, image_names).encode("utf-8"))
    return path
