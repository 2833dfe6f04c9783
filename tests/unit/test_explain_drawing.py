"""The numpy / Pillow replacements for what the engine used to take from OpenCV.

OpenCV is no engine dependency any more, but it stays installed in the test environment
as an oracle: the comparisons skip without it, the plain behaviour tests do not.
"""
from __future__ import annotations


import numpy as np
import pytest

from engine.explain.colormaps import NAMES, table
from engine.explain.discovery import _component
from engine.explain.geometry import Geometry, grid_to_image
from engine.explain.maps import TokenLayout
from engine.explain.render import COLORMAPS, _draw_shapes, colorize, contact_sheet, overlay
from engine.media import morphology
from engine.media.morphology import flood_fill, outline



def test_colormap_tables_are_opencvs():
    cv2 = pytest.importorskip("cv2")
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    for name in NAMES:
        code = getattr(cv2, f"COLORMAP_{name.upper()}")
        expected = cv2.applyColorMap(ramp, code)[:, 0, ::-1]
        np.testing.assert_array_equal(table(name), expected, err_msg=name)
        values = np.random.default_rng(1).random((7, 9)) * 1.2 - 0.1  # clipped to [0, 1]
        gray = np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(colorize(values, name), cv2.applyColorMap(gray, code)[..., ::-1])


def test_colormap_names_and_gray():
    assert set(COLORMAPS) == set(NAMES) | {"gray"}
    for name in NAMES:
        assert table(name).shape == (256, 3) and table(name).dtype == np.uint8
    values = np.array([[0.0, 0.5, 1.0, np.nan]])
    out = colorize(values, "gray")
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 128, 255, 0] and (out[..., 0] == out[..., 2]).all()
    jet = colorize(values, "jet")
    assert jet.flags.writeable and jet.shape == (1, 4, 3)
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(values, "parula")


# --- grid_to_image ---------------------------------------------------------------------

# resize 150×97 -> 120×80, then crop rows 5.. and cols 4..: a 73×112 input of 14×16 patches
# (5×7 grid, 70×112 of it covered), so x and y scale differently, both offsets are non-zero,
# every side of the resized image is cropped away, and the grid leaves a remainder of 3 rows
GEOMETRY = Geometry(original_size=(150, 97), resized_size=(80, 120), crop_offset=(5, 4), input_size=(73, 112))
LAYOUT = TokenLayout(num_tokens=36, grid=(5, 7), patch_start=1, patch_size=(14, 16), input_size=(73, 112))


def _bilinear_reference(grid: np.ndarray, layout: TokenLayout, geometry: Geometry) -> np.ndarray:
    """Per pixel: original -> model input -> grid coordinate, then bilinear with clamped taps."""
    rows, cols = grid.shape
    ph, pw = layout.patch_size
    w, h = geometry.original_size
    out = np.zeros((h, w), np.float64)
    for y in range(h):
        for x in range(w):
            xi, yi = geometry.original_to_input(x, y)
            gx, gy = (xi + 0.5) / pw - 0.5, (yi + 0.5) / ph - 0.5
            if not (-0.5 - 1e-6 < gx < cols - 0.5 + 1e-6 and -0.5 - 1e-6 < gy < rows - 0.5 + 1e-6):
                continue
            x0, y0 = int(np.floor(gx)), int(np.floor(gy))
            fx, fy = gx - x0, gy - y0

            def at(r, c):
                return grid[min(max(r, 0), rows - 1), min(max(c, 0), cols - 1)]

            out[y, x] = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
                         + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
    return out


def test_grid_to_image_is_exact_bilinear():
    grid = np.random.default_rng(5).random(LAYOUT.grid).astype(np.float32)
    heat = grid_to_image(grid, LAYOUT, GEOMETRY)
    assert heat.dtype == np.float32 and heat.shape == (97, 150)
    np.testing.assert_allclose(heat, _bilinear_reference(grid, LAYOUT, GEOMETRY), atol=1e-6)
    valid = GEOMETRY.valid_mask()
    assert (heat[~valid] == 0).all() and (~valid[:, :5]).all() and (~valid[:, -5:]).all()
    rows = np.flatnonzero(heat.any(axis=1))  # the 3 input rows below the grid map to nothing
    assert rows[-1] < np.flatnonzero(valid.any(axis=1))[-1] and (heat[valid][:10] > 0).all()
    constant = grid_to_image(np.full(LAYOUT.grid, 0.25, np.float32), LAYOUT, GEOMETRY)
    assert set(np.unique(constant)) <= {0.0, 0.25}


