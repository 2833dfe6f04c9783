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
from tests.tolerances import logit_error

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


# A label map is an argmax of upsampled logits. Where segment() and the oracle evaluate the network
# differently (images of one size batched together; ONNX Runtime vs torch), the logits are two fp32
# evaluations (tests/tolerances.py): for the tiny SegFormer Σ K ~700 (21 conv/linear layers plus
# attention over <= 64 keys) and classifier terms max Σ|w·h| ~11, so each logit moves by <= |δz|
# and a pixel whose top two logits are within 2|δz| (~1.8e-3; ~23 of 19200 pixels here, the
# closest 2e-5 apart, while the logits of two paths differ by up to 8e-6) may go either way.
SEGFORMER_MARGIN = 2 * logit_error(11, 700)


def assert_label_map_matches(label_map: np.ndarray, logits: torch.Tensor,
                             margin: float) -> np.ndarray:
    """`label_map` is the argmax of `logits` (classes, h, w) upsampled as
    post_process_semantic_segmentation does: exactly, wherever the top two logits are more
    than `margin` apart; at the near-ties either of the two. Returns the oracle's argmax."""
    up = torch.nn.functional.interpolate(logits[None], size=label_map.shape, mode="bilinear",
                                         align_corners=False)[0]
    top = up.topk(2, dim=0)
    first, second = top.indices.numpy()
    decided = (top.values[0] - top.values[1]).numpy() > margin
    assert decided.mean() > 0.99  # the exact check still covers almost every pixel
    assert np.array_equal(label_map[decided], first[decided])
    assert np.all((label_map == first) | (label_map == second))
    return first


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
        # images()[0] and [2] share a batch in segment(), not in the oracle: near-ties may flip
        oracle_argmax = assert_label_map_matches(seg.label_map, out.logits[0], SEGFORMER_MARGIN)
        assert np.array_equal(oracle_argmax, expected.numpy())  # the same maths as the processor
        assert seg.labels == ts.SEG_LABELS
    assert len(np.unique(results[0].label_map)) > 1  # the random model is not constant


def test_mask2former_panoptic_segments_equal_transformers(folders, runners) -> None:
    model, processor = _hf(folders["mask2former"], "Mask2FormerForUniversalSegmentation")
    found = 0
    # One image per batch, as the oracle: the same computation, so segments, 6-decimal scores and
    # masks are equal exactly. Batched, they are not, on some CPUs: images()[0] and [2] share a
    # batch, the fp32 summation order changes, a score crossed a rounding boundary (0.746084 vs
    # 0.746083) and 2 boundary pixels flipped (SSE kernels): ~70 pixels per image have two
    # queries within 1e-5 of each other, and Mask2Former's masked attention thresholds its own
    # mask predictions, which can turn a rounding difference into a different segment.
    results = segment(runners["mask2former"], images(), threshold=0.3, batch_size=1)
    for img, seg in zip(images(), results):
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
    model, processor = _hf(folders["segformer"], "SegformerForSemanticSegmentation")
    # the export is under test: feed it what the logits below are computed from (the ONNX
    # runner's own numpy processor equals transformers' PIL backend, test_lite_processors)
    runner.processor = processor
    torch_results = segment(runners["segformer"], images())
    for img, a, b in zip(images(), segment(runner, images()), torch_results):
        with torch.no_grad():
            logits = model(**processor(images=[img], return_tensors="pt")).logits[0]
        # ONNX Runtime and torch logits differ by up to ~8e-6, the closest top-two pair is 2e-5
        # apart: exact wherever the argmax is decided by more than the fp32 bound
        assert_label_map_matches(a.label_map, logits, SEGFORMER_MARGIN)
        assert_label_map_matches(b.label_map, logits, SEGFORMER_MARGIN)


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
