"""YOLO-style ONNX: letterbox undo against a model that really finds rectangles, decode, NMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.catalog.card import ModelCard, Source
from engine.media.image import read_image
from engine.tasks import nms as ours_nms
from engine.tasks.detect import detect
from engine.tasks.detectors import yolo
from tests.fixtures import tiny_detectors as td

NAMES = {0: "white", 1: "red"}


def _runner(path, **sidecar):
    from engine.runtimes import load_runner

    card = ModelCard(
        id="box-finder",
        name="box finder",
        tasks=("detect",),
        runtime="onnx",
        local_path=str(path),
        source=Source.LOCAL,
        sidecar={"family": "yolo", **sidecar},
    )
    return load_runner(card, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def finders(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo")
    v8 = td.build_box_finder_onnx(root / "v8.onnx", input_size=(160, 160), layout="v8", names=NAMES)
    v5 = td.build_box_finder_onnx(root / "v5.onnx", input_size=(160, 160), layout="v5")
    return {
        "v8": _runner(v8),
        "v5": _runner(v5, input_size=160, layout="v5", labels=["white", "red"]),
    }


CASES = {
    # name: (image size, white rect, red rect) — edges even so a 0.5 scale lands on pixels
    "landscape": ((320, 240), (40, 60, 200, 180), (240, 20, 300, 100)),
    "portrait": ((240, 320), (20, 40, 120, 300), (140, 10, 230, 50)),
    "odd-padding": ((320, 234), (0, 0, 64, 64), (100, 200, 318, 234)),
}


def _boxes(det):
    return {b.label: b.xyxy for b in det.boxes}


@pytest.mark.parametrize("layout", ["v8", "v5"])
@pytest.mark.parametrize("case", list(CASES))
def test_letterbox_undo_gives_exact_original_boxes(finders, layout, case) -> None:
    size, white, red = CASES[case]
    img = Image.fromarray(td.draw_rectangles(size, white, red))
    (det,) = detect(finders[layout], [img], threshold=0.5)
    assert det.image_size == size
    assert _boxes(det) == {"white": tuple(map(float, white)), "red": tuple(map(float, red))}
    assert [b.label_id for b in det.boxes] == [0, 1] or [b.label_id for b in det.boxes] == [1, 0]
    assert all(abs(b.score - 0.9) < 1e-6 for b in det.boxes)
    assert det.labels == NAMES


def test_exif_rotated_jpeg(finders, tmp_path) -> None:
    shown = td.draw_rectangles((240, 320), (20, 40, 120, 300), (140, 10, 230, 50))
    stored = np.ascontiguousarray(np.rot90(shown, k=1))  # orientation 6 = rotate 90° CW to show
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=100, subsampling=0, exif=exif)
    loaded = read_image(path)
    assert loaded.size == (240, 320)
    (det,) = detect(finders["v8"], [loaded], threshold=0.5)
    assert _boxes(det) == {"white": (20.0, 40.0, 120.0, 300.0), "red": (140.0, 10.0, 230.0, 50.0)}


def test_class_filter_and_names_from_metadata(finders) -> None:
    img = Image.fromarray(td.draw_rectangles((320, 240), (40, 60, 200, 180), (240, 20, 300, 100)))
    (det,) = detect(finders["v8"], [img], threshold=0.5, classes=["red"])
    assert [b.label for b in det.boxes] == ["red"]
    (none,) = detect(
        finders["v8"], [Image.fromarray(td.draw_rectangles((64, 64), None, None))], threshold=0.5
    )
    assert none.boxes == []
    (low,) = detect(finders["v8"], [img], threshold=0.005, max_detections=3)
    assert len(low.boxes) == 3 and low.boxes[0].score >= low.boxes[-1].score


def test_letterbox_geometry_matches_ultralytics_rule() -> None:
    geo = yolo.letterbox_geometry((320, 234), (160, 160))
    assert (geo.scale, geo.pad_x, geo.pad_y) == (0.5, 0, 21)  # 21.5 rounds down (d - 0.1)
    geo = yolo.letterbox_geometry((1280, 720), (640, 640))
    assert (geo.pad_x, geo.pad_y) == (0, 140)
    boxes = np.array([[10.0, 20.0, 300.0, 400.0]])
    np.testing.assert_allclose(geo.to_original(geo.to_network(boxes)), boxes)
    canvas, geo = yolo.letterbox(np.zeros((100, 50, 3), np.uint8), (64, 64))
    assert canvas.shape == (64, 64, 3) and geo.pad_x == 16
    assert (canvas[:, :16] == 114).all() and (canvas[:, 16:48] == 0).all()


def test_numpy_nms_equals_torchvision() -> None:
    from torchvision.ops import batched_nms, nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (200, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 200).astype(np.float32)
    ours = ours_nms.nms_numpy(boxes, scores, 0.5)
    theirs = nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    assert ours.tolist() == theirs.tolist()
    classes = rng.integers(0, 3, 200)
    keep = ours_nms.batched_nms_numpy(boxes, scores, classes, 0.5)
    assert len(keep) > len(ours)  # other classes never suppress each other
    theirs = batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.5
    ).numpy()
    assert keep.tolist() == theirs.tolist()
    assert ours_nms.batched_nms(boxes, scores, classes, 0.5).tolist() == theirs.tolist()


def test_decode_v5_multiplies_objectness_and_guesses_layout() -> None:
    raw = np.zeros((1, 3, 7), np.float32)  # 3 candidates, 2 classes
    raw[0, 0] = [50, 50, 20, 10, 0.5, 0.9, 0.1]
    raw[0, 1] = [10, 10, 4, 4, 1.0, 0.2, 0.3]
    raw[0, 2] = [10, 10, 4, 4, 0.1, 0.9, 0.9]
    assert yolo.guess_layout(raw.shape, 2) == "v5"
    (out,) = yolo.decode(raw, layout="auto", threshold=0.25, num_classes=2)
    np.testing.assert_allclose(out.scores, [0.45, 0.3])
    assert out.class_ids.tolist() == [0, 1]
    np.testing.assert_allclose(out.boxes[0], [40, 45, 60, 55])
    assert yolo.guess_layout((1, 84, 8400), 80) == "v8"


def test_spec_reads_ultralytics_metadata(tmp_path) -> None:
    import onnx

    path = td.build_box_finder_onnx(
        tmp_path / "m.onnx", input_size=(96, 64), layout="v8", names={0: "a", 1: "b"}
    )
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "imgsz", "[64, 96]"  # Ultralytics: [height, width]
    onnx.save(model, str(path))
    spec = yolo.YoloSpec.from_sidecar({}, onnx_path=str(path))
    assert spec.input_size == (96, 64) and spec.class_names == ("a", "b")
