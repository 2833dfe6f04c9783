"""Issue 18, attention explorer: object discovery (TokenCut / LOST), per-layer patch
similarity from cached features, artifact tokens."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from engine.explain.discovery import (
    artifact_tokens,
    binary_affinity,
    discover,
    lost,
    normalized_cut,
    tokencut,
)
from tests.fixtures.tiny_vits import crafted_vit, processor_for


def _two_region_features(grid=(8, 8), box=(2, 3, 5, 7), dim=16, noise=0.05, seed=0):
    """Patch features: an object block (row0, col0, row1, col1) along one direction, the rest
    along another, plus noise."""
    rng = np.random.default_rng(seed)
    rows, cols = grid
    obj, bg = np.eye(dim)[0], np.eye(dim)[1]  # orthogonal: cosine 0 < tau between the regions
    inside = np.zeros(grid, dtype=bool)
    inside[box[0]:box[2], box[1]:box[3]] = True
    feats = np.where(inside.reshape(-1, 1), obj, bg) + noise * rng.normal(size=(rows * cols, dim))
    return feats, inside


def test_normalized_cut_matches_scipy_generalized_eigh():
    import scipy.linalg

    feats, _ = _two_region_features(noise=0.8, seed=3)
    w = binary_affinity(feats, tau=0.2, eps=1e-5)
    d = np.diag(w.sum(axis=1))
    values, vectors = scipy.linalg.eigh(d - w, d)  # the oracle: (D - W) x = λ D x
    value, x = normalized_cut(w)
    assert value == pytest.approx(values[1], abs=1e-9)
    ref = vectors[:, 1]
    sign = np.sign(ref @ d @ x)
    np.testing.assert_allclose(x * sign, ref, atol=1e-8)
    # both D-normalised: xᵀ D x = 1
    assert x @ d @ x == pytest.approx(1.0)


def test_binary_affinity_is_tau_threshold_with_eps():
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    w = binary_affinity(feats, tau=0.5, eps=1e-3)
    np.testing.assert_array_equal(w, [[1, 1, 1e-3], [1, 1, 1e-3], [1e-3, 1e-3, 1]])


def test_tokencut_finds_the_object_block_and_its_box():
    feats, inside = _two_region_features()
    found = tokencut(feats, (8, 8))
    np.testing.assert_array_equal(found.foreground, inside)
    assert found.cell_box == (2, 3, 5, 7)
    assert inside[found.seed]


def test_tokencut_foreground_by_attention_picks_the_attended_side():
    feats, inside = _two_region_features(box=(0, 0, 8, 6))  # the object is the bigger side
    attention = np.where(inside, 0.02, 0.001).reshape(-1)
    found = tokencut(feats, (8, 8), attention=attention)
    np.testing.assert_array_equal(found.foreground, inside)


def test_lost_seed_is_the_least_connected_patch_and_expands_to_the_object():
    rng = np.random.default_rng(1)
    bg = rng.normal(size=16)
    obj = -bg + rng.normal(size=16) * 0.3  # anti-correlated with the background
    inside = np.zeros((8, 8), dtype=bool)
    inside[1:3, 5:8] = True
    feats = np.where(inside.reshape(-1, 1), obj, bg) + 0.05 * rng.normal(size=(64, 16))
    found = lost(feats, (8, 8), k=6)
    assert inside[found.seed]
    np.testing.assert_array_equal(found.foreground, inside)
    assert found.cell_box == (1, 5, 3, 8)
    assert discover(feats, (8, 8), algorithm="lost", k=6).cell_box == found.cell_box


def _object_image(size=32, patch=8, cells=((1, 1), (1, 2), (2, 1), (2, 2))):
    array = np.zeros((size, size, 3), dtype=np.uint8)
    for r, c in cells:
        array[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = 255
    return Image.fromarray(array)


def test_discover_on_a_torch_vit_gives_mask_box_and_files(tmp_path):
    from engine.explain import explain, save_maps

    model = crafted_vit("vit")
    image = _object_image()
    maps = explain(model, image, method="discover", processor=processor_for((32, 32)))
    assert maps.mask is not None and maps.mask.shape == (32, 32)
    assert maps.box is not None
    assert maps.params["discover_algorithm"] == "tokencut"
    x0, y0, x1, y1 = maps.box
    assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
    names = {p.name for p in save_maps(maps, image, tmp_path, "img")}
    assert {"img.discover.mask.png", "img.discover.coco.json", "img.discover.xml",
            "img.discover.mask.rle.json"} <= names
    import json

    coco = json.loads((tmp_path / "img.discover.coco.json").read_text())
    assert len(coco["annotations"]) == 1
    assert coco["annotations"][0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    lost_maps = explain(model, image, method="discover", discover_algorithm="lost",
                        processor=processor_for((32, 32)))
    assert lost_maps.params["discover_algorithm"] == "lost" and lost_maps.box is not None


def test_discover_batch_coco_file(tmp_path):
    from engine.explain import explain
    from engine.explain.render import write_discovery_coco

    model = crafted_vit("vit")
    maps = [explain(model, _object_image(), method="discover", processor=processor_for((32, 32)))
            for _ in range(2)]
    import json

    path = write_discovery_coco(tmp_path / "boxes.json", maps, ["a.png", "b.png"])
    coco = json.loads(path.read_text())
    assert [a["image_id"] for a in coco["annotations"]] == [1, 2]


def test_patch_similarity_per_layer_from_cache_equals_numpy_and_skips_the_forward():
    from engine.explain.api import CaptureCache
    from engine.explain.torch_capture import capture
    from engine.explain.with_options import explain_with_options

    model = crafted_vit("vit", layers=3)
    processor = processor_for((32, 32))
    image = _object_image()

    class Runner:
        def __init__(self):
            self.module, self.processor = model, processor

    runner = Runner()
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    cache = CaptureCache()
    try:
        first = explain_with_options(runner, image, {"method": "patch_similarity", "patch": (4.0, 4.0),
                                                    "layer": 1, "threshold": 0.9}, cache=cache)
        start = time.perf_counter()
        second = explain_with_options(runner, image, {"method": "patch_similarity", "patch": (28.0, 20.0),
                                                     "layer": 1, "threshold": 0.9}, cache=cache)
        elapsed = time.perf_counter() - start
    finally:
        handle.remove()
    assert len(forwards) == 1 and cache.forwards == 1
    assert elapsed < 0.1, f"second click took {elapsed * 1000:.1f} ms"
    # the oracle: cosine of the clicked patch's layer-1 output token to every patch, in numpy
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[2][0].detach().numpy()
    for maps, (row, col) in ((first, (0, 0)), (second, (2, 3))):
        query = 1 + row * 4 + col
        f = hidden.astype(np.float64)
        expected = (f @ f[query]) / (np.linalg.norm(f, axis=1) * np.linalg.norm(f[query]))
        np.testing.assert_allclose(maps.grid_map.ravel(), expected[1:], atol=1e-5)
        assert maps.params["layer"] == 1 and maps.mask is not None
    assert capture  # imported: the same capture the cache wraps
    from engine.explain.render import mask_record
    from engine.exporters.masks import rle_decode

    np.testing.assert_array_equal(rle_decode(mask_record(second)["segmentation"]), second.mask)


def _scaled_patch_hook(model, token: int, factor: float):
    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, token] *= factor
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    base = getattr(model, "vit", model)
    layers = base.layers if hasattr(base, "layers") else base.encoder.layer
    return layers[-1].register_forward_hook(hook)


def test_artifact_token_is_found_marked_and_suppressed():
    from engine.explain import explain

    model = crafted_vit("vit", image_size=(64, 64))
    processor = processor_for((64, 64))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(90, 110, size=(64, 64, 3), dtype=np.uint8))
    token = 1 + 2 * 8 + 5  # row 2, col 5 of the 8×8 grid
    handle = _scaled_patch_hook(model, token, 50.0)
    try:
        maps = explain(model, image, method="patch_similarity", patch=(4.0, 4.0), layer=1,
                       processor=processor)
        suppressed = explain(model, image, method="patch_similarity", patch=(4.0, 4.0), layer=1,
                             processor=processor, suppress_artifacts=True)
        rolled = explain(model, image, method="rollout", processor=processor, suppress_artifacts=True)
    finally:
        handle.remove()
    assert maps.params["artifacts"] == [(2, 5)]
    assert any("artifact tokens" in n for n in maps.notes)
    x, y = maps.params["artifact_points"][0]
    assert (x, y) == pytest.approx((5.5 * 8 - 0.5, 2.5 * 8 - 0.5), abs=0.01)
    others = np.delete(suppressed.grid_map.ravel(), 2 * 8 + 5)
    assert suppressed.grid_map[2, 5] == pytest.approx(others.min())
    assert rolled.grid_map[2, 5] == pytest.approx(np.delete(rolled.grid_map.ravel(), 21).min())
    assert any("artifact token(s) removed" in n for n in rolled.notes)
    assert artifact_tokens(np.vstack([np.ones((20, 4)), 30 * np.ones((1, 4))])).tolist() == [20]
    assert artifact_tokens(np.vstack([np.ones((20, 4)), 3 * np.ones((1, 4))]), relative=2.0).tolist() == [20]


def test_mark_map_draws_box_and_artifacts():
    from engine.explain.maps import AttentionMaps, TokenLayout
    from engine.explain.render import mark_map

    layout = TokenLayout(num_tokens=17, grid=(4, 4), patch_start=1, special={"cls": (0,)}, patch_size=(8, 8),
                         input_size=(32, 32))
    maps = AttentionMaps("discover", np.zeros((32, 32), np.float32), np.zeros((4, 4), np.float32), (32, 32),
                         layout=layout, box=(8.0, 8.0, 24.0, 24.0), params={"artifact_points": [(4.0, 4.0)]})
    picture = mark_map(np.zeros((32, 32, 3), np.uint8), maps)
    assert (picture[8, 8:24] == 255).all()  # the box's top edge
    assert (picture[..., 1] == 0).any() and ((picture[..., 0] == 255) & (picture[..., 2] == 255)).any()
    assert torch  # torch is imported for the crafted models


def test_class_attention_equals_numpy_over_captured_attentions_and_gradients():
    from engine.explain import explain
    from engine.explain.geometry import pixel_inputs
    from engine.explain.torch_capture import capture
    from tests.fixtures.tiny_vits import bright_patch_image

    model = crafted_vit("vit", layers=2)
    processor = processor_for((32, 32))
    image = bright_patch_image((32, 32), (1, 2), 8)
    for target in (0, 1):
        maps = explain(model, image, method="class_attention", target=target, processor=processor)
        pixels, _ = pixel_inputs(processor, image, [])
        captured = capture(model, pixels, with_gradients=True, target=target)
        a, g = captured.attentions[-1].astype(np.float64), captured.gradients[-1].astype(np.float64)
        expected = np.clip(a * g, 0, None).mean(axis=0)[0, 1:].reshape(4, 4)  # heads mean, CLS row
        np.testing.assert_allclose(maps.grid_map, expected, rtol=1e-5, atol=1e-9)
        assert maps.params["target"] == target and maps.params["layer"] == -1
