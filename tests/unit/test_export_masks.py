"""COCO RLE, palette label maps, COCO segmentation JSON, alpha mattes and cut-outs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.exporters import masks as mx
from engine.results import Segmentation, SegmentInstance


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    blob = np.zeros((37, 53), bool)
    blob[5:30, 10:41] = True
    first = np.zeros((4, 6), bool)
    first[0, 0] = True
    return [
        np.zeros((5, 7), bool),
        np.ones((5, 7), bool),
        first,
        blob,
        rng.random((31, 29)) > 0.5,
        rng.random((64, 80)) > 0.97,  # long runs: multi-character counts, negative deltas
        np.zeros((1, 1), bool),
    ]


@pytest.mark.parametrize("idx", range(7))
def test_rle_roundtrip(idx: int) -> None:
    mask = _masks()[idx]
    for compressed in (True, False):
        rle = mx.rle_encode(mask, compressed=compressed)
        assert rle["size"] == list(mask.shape)
        back = mx.rle_decode(rle)
        assert back.dtype == bool and back.shape == mask.shape
        assert np.array_equal(back, mask)
        assert mx.rle_area(rle) == int(mask.sum())


def test_rle_counts_are_column_major_and_start_with_zeros() -> None:
    mask = np.array([[0, 1], [1, 1]], bool)  # column-major: 0, 1, 1, 1
    assert mx.rle_counts(mask) == [1, 3]
    assert mx.rle_counts(np.array([[1, 0], [1, 0]], bool)) == [0, 2, 2]


def test_rle_matches_pycocotools() -> None:
    coco_mask = pytest.importorskip("pycocotools.mask")
    for mask in _masks():
        ours = mx.rle_encode(mask)
        theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours["counts"] == theirs["counts"].decode("ascii")
        assert ours["size"] == list(theirs["size"])
        # and pycocotools decodes our string to the same mask
        decoded = coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), mask)


def test_mask_bbox_is_xywh_of_true_pixels() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:9] = True
    assert mx.mask_bbox(mask) == [3.0, 2.0, 6.0, 3.0]
    assert mx.mask_bbox(np.zeros((3, 3), bool)) == [0.0, 0.0, 0.0, 0.0]


def test_palette_label_map_png(tmp_path) -> None:
    label_map = np.array([[-1, 0, 1], [2, 2, 20]], np.int32)
    seg = Segmentation(
        kind="semantic",
        image_size=(3, 2),
        label_map=label_map,
        labels={0: "a", 1: "b", 2: "c", 20: "d"},
    )
    out = mx.write_label_map(tmp_path / "labels.png", seg)
    with Image.open(out) as img:
        assert img.mode == "P"
        idx = np.asarray(img)
        palette = np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)
    assert idx.tolist() == [[255, 0, 1], [2, 2, 20]]
    assert palette[1].tolist() == [128, 0, 0] and palette[2].tolist() == [0, 128, 0]  # VOC map
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))


def test_label_map_with_many_classes_falls_back_to_16bit(tmp_path) -> None:
    label_map = np.array([[300, -1], [0, 254]], np.int32)
    seg = Segmentation(kind="semantic", image_size=(2, 2), label_map=label_map)
    out = mx.write_label_map(tmp_path / "labels.png", seg)
    with Image.open(out) as img:
        assert np.asarray(img).tolist() == [[300, 65535], [0, 254]]


def test_coco_segmentation_json(tmp_path) -> None:
    m1 = np.zeros((20, 30), bool)
    m1[2:10, 4:12] = True
    m2 = np.zeros((20, 30), bool)
    m2[12:19, 20:29] = True
    seg = Segmentation(
        kind="instance",
        image_size=(30, 20),
        labels={0: "cat", 1: "dog"},
        instances=[SegmentInstance(m1, "cat", 0, 0.9, 1), SegmentInstance(m2, "dog", 1, 0.8, 2)],
    )
    out = mx.write_coco_segmentation(tmp_path / "seg.json", [seg], ["a.jpg"])
    doc = json.loads(out.read_text())
    assert doc["images"] == [{"id": 1, "file_name": "a.jpg", "width": 30, "height": 20}]
    assert [(c["id"], c["name"]) for c in doc["categories"]] == [(1, "cat"), (2, "dog")]
    ann = doc["annotations"]
    assert [a["id"] for a in ann] == [1, 2] and {a["image_id"] for a in ann} == {1}
    assert ann[0]["bbox"] == [4.0, 2.0, 8.0, 8.0] and ann[0]["area"] == 64
    assert np.array_equal(mx.rle_decode(ann[1]["segmentation"]), m2)


def test_cutout_png_has_matte_as_alpha(tmp_path) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    alpha = np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(16, 24)
    out = mx.write_cutout(tmp_path / "cut.png", rgb, alpha)
    with Image.open(out) as img:
        assert img.mode == "RGBA"
        arr = np.asarray(img)
    assert np.array_equal(arr[..., :3], rgb)
    assert np.array_equal(arr[..., 3], mx.alpha_to_uint8(alpha))
    assert arr[0, 0, 3] == 0 and arr[-1, -1, 3] == 255


def test_cutout_keeps_16_bit(tmp_path) -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000
    alpha = np.ones((4, 5), np.float32)
    out = mx.write_cutout(tmp_path / "cut16.png", rgb, alpha)
    import cv2

    arr = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert arr.dtype == np.uint16 and arr.shape == (4, 5, 4)
    assert np.array_equal(arr[..., [2, 1, 0]], rgb) and (arr[..., 3] == 65535).all()


def test_exports_refuse_to_overwrite_inputs(tmp_path) -> None:
    src = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(src)
    with pytest.raises(InputError):
        mx.write_cutout(src, np.zeros((4, 4, 3), np.uint8), np.ones((4, 4)), inputs=[src])
    with Image.open(src) as img:
        assert img.mode == "RGB"


def test_instance_overlay_outlines_and_legend() -> None:
    from engine.exporters.overlay import draw_segmentation, label_colour

    m1 = np.zeros((60, 80), bool)
    m1[10:40, 10:40] = True
    m2 = np.zeros((60, 80), bool)
    m2[10:40, 40:70] = True  # touches m1: same class, told apart by the outline
    seg = Segmentation(
        kind="panoptic",
        image_size=(80, 60),
        labels={3: "person"},
        instances=[
            SegmentInstance(m1, "person", 3, 0.9, 1),
            SegmentInstance(m2, "person", 3, 0.8, 2),
        ],
    )
    img = np.full((60, 80, 3), 100, np.uint8)
    drawn = np.asarray(draw_segmentation(img, seg))
    assert drawn.shape[0] == 60 and drawn.shape[1] > 80  # legend column on the right
    assert tuple(drawn[25, 39]) == (255, 255, 255) and tuple(drawn[25, 40]) == (255, 255, 255)
    inside = (np.array([100, 100, 100]) * 0.5 + np.array(label_colour(3)) * 0.5).round()
    assert np.abs(drawn[25, 25].astype(int) - inside).max() <= 1
    assert tuple(drawn[50, 75]) == (100, 100, 100)  # uncovered pixels untouched
    legend = drawn[:, 80:]
    assert (legend == np.array(label_colour(3), np.uint8)).all(axis=2).any()  # the class swatch
    matte = Segmentation(kind="matting", image_size=(80, 60), alpha=np.zeros((60, 80), np.float32))
    assert (np.asarray(draw_segmentation(img, matte)) == 40).all()  # background dimmed
