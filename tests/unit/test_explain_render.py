"""Overlays, contact sheets and saved files."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from engine.explain import contact_sheet, explain, overlay, save_maps
from engine.explain.render import colorize
from tests.fixtures.tiny_vits import (
    bright_patch_image,
    crafted_vit,
    processor_for,
    tiny_ved_captioner,
    word_tokenizer,
)


def test_overlay_blends_by_opacity_and_keeps_unseen_pixels():
    image = np.full((10, 12, 3), 100, np.uint8)
    heat = np.linspace(0, 1, 120, dtype=np.float32).reshape(10, 12)
    assert overlay(image, heat, opacity=0.0).tolist() == image.tolist()
    np.testing.assert_array_equal(overlay(image, heat, opacity=1.0), colorize(heat, "jet"))
    half = overlay(image, heat, opacity=0.5).astype(int)
    np.testing.assert_allclose(half, (image.astype(int) + colorize(heat).astype(int)) / 2, atol=1)
    valid = np.zeros((10, 12), bool)
    valid[:, 6:] = True
    out = overlay(image, heat, opacity=0.8, valid=valid)
    assert (out[:, :6] == 100).all() and not (out[:, 6:] == 100).all()
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3)


def test_colormap_is_rgb():
    red_end = colorize(np.ones((1, 1)), "jet")[0, 0]
    assert red_end[0] > 100 and red_end[2] < 50  # jet's top is red, in RGB order
    with pytest.raises(ValueError, match="colormap"):
        colorize(np.ones((1, 1)), "rainbow-unicorn")


def test_contact_sheet_has_a_tile_per_layer_and_head():
    maps = np.random.default_rng(0).random((3, 4, 2, 5))
    sheet = contact_sheet(maps, tile=40, gap=4, labels=False)
    assert sheet.shape == (3 * 16 + 4 * 4, 4 * 40 + 5 * 4, 3)


def test_save_maps_writes_every_artifact_atomically(tmp_path):
    image = bright_patch_image((32, 48), (1, 4), 8)
    maps = explain(crafted_vit("vit"), image, method="rollout", processor=processor_for((32, 48)))
    paths = save_maps(maps, image, tmp_path / "out", "photo")
    names = sorted(p.name for p in paths)
    assert names == sorted(["photo.rollout.png", "photo.rollout.heatmap.npy", "photo.rollout.grid.npy",
                            "photo.attentions.npy", "photo.rollout.sheet.png"])
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".part")]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "photo.rollout.heatmap.npy"), maps.heatmap)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "photo.attentions.npy"), maps.attentions)
    assert Image.open(tmp_path / "out" / "photo.rollout.png").size == image.size
    sheet = Image.open(tmp_path / "out" / "photo.rollout.sheet.png")
    assert sheet.size[0] > sheet.size[1]  # 2 layers × 2 heads of a 4×6 grid: wider than tall


def test_save_maps_writes_one_overlay_per_token(tmp_path):
    processor = processor_for((32, 32))
    processor.tokenizer = word_tokenizer()
    image = Image.fromarray((np.random.default_rng(3).random((30, 30, 3)) * 255).astype(np.uint8))
    maps = explain(tiny_ved_captioner(), image, method="cross_attention", processor=processor, max_new_tokens=4)
    paths = save_maps(maps, image, tmp_path, "cap")
    token_files = [p for p in paths if ".tok" in p.name]
    assert len(token_files) == len(maps.per_token) == 4
    assert token_files[0].name.startswith("cap.cross_attention.tok00-")
