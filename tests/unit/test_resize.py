"""engine.media.resize: OpenCV's resizes replaced, checked against the references they
must match — torch's bilinear interpolate (what models are post-processed with), OpenCV's
INTER_LINEAR (Ultralytics' letterbox), and Pillow's own filters."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.media import resize

CASES = [((48, 64), (20, 30)), ((37, 53), (120, 90)), ((40, 30), (17, 61)), ((9, 9), (9, 27))]


def torch_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    chw = torch.from_numpy(np.ascontiguousarray(array.reshape(*array.shape[:2], -1)
                                                .transpose(2, 0, 1)))[None]
    out = torch.nn.functional.interpolate(chw, size=(size[1], size[0]), mode="bilinear",
                                          align_corners=False)[0].numpy().transpose(1, 2, 0)
    return out.reshape((size[1], size[0]) + array.shape[2:])


@pytest.mark.parametrize("shape,size", CASES)
@pytest.mark.parametrize("channels", [None, 3, 5])
def test_linear_is_torchs_bilinear(shape, size, channels):
    """Shrinking and enlarging, any channel count: torch's align_corners=False values
    (float32 arithmetic; the weights are computed the same way)."""
    full = shape if channels is None else (*shape, channels)
    values = np.random.default_rng(sum(full)).standard_normal(full).astype(np.float32)
    got = resize.linear(values, size)
    assert got.shape == (size[1], size[0]) + full[2:] and got.dtype == np.float32
    np.testing.assert_allclose(got, torch_bilinear(values, size), atol=2e-5)


@pytest.mark.parametrize("shape,size", CASES + [((1080, 1920), (640, 360))])
def test_linear_on_uint8_is_opencvs_inter_linear(shape, size):
    """uint8 RGB as Ultralytics' letterbox resizes it (OpenCV's INTER_LINEAR, which rounds
    its fixed-point weights: at most 1 apart)."""
    cv2 = pytest.importorskip("cv2")
    rgb = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    got = resize.linear(rgb, size)
    assert got.dtype == np.uint8
    want = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_same_size_is_an_exact_copy():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    for fn in (resize.linear, resize.filtered):
        got = fn(rgb, (9, 7))
        np.testing.assert_array_equal(got, rgb)
        assert got is not rgb


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("method", ["lanczos", "bicubic", "area", "nearest"])
def test_filtered_keeps_the_dtype_and_is_pillows_filter(dtype, method):
    """A plane of any of the three dtypes, resized by Pillow's filter; a multi-plane
    stack a plane at a time gives what each plane alone gives."""
    rng = np.random.default_rng(1)
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    plane = (rng.random((23, 31)) * top).astype(dtype)
    got = resize.filtered(plane, (62, 46), method)
    assert got.dtype == plane.dtype and got.shape == (46, 62)
    want = np.asarray(Image.fromarray(plane).resize((62, 46), resize.FILTERS[method]))
    np.testing.assert_array_equal(got, want)
    stack = np.stack([plane, plane[::-1]], axis=2).astype(np.float64)
    both = resize.filtered(stack, (62, 46), method)
    assert both.dtype == np.float64 and both.shape == (46, 62, 2)
    flipped = resize.filtered(np.ascontiguousarray(stack[..., 1]), (62, 46), method)
    np.testing.assert_allclose(both[..., 1], flipped, rtol=1e-6)


def test_filtered_lanczos_on_uint16_stays_in_range():
    """Lanczos rings past the input's range; a uint16 alpha is clipped, not wrapped."""
    alpha = np.zeros((16, 16), np.uint16)
    alpha[:, 8:] = 65535
    got = resize.filtered(alpha, (64, 64), "lanczos")
    assert got.dtype == np.uint16 and got.min() == 0 and got.max() == 65535
    assert (got[:, :28] < 2000).all() and (got[:, 36:] > 63000).all()
