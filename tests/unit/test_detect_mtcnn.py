"""Real weights: facenet-pytorch's MTCNN behind the same detect() entry, and exports of its
boxes. MTCNN's weights ship inside the facenet-pytorch wheel (no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.catalog.card import ModelCard, Source

pytest.importorskip(
    "facenet_pytorch", reason="test extra: pip install --no-deps facenet-pytorch requests"
)
skimage_data = pytest.importorskip("skimage.data")

pytestmark = pytest.mark.slow

CARD = ModelCard(
    id="mtcnn",
    name="MTCNN faces",
    tasks=("detect",),
    runtime="facenet-pytorch",
    source=Source.LOCAL,
    sidecar={"family": "mtcnn"},
    seed="Zhang et al. 2016, joint face detection and alignment (MTCNN)",
)


@pytest.fixture(scope="module")
def astronaut_faces():
    from engine.runtimes.facenet_backend import load_mtcnn
    from engine.tasks.detect import detect

    runner = load_mtcnn(CARD, device="cpu")
    image = Image.fromarray(skimage_data.astronaut())
    return image, detect(runner, [image], threshold=0.9)[0], runner


def test_mtcnn_finds_the_astronauts_face(astronaut_faces) -> None:
    from facenet_pytorch import MTCNN

    image, det, _ = astronaut_faces
    assert det.image_size == (512, 512)
    assert [b.label for b in det.boxes] == ["face"]
    face = det.boxes[0]
    np.testing.assert_allclose(face.xyxy, (181, 62, 268, 172), atol=2.0)
    assert face.score > 0.99
    # and exactly what facenet-pytorch itself reports
    boxes, probs = MTCNN(keep_all=True, device="cpu").detect(image)
    np.testing.assert_allclose(face.xyxy, np.asarray(boxes, np.float64)[0], atol=1e-4)
    assert face.score == pytest.approx(float(probs[0]), abs=1e-6)


def test_no_face_in_a_blank_image(astronaut_faces) -> None:
    from engine.tasks.detect import detect

    _, _, runner = astronaut_faces
    (det,) = detect(runner, [Image.new("RGB", (200, 160), (90, 120, 150))])
    assert det.boxes == [] and det.image_size == (200, 160)


def test_real_boxes_export_and_overlay(astronaut_faces, tmp_path) -> None:
    from engine.exporters import detections as dx
    from engine.exporters.overlay import label_colour, write_overlay

    image, det, _ = astronaut_faces
    doc = json.loads(dx.write_coco(tmp_path / "faces.json", [det], ["astronaut.png"]).read_text())
    x, y, w, h = doc["annotations"][0]["bbox"]
    assert doc["categories"] == [{"id": 1, "name": "face", "supercategory": ""}]
    np.testing.assert_allclose([x, y, x + w, y + h], (181, 62, 268, 172), atol=2.0)
    (line,) = dx.yolo_lines(det, dx.label_ids([det]))
    cx, cy = (float(v) for v in line.split()[1:3])
    assert abs(cx * 512 - 224.5) < 2 and abs(cy * 512 - 117) < 2
    out = write_overlay(tmp_path / "faces.png", image, det)
    with Image.open(out) as drawn:
        px = np.asarray(drawn.convert("RGB"))
    b = det.boxes[0]
    assert tuple(px[int(b.y1) - 1, int((b.x0 + b.x1) / 2)]) == label_colour(0)  # box bottom edge
