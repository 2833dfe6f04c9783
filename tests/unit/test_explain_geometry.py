"""Maps land on the right pixels: the geometry replays each processor's resize/crop/pad."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.explain import explain
from engine.explain.geometry import geometry_from_processor, grid_to_image
from engine.explain.layout import feature_map_layout
from tests.fixtures.tiny_vits import crafted_vit


def _processors():
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        ConvNextImageProcessor,
        DetrImageProcessor,
        ViTImageProcessor,
    )

    return {
        "vit-stretch": ViTImageProcessor(size={"height": 32, "width": 48}),
        "dinov2-crop": BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                         do_center_crop=True),
        "clip-crop": CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}),
        "convnext-crop-pct": ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875),
        "detr-aspect": DetrImageProcessor(size={"shortest_edge": 40, "longest_edge": 64}, do_pad=False),
        "crop-pads": BitImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 32, "width": 32},
                                       do_center_crop=True),
    }


def _dot_image(size_wh, centre_xy, radius=2):
    w, h = size_wh
    yy, xx = np.mgrid[0:h, 0:w]
    dot = ((xx - centre_xy[0]) ** 2 + (yy - centre_xy[1]) ** 2) <= radius ** 2
    array = np.zeros((h, w, 3), np.uint8)
    array[dot] = 255
    return Image.fromarray(array)


@pytest.mark.parametrize("name", list(_processors()))
@pytest.mark.parametrize("size_wh,dot", [((100, 50), (60, 25)), ((45, 90), (20, 50)), ((64, 64), (30, 34))])
def test_a_dot_lands_where_the_geometry_says(name, size_wh, dot):
    """Oracle: the processor's own output. The dot's centroid in pixel_values must sit where
    Geometry maps the dot's centre (resizing moves a centroid by well under a pixel)."""
    processor = _processors()[name]
    image = _dot_image(size_wh, dot, radius=3)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"][0].numpy().mean(0)
    geometry = geometry_from_processor(processor, size_wh)
    assert geometry.input_size == pixels.shape
    weights = pixels - pixels.min()
    weights[weights < 0.05 * weights.max()] = 0
    yy, xx = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
    centroid = ((weights * xx).sum() / weights.sum(), (weights * yy).sum() / weights.sum())
    expected = geometry.original_to_input(*dot)
    assert centroid == pytest.approx(expected, abs=0.75)


def test_valid_mask_marks_cropped_away_pixels():
    processor = _processors()["dinov2-crop"]
    geometry = geometry_from_processor(processor, (100, 50))  # resized 80×40, crop 32×32 at (4, 24)
    valid = geometry.valid_mask()
    cols = np.flatnonzero(valid.any(0))
    rows = np.flatnonzero(valid.any(1))
    assert (cols[0], cols[-1]) == (30, 69)  # input x 0..31 -> resized 24..55 -> original ×1.25
    assert (rows[0], rows[-1]) == (5, 44)


def test_grid_cells_cover_their_pixels():
    layout = feature_map_layout((2, 3), (20, 30))  # stride 16: covers 32×48 of a 20×30 input
    processor = _processors()["vit-stretch"]
    geometry = geometry_from_processor(processor, (48, 32))  # 48×32 -> 48×32 (identity)
    grid = np.zeros((2, 3), np.float32)
    grid[1, 2] = 1.0
    heat = grid_to_image(grid, layout, geometry)
    assert heat[24, 40] == pytest.approx(1.0)  # centre of cell (1, 2): rows 16..31, cols 32..47
    assert heat[8, 8] == pytest.approx(0.0)


def test_map_through_center_crop_lands_on_the_attended_object():
    """A white square in the ORIGINAL image, seen through resize + center crop, must be
    where the crafted model's map peaks — and nothing is drawn on the cropped-away sides."""
    from transformers import BitImageProcessor

    processor = BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                  do_center_crop=True, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                  resample=2)
    # 100×50 -> resized 80×40 -> crop rows 4..35, cols 24..55. Model cell (1, 2) = input rows 8..15,
    # cols 16..23 = resized rows 12..19, cols 40..47 = original rows 15..24, cols 50..59.
    array = np.zeros((50, 100, 3), np.uint8)
    array[15:25, 50:60] = 255
    image = Image.fromarray(array)
    maps = explain(crafted_vit("vit"), image, method="rollout", processor=processor)
    assert maps.heatmap.shape == (50, 100)
    y, x = np.unravel_index(np.argmax(maps.heatmap), maps.heatmap.shape)
    assert 15 <= y < 25 and 50 <= x < 60
    assert np.unravel_index(np.argmax(maps.grid_map), maps.grid_map.shape) == (1, 2)
    assert not maps.valid[:, :29].any() and not maps.valid[:, 71:].any()
    assert np.all(maps.heatmap[~maps.valid] == 0)
    outside = maps.valid.copy()
    outside[15:25, 50:60] = False
    assert maps.heatmap[15:25, 50:60].mean() > 3 * maps.heatmap[outside].mean()
