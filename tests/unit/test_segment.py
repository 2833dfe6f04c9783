"""segment(): label maps, panoptic segments, instance masks and SAM masks equal transformers'
own post-processing for the same tiny models; mattes come back at the original size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.catalog.card import ModelCard, Source
from engine.errors import UsageError
from engine.exporters.masks import coco_segmentation_dict, rle_decode, write_label_map
from engine.exporters.overlay import draw_segmentation, label_colour
from engine.tasks.segment import segment
from tests.fixtures import tiny_segmenters as ts
from tests.fixtures.tiny_detectors import noise_image

BUILDERS = {
    "segformer": ts.build_segformer,
    "mask2former": ts.build_mask2former,
    "sam": ts.build_sam,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny-segmenters")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def load(path, name: str, runtime: str = "transformers", **kw):
    from engine.runtimes import load_runner

    card = ModelCard(
        id=f"tiny-{name}",
        name=name,
        tasks=("segment",),
        runtime=runtime,
        local_path=str(path),
        source=Source.LOCAL,
        **kw,
    )
    return load_runner(card, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def runners(folders) -> dict:
    return {name: load(f, name) for name, f in folders.items()}


def images() -> list[Image.Image]:
    return [noise_image(160, 120, 1), noise_image(90, 130, 2), noise_image(160, 120, 3)]


def _hf(folder, cls_name: str, processor_cls: str = "AutoImageProcessor"):
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(folder).eval()
    return model, getattr(transformers, processor_cls).from_pretrained(folder)


def test_segformer_label_map_equals_processor(folders, runners) -> None:
    model, processor = _hf(folders["segformer"], "SegformerForSemanticSegmentation")
    results = segment(runners["segformer"], images())
    for seg, img in zip(results, images()):
        with torch.no_grad():
            out = model(**processor(images=[img], return_tensors="pt"))
        (expected,) = processor.post_process_semantic_segmentation(
            out, target_sizes=[(img.height, img.width)]
        )
        assert seg.kind == "semantic" and seg.image_size == img.size
        assert seg.label_map.shape == (img.height, img.width) and seg.label_map.dtype == np.int32
        assert np.array_equal(seg.label_map, expected.numpy())
        assert seg.labels == ts.SEG_LABELS
    assert len(np.unique(results[0].label_map)) > 1  # the random model is not constant


def test_mask2former_panoptic_segments_equal_transformers(folders, runners) -> None:
    model, processor = _hf(folders["mask2former"], "Mask2FormerForUniversalSegmentation")
    found = 0
    for img, seg in zip(images(), segment(runners["mask2former"], images(), threshold=0.3)):
        with torch.no_grad():
            out = model(**processor(images=[img], return_tensors="pt"))
        (expected,) = processor.post_process_panoptic_segmentation(
            out, threshold=0.3, target_sizes=[(img.height, img.width)], label_ids_to_fuse=set()
        )
        assert seg.kind == "panoptic"
        ids = expected["segmentation"].numpy()
        info = expected["segments_info"]
        assert [(i.segment_id, i.label_id, round(i.score, 6)) for i in seg.instances] == [
            (s["id"], s["label_id"], s["score"]) for s in info
        ]
        for inst in seg.instances:
            assert inst.mask.shape == (img.height, img.width)
            assert np.array_equal(inst.mask, ids == inst.segment_id)
            assert np.all(seg.label_map[inst.mask] == inst.label_id)
        assert np.all(seg.label_map[~np.isin(ids, [s["id"] for s in info])] == -1)
        found += len(info)
    assert found > 0


def test_mask2former_instance_mode(folders, runners) -> None:
    model, processor = _hf(folders["mask2former"], "Mask2FormerForUniversalSegmentation")
    img = images()[1]
    (seg,) = segment(runners["mask2former"], [img], mode="instance", threshold=0.1)
    with torch.no_grad():
        out = model(**processor(images=[img], return_tensors="pt"))
    (expected,) = processor.post_process_instance_segmentation(
        out, threshold=0.1, target_sizes=[(img.height, img.width)], return_binary_maps=True
    )
    assert seg.kind == "instance" and len(seg.instances) == len(expected["segments_info"]) > 0
    for inst, mask in zip(seg.instances, expected["segmentation"].numpy()):
        assert np.array_equal(inst.mask, mask.astype(bool))


@pytest.mark.parametrize("prompt", ["point", "two-points", "boxes"])
def test_sam_masks_equal_transformers(folders, runners, prompt) -> None:
    model, processor = _hf(folders["sam"], "SamModel", "SamProcessor")
    img = images()[0]
    kwargs, hf = {}, {}
    if prompt == "point":
        kwargs = {"points": [(80, 60)]}
        hf = {"input_points": [[[[80, 60]]]], "input_labels": [[[1]]]}
    elif prompt == "two-points":
        kwargs = {"points": [(80, 60, 1), (20, 100, 0)]}
        hf = {"input_points": [[[[80, 60], [20, 100]]]], "input_labels": [[[1, 0]]]}
    else:
        kwargs = {"boxes": [(10, 10, 90, 70), (60, 40, 150, 110)]}
        hf = {"input_boxes": [[[10, 10, 90, 70], [60, 40, 150, 110]]]}
    (seg,) = segment(runners["sam"], [img], **kwargs)
    inputs = processor(images=[img], return_tensors="pt", **hf)
    with torch.no_grad():
        out = model(
            **{
                k: v
                for k, v in inputs.items()
                if k in ("pixel_values", "input_points", "input_labels", "input_boxes")
            }
        )
    masks = processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0].numpy()
    scores = out.iou_scores[0].numpy()
    assert len(seg.instances) == masks.shape[0] == (2 if prompt == "boxes" else 1)
    for p, inst in enumerate(seg.instances):
        best = int(scores[p].argmax())
        assert inst.mask.shape == (120, 160)
        assert np.array_equal(inst.mask, masks[p, best])
        assert inst.score == pytest.approx(float(scores[p, best]))


def test_prompt_and_mode_errors(runners) -> None:
    img = images()[:1]
    with pytest.raises(UsageError, match="points"):
        segment(runners["sam"], img)
    with pytest.raises(UsageError, match="does not take points"):
        segment(runners["segformer"], img, points=[(1, 1)])
    with pytest.raises(UsageError, match="not 'panoptic'"):
        segment(runners["segformer"], img, mode="panoptic")
    with pytest.raises(UsageError, match="one box only"):
        segment(runners["sam"], img, points=[(1, 1)], boxes=[(0, 0, 5, 5), (1, 1, 9, 9)])


def test_matting_onnx_alpha_at_original_size(tmp_path) -> None:
    onnx_path = ts.build_matting_onnx(tmp_path / "birefnet.onnx", input_size=(64, 48))
    runner = load(
        onnx_path,
        "matte",
        runtime="onnx",
        variant="matting",
        sidecar={"input_size": [64, 48], "input_name": "input_image"},
    )
    rgb = np.zeros((150, 200, 3), np.uint8)
    rgb[30:120, 50:150, 0] = 255  # a red square: the "subject"
    (seg,) = segment(runner, [Image.fromarray(rgb)])
    assert seg.kind == "matting" and seg.image_size == (200, 150)
    assert seg.alpha.shape == (150, 200) and seg.alpha.dtype == np.float32
    np.testing.assert_allclose(seg.alpha, ts.expected_matte(rgb, (64, 48)), atol=1e-5)
    assert seg.alpha[75, 100] > 0.98 and seg.alpha[5, 5] < 0.02  # subject kept, background gone


def test_segformer_onnx_export_gives_same_label_map(folders, runners, tmp_path) -> None:
    import shutil

    from tests.fixtures.tiny_detectors import export_onnx

    folder = tmp_path / "segformer-onnx"
    shutil.copytree(folders["segformer"], folder)
    onnx_path = export_onnx(
        folder, "SegformerForSemanticSegmentation", height=64, width=64, output_names=("logits",)
    )
    runner = load(onnx_path, "segformer-onnx", runtime="onnx")
    for a, b in zip(segment(runner, images()), segment(runners["segformer"], images())):
        # argmax ties can flip only where two logits agree to ~1e-6: allow none here
        assert np.array_equal(a.label_map, b.label_map)


def test_exports_of_results(folders, runners, tmp_path) -> None:
    img = images()[0]
    (sem,) = segment(runners["segformer"], [img])
    path = write_label_map(tmp_path / "sem.png", sem)
    with Image.open(path) as png:
        assert png.mode == "P" and np.array_equal(np.asarray(png), sem.label_map.astype(np.uint8))
    (pan,) = segment(runners["mask2former"], [img], threshold=0.3)
    doc = coco_segmentation_dict([pan, sem], ["a.png", "a.png"])
    first = [a for a in doc["annotations"] if a["image_id"] == 1]
    assert len(first) == len(pan.instances)
    for ann, inst in zip(first, pan.instances):
        assert np.array_equal(rle_decode(ann["segmentation"]), inst.mask)
    # semantic results export one mask per class present
    classes = [a["category_id"] for a in doc["annotations"] if a["image_id"] == 2]
    assert 0 in sem.labels  # the tiny models count from 0, so COCO ids are shifted by one
    assert min(c["id"] for c in doc["categories"]) == 1
    assert classes == [c + 1 for c in sorted(np.unique(sem.label_map).tolist())]
    drawn = draw_segmentation(img, sem)
    assert drawn.height == img.height and drawn.width > img.width  # legend column added
    arr = np.asarray(drawn)[:, : img.width].astype(int)
    ys, xs = np.nonzero(sem.label_map == sem.label_map[0, 0])
    expected = (
        np.asarray(img)[ys[0], xs[0]] * 0.5 + np.array(label_colour(int(sem.label_map[0, 0]))) * 0.5
    )
    assert np.abs(arr[ys[0], xs[0]] - expected).max() <= 1
