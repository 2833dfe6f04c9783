"""The numpy image processors (engine.runtimes.lite_processors) against transformers' own.

Oracles: transformers' PIL-backend processor built from the same preprocessor_config.json
(the Lite classes re-implement it: equal bit for bit on real photos), its torchvision
backend (the default when torch is installed: Pillow and torchvision resample a little
differently, bounded below), and transformers' post-processing on the same logits.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.runtimes.lite_processors import load_image_processor, supported_classes

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
skdata = pytest.importorskip("skimage.data")

CONFIGS = {  # the catalog's real values (shared/catalog-research.md) and legacy spellings
    "vit": {"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224},
            "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2},
    "dinov2": {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 256},
               "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "resample": 3,
               "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    "deit": {"image_processor_type": "DeiTImageProcessorFast", "size": {"height": 256, "width": 256},
             "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "resample": 3},
    "detr": {"image_processor_type": "DetrImageProcessor",
             "size": {"shortest_edge": 800, "longest_edge": 1333}, "do_pad": True},
    "detr-legacy": {"feature_extractor_type": "DetrFeatureExtractor", "size": 400, "max_size": 600},
    "yolos": {"image_processor_type": "YolosImageProcessor",
              "size": {"shortest_edge": 512, "longest_edge": 864}},
    "rtdetr": {"image_processor_type": "RTDetrImageProcessor", "size": {"height": 640, "width": 640},
               "do_normalize": False, "do_pad": False},
    "segformer": {"image_processor_type": "SegformerImageProcessor",
                  "size": {"height": 512, "width": 512}, "do_reduce_labels": True},
}
# one 8-bit step of Pillow vs torchvision resampling, through the widest normalisation (std 0.229)
TORCHVISION_BOUND = 8 / 255 / 0.229


def photos() -> list[Image.Image]:
    return [Image.fromarray(skdata.astronaut()), Image.fromarray(skdata.chelsea()),
            Image.fromarray(skdata.coffee()).resize((333, 517)),
            Image.fromarray(skdata.camera()).convert("RGB").resize((257, 129))]


def folder_with(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def batches(lite) -> list[list[Image.Image]]:
    images = photos()
    out = [[im] for im in images]
    if lite.do_pad:  # a batch of two sizes: padding and the pixel mask
        out.append(images[:3])
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pixel_values_equal_transformers_pil_backend(name, tmp_path):
    folder = folder_with(tmp_path, CONFIGS[name])
    lite = load_image_processor(folder)
    assert lite is not None, name
    reference = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
    for batch in batches(lite):
        want = reference(images=batch, return_tensors="np")
        got = lite(images=batch)
        np.testing.assert_array_equal(got["pixel_values"], np.asarray(want["pixel_values"]))
        if "pixel_mask" in want:
            np.testing.assert_array_equal(got["pixel_mask"], np.asarray(want["pixel_mask"]))
        assert got["pixel_values"].dtype == np.float32


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pixel_values_close_to_torchvision_backend(name, tmp_path):
    """What the torch path feeds by default: same shapes and masks, values a few 8-bit
    steps apart where the two libraries resample differently."""
    folder = folder_with(tmp_path, CONFIGS[name])
    lite = load_image_processor(folder)
    reference = transformers.AutoImageProcessor.from_pretrained(folder, backend="torchvision")
    for batch in batches(lite):
        want = np.asarray(reference(images=batch, return_tensors="np")["pixel_values"])
        got = lite(images=batch)["pixel_values"]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= TORCHVISION_BOUND
        assert np.abs(got - want).mean() < 0.01


def test_attributes_replay_the_same_geometry(tmp_path):
    """engine.explain.geometry reads the processor's attributes: both give one geometry."""
    from engine.explain.geometry import geometry_from_processor

    for name in ("vit", "dinov2", "deit", "detr", "segformer"):
        folder = folder_with(tmp_path, CONFIGS[name])
        ours = load_image_processor(folder)
        theirs = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
        for size in ((512, 512), (640, 427), (300, 700)):
            assert geometry_from_processor(ours, size) == geometry_from_processor(theirs, size), name


def test_unknown_class_and_no_config(tmp_path):
    assert load_image_processor(folder_with(tmp_path, {"image_processor_type": "SamImageProcessor"})) is None
    assert load_image_processor(tmp_path / "nothing-here") is None
    assert {"DetrImageProcessor", "SegformerImageProcessor", "ViTImageProcessor"} <= set(supported_classes())


def _outputs(rng, n=3, queries=20, classes=6, extra=1):
    logits = rng.standard_normal((n, queries, classes + extra)).astype(np.float32) * 3
    boxes = rng.uniform(0.05, 0.95, (n, queries, 4)).astype(np.float32)
    boxes[..., 2:] *= 0.3
    return logits, boxes


@pytest.mark.parametrize("name,extra", [("detr", 1), ("yolos", 1), ("rtdetr", 0)])
def test_object_detection_decoding_equals_transformers(name, extra, tmp_path):
    from transformers.utils import ModelOutput

    folder = folder_with(tmp_path, CONFIGS[name])
    lite = load_image_processor(folder)
    reference = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
    logits, boxes = _outputs(np.random.default_rng(0), extra=extra)
    sizes = [(480, 640), (512, 512), (333, 517)]
    for threshold in (0.0, 0.3, 0.7):
        want = reference.post_process_object_detection(
            ModelOutput(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes)),
            threshold=threshold, target_sizes=sizes)
        got = lite.post_process_object_detection({"logits": logits, "pred_boxes": boxes},
                                                 threshold=threshold, target_sizes=sizes)
        for w, g in zip(want, got):
            order_w = np.lexsort((w["labels"].numpy(), -w["scores"].numpy()))
            order_g = np.lexsort((g["labels"], -g["scores"]))
            np.testing.assert_allclose(g["scores"][order_g], w["scores"].numpy()[order_w],
                                       rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(g["labels"][order_g], w["labels"].numpy()[order_w])
            np.testing.assert_allclose(g["boxes"][order_g], w["boxes"].numpy()[order_w],
                                       rtol=1e-6, atol=1e-3)


def test_semantic_decoding_equals_transformers(tmp_path):
    from transformers.utils import ModelOutput

    folder = folder_with(tmp_path, CONFIGS["segformer"])
    lite = load_image_processor(folder)
    reference = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 150, 128, 128)).astype(np.float32)
    sizes = [(512, 683), (100, 61)]
    want = reference.post_process_semantic_segmentation(
        ModelOutput(logits=torch.from_numpy(logits)), target_sizes=sizes)
    got = lite.post_process_semantic_segmentation({"logits": logits}, target_sizes=sizes)
    for w, g in zip(want, got):
        # OpenCV's and torch's bilinear weights differ in the last bits (measured <= 4e-5 on
        # unit-variance logits): a label flips only where two classes tie that closely
        assert g.shape == tuple(w.shape)
        assert (g == w.numpy()).mean() > 0.9995
    plain = lite.post_process_semantic_segmentation({"logits": logits})
    np.testing.assert_array_equal(plain[0], logits[0].argmax(0))