def test_grid_to_image_is_within_opencvs_weight_rounding():
    cv2 = pytest.importorskip("cv2")
    grid = (np.random.default_rng(6).random(LAYOUT.grid) * 40 - 10).astype(np.float32)
    heat = grid_to_image(grid, LAYOUT, GEOMETRY)
    m = GEOMETRY.input_to_original()
    (ph, pw), (w, h) = LAYOUT.patch_size, GEOMETRY.original_size
    original_to_grid = np.array([[1 / (m[0, 0] * pw), 0, (0.5 - m[0, 2] / m[0, 0]) / pw - 0.5],
                                 [0, 1 / (m[1, 1] * ph), (0.5 - m[1, 2] / m[1, 1]) / ph - 0.5]])
    old = cv2.warpAffine(grid, original_to_grid, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    seen = heat != 0
    assert seen.sum() > 0.8 * seen.size
    spread = float(grid.max() - grid.min())
    assert np.abs(heat[seen] - old[seen]).max() <= spread / 32 + 1e-5


# --- _component --------------------------------------------------------------------------

BLOBS = np.array([
    [1, 1, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 1, 1],
    [0, 0, 1, 1, 0, 0, 1],  # (2, 2) touches (1, 1) diagonally only
    [0, 0, 1, 0, 0, 0, 1],
    [0, 0, 0, 0, 1, 1, 1],
], dtype=bool)


def test_component_is_four_connected():
    first = _component(BLOBS, (0, 0))
    assert first.dtype == bool and first.shape == BLOBS.shape
    assert np.argwhere(first).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert np.argwhere(_component(BLOBS, (3, 2))).tolist() == [[2, 2], [2, 3], [3, 2]]
    assert _component(BLOBS, (1, 5)).sum() == 7  # the hook on the right, around to (4, 4)
    assert not _component(BLOBS, (0, 4)).any()  # the seed is not in the mask
    assert not _component(BLOBS, (3, 3)).any()


def test_component_matches_opencv_connected_components():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    masks = [BLOBS] + [rng.random((rng.integers(1, 16), rng.integers(1, 16))) < 0.55 for _ in range(60)]
    for mask in masks:
        _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
        for seed in np.ndindex(*mask.shape):
            expected = labels == labels[seed] if labels[seed] else np.zeros_like(mask)
            np.testing.assert_array_equal(_component(mask, seed), expected)


# --- _erode -------------------------------------------------------------------------------


def test_erode_counts_outside_the_image_as_inside():
    full = np.ones((4, 5), bool)
    assert morphology.erode(full, 2).all()
    square = np.zeros((9, 9), bool)
    square[1:8, 1:8] = True
    assert np.argwhere(morphology.erode(square, 2)).tolist() == [[r, c] for r in range(3, 6) for c in range(3, 6)]
    corner = np.ones((6, 6), bool)
    corner[5, 0] = False
    eroded = morphology.erode(corner, 1)
    assert not eroded[4:, :2].any() and eroded[:4].all() and eroded[:, 2:].all()


def test_erode_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(8)
    for steps in (1, 2, 3):
        for density in (0.7, 0.9, 0.97):
            for shape in ((1, 1), (3, 8), (17, 23), (40, 31)):
                mask = rng.random(shape) < density
                kernel = np.ones((2 * steps + 1, 2 * steps + 1), np.uint8)
                expected = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
                np.testing.assert_array_equal(morphology.erode(mask, steps), expected, err_msg=f"{steps} {shape}")


# --- mask outline -------------------------------------------------------------------------


def _ring_mask() -> np.ndarray:
    mask = np.zeros((60, 80), bool)
    mask[10:50, 15:65] = True
    mask[22:38, 30:50] = False  # a hole: OpenCV's RETR_EXTERNAL draws no contour around it
    mask[0:5, 70:80] = True  # a second blob at the image's edge
    return mask


def test_overlay_outline_is_on_the_outer_boundary_only():
    mask = _ring_mask()
    image = np.full((60, 80, 3), 100, np.uint8)
    out = overlay(image, np.zeros((60, 80), np.float32), opacity=0.0, mask=mask)  # 60 px: 1 px line
    painted = (out != 100).any(axis=2)
    assert (out[painted] == 255).all()
    expected = np.zeros_like(mask)
    expected[[10, 49], 15:65] = True  # the outer rectangle's edge rows and columns
    expected[10:50, [15, 64]] = True
    expected[[0, 4], 70:80] = True  # the edge blob, closed by the image's edge on top and right
    expected[0:5, [70, 79]] = True
    np.testing.assert_array_equal(painted, expected)  # nothing inside, no line around the hole


def _within(mask: np.ndarray, reach: int) -> np.ndarray:
    """Pixels at most `reach` away (Chebyshev) from a pixel of `mask`."""
    padded = np.pad(mask, reach)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * reach + 1):
        for dx in range(2 * reach + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def test_outline_thickness_stays_near_the_boundary():
    mask = _ring_mask()
    boundary = outline(mask, 1)
    for thickness in (1, 2, 3, 5):
        line = outline(mask, thickness)
        assert not (line & ~_within(boundary, (thickness + 1) // 2)).any(), thickness
        assert (line & boundary).sum() == boundary.sum()  # the boundary itself is always covered
        assert not line[26:34, 34:46].any()  # the hole stays untouched


def test_outline_matches_opencv_contours():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(9)
    from PIL import Image

    masks = [_ring_mask()]
    for _ in range(12):
        coarse = (rng.random((6, 8)) < 0.5).astype(np.uint8) * 255
        masks.append(np.asarray(Image.fromarray(coarse).resize((80, 60), Image.BILINEAR)) > 127)
        masks.append(rng.random((30, 40)) < 0.6)  # ragged, with diagonal-only holes and touches
    for mask in masks:
        if not mask.any():
            continue
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for thickness in (1, 2, 4):
            drawn = np.zeros(mask.shape, np.uint8)
            cv2.drawContours(drawn, contours, -1, 1, thickness)
            ours = outline(mask, thickness)
            if thickness == 1:  # the same pixels exactly
                np.testing.assert_array_equal(ours, drawn.astype(bool))
            else:  # a square pen instead of a round one: a little more at diagonals, never less
                assert not (drawn.astype(bool) & ~ours).any()
                assert (ours & ~drawn.astype(bool)).sum() <= 0.25 * drawn.sum()


def test_flood_fill_follows_winding_paths():
    free = np.ones((9, 9), bool)
    free[1, 0:8] = False  # a spiral of walls: the path from the corner turns many times
    free[1:8, 7] = False
    free[7, 1:8] = False
    free[3:8, 1] = False
    free[3, 1:6] = False
    free[3:6, 5] = False
    seeds = np.zeros_like(free)
    seeds[0, 0] = True
    reached = flood_fill(free, seeds)
    assert (reached == free).all()  # one free region, however winding
    free[2, 8] = False  # cut the way in
    reached = flood_fill(free, seeds)
    assert reached[0].all() and reached[1, 8] and not reached[2:].any()
    assert not flood_fill(free, np.zeros_like(free)).any()


# --- contact sheet and shapes -------------------------------------------------------------


def test_contact_sheet_tiles_are_nearest_neighbour_and_labelled():
    maps = np.random.default_rng(10).random((2, 3, 6, 8))
    sheet = contact_sheet(maps, tile=40, gap=4, colormap="viridis")
    bare = contact_sheet(maps, tile=40, gap=4, colormap="viridis", labels=False)
    assert sheet.dtype == np.uint8 and sheet.shape == (16 + 2 * 30 + 3 * 4, 34 + 3 * 40 + 4 * 4, 3)
    from engine.explain.methods import normalize01

    small = colorize(normalize01(maps[1, 2]), "viridis")
    tile = sheet[16 + 4 + 30 + 4:16 + 4 + 60 + 4, 34 + 4 + 2 * 44:34 + 4 + 2 * 44 + 40]
    rows = (np.arange(30) * 6) // 30
    cols = (np.arange(40) * 8) // 40
    np.testing.assert_array_equal(tile, small[np.ix_(rows, cols)])
    np.testing.assert_array_equal(bare[38:68, 4 + 2 * 44:4 + 2 * 44 + 40], small[np.ix_(rows, cols)])
    label_band = sheet[:16, 34:]
    assert (label_band != 24).any() and label_band.max() <= 220  # "h0".."h2" in light grey
    assert (sheet[20:50, :34] != 24).any()  # "L0"
    cv2 = pytest.importorskip("cv2")
    np.testing.assert_array_equal(tile, cv2.resize(small, (40, 30), interpolation=cv2.INTER_NEAREST))


def test_draw_shapes_returns_a_new_rgb_array():
    picture = np.full((40, 50, 3), 10, np.uint8)
    drawn = _draw_shapes(picture, [(40, 30, 5, 8, (255, 255, 255))], [(25, 20, 6, (255, 0, 255))], 1)
    assert drawn.dtype == np.uint8 and drawn.shape == picture.shape
    assert (picture == 10).all()  # the input is left alone
    assert drawn[8, 5:41].tolist() == [[255, 255, 255]] * 36  # corners given in either order
    assert drawn[9:30, 5].tolist() == [[255, 255, 255]] * 21
    assert drawn[20, 19].tolist() == [255, 0, 255] and drawn[20, 31].tolist() == [255, 0, 255]
    assert drawn[20, 25].tolist() == [10, 10, 10]
    thick = _draw_shapes(picture, [(5, 8, 40, 30, (255, 255, 255))], thick=3)
    assert (thick[7:10, 20] == 255).all() and thick[6, 20].tolist() == [10, 10, 10]  # straddles y = 8
    off_image = _draw_shapes(picture, [(-10, -10, 100, 100, (255, 255, 255))], [(0, 0, 50, (255, 0, 255))], 2)
    assert off_image.shape == picture.shape
