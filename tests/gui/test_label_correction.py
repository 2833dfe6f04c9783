"""Label correction (issue 15): move, resize, relabel, delete and add boxes in the detect
view; the edits are saved in the job's result record and re-written into its exports.

The detections come from a real job: the bundled tiny DETR (resources/selftest/detect)
run by the engine's detect handler, threshold 0 so it returns boxes. The exports are
parsed back (COCO JSON, Pascal VOC XML, YOLO txt, CSV) and compared with the edit.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from desktop.main_window import MainWindow

pytestmark = pytest.mark.slow  # torch + transformers load in the worker

FORMATS = ["coco", "voc", "yolo", "csv", "overlay"]


@pytest.fixture
def detected(qtbot, qsettings, settings_path, tmp_path, monkeypatch, photos):
    """A window showing a finished detect job's result for photos[0], edit mode on."""
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    from desktop.views.bundled_models import register_bundled
    from engine.jobs.spec import JobSpec

    from desktop.views.bundled_models import is_bundled

    # the tiny DETR (a real-weight first-run face detector may be registered next to it)
    (card,) = [c for c in register_bundled(["detect"]) if is_bundled(c)]
    win = MainWindow(qsettings=qsettings, settings_path=settings_path, welcome=False)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    win.task_combo.setCurrentIndex(win.task_combo.findData("detect"))
    win.workspace.add_paths([photos[0]])
    qtbot.waitUntil(lambda: win.workspace.shown_path == photos[0], timeout=10_000)
    out = tmp_path / "out"
    spec = JobSpec(task="detect", model=card.id, inputs=[str(photos[0])], output_dir=str(out),
                   options={"threshold": 0.0, "formats": FORMATS}, device="cpu")
    with qtbot.waitSignal(win.jobFinished, timeout=180_000):
        op = win.start_job(spec)
    assert op.outcome == "succeeded", op.failure and op.failure.details
    qtbot.waitUntil(lambda: win.viewer.boxes is not None, timeout=10_000)
    win.viewer.actions["edit_boxes"].setChecked(True)
    yield win, out
    win.close()


def _coco(out: Path) -> dict:
    return json.loads((out / "detections.coco.json").read_text())


def _voc_objects(out: Path, stem: str) -> list[tuple[str, list[int]]]:
    root = ET.parse(out / f"{stem}.xml").getroot()
    return [(o.findtext("name"), [int(o.find("bndbox").findtext(k))
                                  for k in ("xmin", "ymin", "xmax", "ymax")])
            for o in root.iter("object")]


def _wait_saved(win, qtbot) -> None:
    qtbot.waitUntil(lambda: "Corrections saved" in win.progress_label.text(), timeout=20_000)
    qtbot.waitUntil(lambda: not win.edit_op.running, timeout=20_000)


