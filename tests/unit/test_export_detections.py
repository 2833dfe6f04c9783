"""COCO JSON, YOLO txt, Pascal VOC XML and CSV exports of detections."""

from __future__ import annotations

import csv
import json
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.exporters import detections as dx
from engine.exporters.overlay import draw_detections, label_colour, text_colour, write_overlay
from engine.results import Box, Detections

LABELS = {0: "person", 1: "bicycle", 2: "car"}


def _results() -> tuple[list[Detections], list[str]]:
    a = Detections(
        boxes=[Box(10, 20, 110, 70, "car", 0.91, 2), Box(0, 0, 40, 100, "person", 0.6, 0)],
        image_size=(200, 100),
        labels=LABELS,
    )
    b = Detections(boxes=[], image_size=(64, 48), labels=LABELS)
    c = Detections(
        boxes=[Box(5.5, 6.25, 30.5, 40.75, "person", 0.75, 0)], image_size=(50, 60), labels=LABELS
    )
    return [a, b, c], ["dir/a.jpg", "b.png", "c.jpeg"]


def test_coco_json_ids_and_xywh(tmp_path) -> None:
    results, names = _results()
    doc = json.loads(dx.write_coco(tmp_path / "coco.json", results, names).read_text())
    assert [im["id"] for im in doc["images"]] == [1, 2, 3]
    assert doc["images"][0] == {"id": 1, "file_name": "dir/a.jpg", "width": 200, "height": 100}
    # the model counts from 0; COCO ids start at 1 (COCO tools treat 0 as no category)
    assert [(c["id"], c["name"]) for c in doc["categories"]] == [
        (i + 1, n) for i, n in sorted(LABELS.items())]
    assert min(c["id"] for c in doc["categories"]) >= 1
    anns = doc["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3]  # unique, 1-based
    image_ids = {im["id"] for im in doc["images"]}
    cat_ids = {c["id"] for c in doc["categories"]}
    assert all(a["image_id"] in image_ids and a["category_id"] in cat_ids for a in anns)
    assert anns[0]["bbox"] == [10, 20, 100, 50] and anns[0]["area"] == 5000
    assert anns[0]["category_id"] == 3 and anns[2]["image_id"] == 3  # "car", model id 2
    assert anns[2]["bbox"] == [5.5, 6.25, 25.0, 34.5]


def test_coco_json_loads_in_pycocotools(tmp_path) -> None:
    coco_mod = pytest.importorskip("pycocotools.coco")
    results, names = _results()
    path = dx.write_coco(tmp_path / "coco.json", results, names)
    coco = coco_mod.COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    assert coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[3]))[0]["bbox"] == [10, 20, 100, 50]
    assert coco.loadCats(3)[0]["name"] == "car"


def test_open_vocabulary_labels_get_stable_ids() -> None:
    det = Detections(
        boxes=[
            Box(0, 0, 1, 1, "red cup", 0.5),
            Box(0, 0, 2, 2, "dog", 0.4),
            Box(0, 0, 3, 3, "red cup", 0.3),
        ],
        image_size=(10, 10),
    )
    assert dx.label_ids([det]) == {0: "red cup", 1: "dog"}
    doc = dx.coco_dict([det], ["x.jpg"])
    assert [a["category_id"] for a in doc["annotations"]] == [1, 2, 1]


def test_coco_keeps_model_ids_that_already_start_at_1() -> None:
    """DETR's COCO label ids are COCO's own (1 = person, 0 = N/A): kept as they are."""
    det = Detections(boxes=[Box(0, 0, 4, 4, "person", 0.9, 1), Box(0, 0, 2, 2, "car", 0.8, 3)],
                     image_size=(10, 10), labels={1: "person", 3: "car"})
    doc = dx.coco_dict([det], ["x.jpg"])
    assert [a["category_id"] for a in doc["annotations"]] == [1, 3]
    assert [(c["id"], c["name"]) for c in doc["categories"]] == [(1, "person"), (3, "car")]


def test_yolo_txt_numbers(tmp_path) -> None:
    results, names = _results()
    files = dx.write_yolo(tmp_path / "yolo", results, names)
    assert [f.name for f in files] == ["classes.txt", "a.txt", "b.txt", "c.txt"]
    assert (tmp_path / "yolo/classes.txt").read_text().splitlines() == ["person", "bicycle", "car"]
    rows = [line.split() for line in (tmp_path / "yolo/a.txt").read_text().splitlines()]
    assert rows[0][0] == "2"
    np.testing.assert_allclose([float(v) for v in rows[0][1:]], [0.3, 0.45, 0.5, 0.5])
    np.testing.assert_allclose([float(v) for v in rows[1][1:]], [0.1, 0.5, 0.2, 1.0])
    assert (tmp_path / "yolo/b.txt").read_text() == ""
    cx, cy, w, h = (float(v) for v in (tmp_path / "yolo/c.txt").read_text().split()[1:])
    # decoding the normalised numbers gives back the original pixel box
    np.testing.assert_allclose(
        [(cx - w / 2) * 50, (cy - h / 2) * 60, (cx + w / 2) * 50, (cy + h / 2) * 60],
        [5.5, 6.25, 30.5, 40.75],
        atol=1e-4,
    )


def test_voc_xml_parses(tmp_path) -> None:
    results, names = _results()
    files = dx.write_voc(tmp_path / "voc", results, names)
    root = ET.parse(files[0]).getroot()
    assert root.tag == "annotation" and root.findtext("filename") == "a.jpg"
    assert (root.findtext("size/width"), root.findtext("size/height")) == ("200", "100")
    objs = root.findall("object")
    assert [o.findtext("name") for o in objs] == ["car", "person"]
    bb = objs[0].find("bndbox")
    assert [int(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")] == [10, 20, 110, 70]
    assert objs[1].findtext("truncated") == "1" and objs[0].findtext("truncated") == "0"
    assert ET.parse(files[1]).getroot().findall("object") == []


def test_csv_rows(tmp_path) -> None:
    results, names = _results()
    path = dx.write_csv(tmp_path / "boxes.csv", results, names)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 3 and tuple(rows[0]) == dx.CSV_COLUMNS
    assert rows[0]["image"] == "dir/a.jpg" and rows[0]["label"] == "car"
    assert float(rows[2]["x1"]) == 30.5 and rows[2]["label_id"] == "0"


def test_exports_never_overwrite_inputs(tmp_path) -> None:
    results, names = _results()
    src = tmp_path / "a.txt"
    src.write_text("keep")
    with pytest.raises(InputError):
        dx.write_yolo(tmp_path, results, names, inputs=[src])
    with pytest.raises(InputError):
        dx.write_coco(src, results, names, inputs=[src])
    assert src.read_text() == "keep"


def test_overlay_draws_boxes_in_label_colour(tmp_path) -> None:
    results, _ = _results()
    img = Image.new("RGB", (200, 100), (128, 128, 128))
    drawn = draw_detections(img, results[0])
    arr = np.asarray(drawn)
    assert drawn.size == img.size and not np.array_equal(arr, np.asarray(img))
    assert tuple(arr[69, 60]) == label_colour(2)  # bottom edge of the car box
    assert tuple(arr[99, 20]) == label_colour(0)
    out = write_overlay(tmp_path / "o.jpg", img, results[0])
    with Image.open(out) as back:
        assert back.size == (200, 100)


def test_label_colours_are_distinct_and_text_readable() -> None:
    colours = {label_colour(i) for i in range(40)}
    assert len(colours) == 40
    assert text_colour((255, 255, 0)) == (0, 0, 0) and text_colour((0, 0, 128)) == (255, 255, 255)