def test_edits_go_into_the_record_and_every_export(detected, qtbot):
    win, out = detected
    editor = win.viewer.box_editor
    model_boxes = list(editor.detections.boxes)
    assert model_boxes, "threshold 0 keeps the tiny DETR's queries"
    stem = Path(win.workspace.shown_path).stem
    record_path = out / f"{stem}.detections.json"
    assert win.result_records[("detect", win.workspace.shown_path)] == record_path

    # relabel a box with a new label (typed), and move it with the mouse: a box whose
    # centre grabs that box (the smallest box under the cursor wins)
    canvas = win.viewer.canvas

    def centre_of(box):
        return canvas.mapFromScene((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)

    index = next(i for i, box in enumerate(model_boxes)
                 if editor.hit(canvas.mapToScene(centre_of(box))) == (i, "move"))
    editor.select(index)
    editor.label_combo.setCurrentText("my-label")
    editor.label_combo.lineEdit().returnPressed.emit()
    _wait_saved(win, qtbot)
    b = editor.detections.boxes[index]
    centre = centre_of(b)
    target = centre + QPoint(30, 20)
    QTest.mousePress(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     centre)
    QTest.mouseMove(canvas.viewport(), centre + QPoint(10, 5))
    QTest.mouseMove(canvas.viewport(), target)
    QTest.mouseRelease(canvas.viewport(), Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier, target)
    moved = editor.detections.boxes[index]
    dx, dy = (target - centre).x() / canvas.zoom, (target - centre).y() / canvas.zoom
    w, h = editor.detections.image_size
    assert moved.label == "my-label"
    expect_dx = min(max(dx, -b.x0), w - b.x1)  # the box stays on the image
    assert moved.x0 == pytest.approx(b.x0 + expect_dx, abs=1.5 / canvas.zoom)
    assert moved.x1 - moved.x0 == pytest.approx(b.x1 - b.x0, abs=1e-6)

    # add a box with Ctrl+drag on an empty area (the label field's label)
    editor.label_combo.setCurrentText("added")
    start = canvas.mapFromScene(2, 2)
    end = canvas.mapFromScene(w / 3, h / 3)
    QTest.mousePress(canvas.viewport(), Qt.MouseButton.LeftButton,
                     Qt.KeyboardModifier.ControlModifier, start)
    QTest.mouseMove(canvas.viewport(), end)
    QTest.mouseRelease(canvas.viewport(), Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.ControlModifier, end)
    added = editor.detections.boxes[-1]
    assert added.label == "added" and len(editor.detections.boxes) == len(model_boxes) + 1

    # delete another model box (the Delete action on the selected box)
    doomed = next((i for i in range(len(model_boxes)) if i != index), None)
    if doomed is not None:
        editor.select(doomed)
        editor.action_delete.trigger()
        index -= 1 if doomed < index else 0
    _wait_saved(win, qtbot)
    final = editor.detections.boxes
    assert len(final) == len(model_boxes) + (0 if doomed is not None else 1)
    assert final[index] == moved

    record = json.loads(record_path.read_text())
    assert len(record["model_boxes"]) == len(model_boxes)  # the model's own boxes are kept
    assert [b["label"] for b in record["boxes"]] == [b.label for b in final]

    coco = _coco(out)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = [(names[a["category_id"]], a["bbox"]) for a in coco["annotations"]]
    assert len(anns) == len(final)
    for (label, bbox), box in zip(anns, final):
        assert label == box.label
        assert bbox == pytest.approx([box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0],
                                     abs=1e-3)
    assert ("my-label", pytest.approx([moved.x0, moved.y0, moved.x1 - moved.x0,
                                       moved.y1 - moved.y0], abs=1e-3)) in anns

    voc = _voc_objects(out, stem)
    assert [name for name, _ in voc] == [b.label for b in final]
    assert voc[index] == ("my-label", [round(moved.x0), round(moved.y0), round(moved.x1),
                                       round(moved.y1)])
    assert voc[-1] == ("added", [round(added.x0), round(added.y0), round(added.x1),
                                 round(added.y1)])

    classes = (out / "classes.txt").read_text().split()
    yolo = [line.split() for line in (out / f"{stem}.txt").read_text().splitlines()]
    assert [classes[int(row[0])] for row in yolo] == [b.label for b in final]
    with open(out / "detections.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == [b.label for b in final]


def test_resize_by_dragging_an_edge(detected, qtbot):
    win, out = detected
    editor, canvas = win.viewer.box_editor, win.viewer.canvas
    # keep one box, so the edge grabbed is that box's
    for _ in range(len(editor.detections.boxes) - 1):
        editor.delete_box(1)
    b = editor.detections.boxes[0]
    w, h = editor.detections.image_size
    editor.set_box(0, w * 0.2, h * 0.2, w * 0.6, h * 0.6)
    b = editor.detections.boxes[0]
    edge = canvas.mapFromScene(b.x1, (b.y0 + b.y1) / 2)
    assert editor.hit(canvas.mapToScene(edge)) == (0, "r")
    QTest.mousePress(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     edge)
    QTest.mouseMove(canvas.viewport(), edge - QPoint(8, 0))
    QTest.mouseRelease(canvas.viewport(), Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier, edge - QPoint(8, 0))
    resized = editor.detections.boxes[0]
    assert resized.x0 == pytest.approx(b.x0) and resized.y0 == pytest.approx(b.y0)
    assert resized.x1 == pytest.approx(b.x1 - 8 / canvas.zoom, abs=1.5 / canvas.zoom)
    _wait_saved(win, qtbot)
    stem = Path(win.workspace.shown_path).stem
    assert _voc_objects(out, stem)[0][1][2] == round(resized.x1)


def test_reexport_needs_a_detection_record(tmp_path):
    from engine.exporters.edits import EditError, reexport_detections, save_box_edits
    from engine.results import Detections

    bad = tmp_path / "a.detections.json"
    bad.write_text(json.dumps({"text": "a caption"}))
    with pytest.raises(EditError, match="not a detection result record"):
        save_box_edits(bad, Detections(boxes=[], image_size=(4, 4)))
    assert reexport_detections(tmp_path / "empty") == []
