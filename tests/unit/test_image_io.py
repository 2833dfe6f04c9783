"""Image input/output: every odd file gives a clear InputError; outputs keep depth and alpha."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.media.image import ensure_not_input, read_image, write_image


def _save(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_rgb_jpeg_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = _save(tmp_path, "a.png", Image.fromarray(arr))
    img = read_image(path)
    assert img.size == (30, 20) and img.bit_depth == 8 and img.alpha is None
    np.testing.assert_array_equal(np.asarray(img.rgb), arr)


def test_exif_orientation_applied(tmp_path):
    base = Image.new("RGB", (40, 20), (255, 0, 0))
    base.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = _save(tmp_path, "r.jpg", base, exif=exif.tobytes(), quality=95)
    img = read_image(path)
    assert img.size == (20, 40)
    assert img.exif_transposed
    top = np.asarray(img.rgb)[:5].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 60  # the blue strip now sits on top


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1", "LA", "RGBA", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    src = Image.new("RGB", (8, 6), (10, 200, 30))
    img = src.convert(mode) if mode != "I;16" else Image.fromarray(
        np.full((6, 8), 40000, np.uint16))
    name = "m.tif" if mode == "CMYK" else "m.png"
    loaded = read_image(_save(tmp_path, name, img))
    assert loaded.rgb.mode == "RGB" and loaded.size == (8, 6)
    if mode in ("LA", "RGBA"):
        assert loaded.alpha is not None
    if mode == "I;16":
        assert loaded.bit_depth == 16 and loaded.array.dtype == np.uint16
        assert int(loaded.array[0, 0, 0]) == 40000


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    img = read_image(path)
    assert np.asarray(img.rgb)[0, 0, 0] > 200
    assert any("first frame" in n for n in img.notes)


def test_one_by_one(tmp_path):
    assert read_image(_save(tmp_path, "p.png", Image.new("RGB", (1, 1)))).size == (1, 1)


@pytest.mark.parametrize("payload,needle", [
    (b"", "empty file"),
    (b"this is text, not a jpeg", "not an image"),
])
def test_bad_files(tmp_path, payload, needle):
    path = tmp_path / "bad.jpg"
    path.write_bytes(payload)
    with pytest.raises(InputError, match=needle):
        read_image(path)


def test_truncated_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match="truncated|corrupt"):
        read_image(path)


def test_decompression_bomb_guard(tmp_path):
    path = _save(tmp_path, "big.png", Image.new("L", (300, 300)))
    with pytest.raises(InputError, match="pixel limit"):
        read_image(path, pixel_limit=10_000)


def test_missing_and_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


def test_write_16bit_png_keeps_depth(tmp_path):
    arr = (np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000)
    out = write_image(tmp_path / "o.png", arr)
    back = read_image(out)
    assert back.size == (5, 4) and back.bit_depth == 16
    np.testing.assert_array_equal(back.array, arr)
    cv2 = pytest.importorskip("cv2")  # an independent decoder (libpng) agrees
    raw = cv2.cvtColor(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, arr)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_roundtrips_exactly_and_other_decoders_agree(tmp_path, suffix, channels):
    """Written and read by FFmpeg's codecs (Pillow has no 16-bit colour): every sample
    kept, alpha included; libpng/libtiff (through OpenCV, when installed) read the same
    samples, and read what they write the same way back."""
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (37, 53, channels), dtype=np.uint16)
    rgb, alpha = arr[..., :3], (arr[..., 3] if channels == 4 else None)
    back = read_image(write_image(tmp_path / f"o{suffix}", rgb, alpha=alpha))
    assert back.bit_depth == 16 and back.notes == []
    np.testing.assert_array_equal(back.array, rgb)
    if alpha is not None:
        np.testing.assert_array_equal(back.alpha, alpha)
    cv2 = pytest.importorskip("cv2")
    order = [2, 1, 0, 3][:channels]  # OpenCV's BGR(A)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / f"o{suffix}"),
                                             cv2.IMREAD_UNCHANGED)[..., order], arr)
    cv2.imwrite(str(tmp_path / f"cv{suffix}"), arr[..., order])
    theirs = read_image(tmp_path / f"cv{suffix}")
    assert theirs.bit_depth == 16
    np.testing.assert_array_equal(theirs.array, rgb)


def test_16bit_tiffs_from_other_writers(tmp_path, monkeypatch):
    """Deflate with the horizontal predictor (what image editors write) is read at 16
    bits by FFmpeg's decoder; a tiled TIFF, which that decoder mis-assembles, is read by
    tifffile at 16 bits, and without tifffile at 8 bits with a note — never wrong pixels."""
    import sys

    tifffile = pytest.importorskip("tifffile")
    arr = np.random.default_rng(5).integers(0, 65536, (50, 70, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "zip.tif", arr, compression="zlib", predictor=2,
                     photometric="rgb")
    tifffile.imwrite(tmp_path / "tiled.tif", arr, tile=(16, 16), photometric="rgb")
    for name in ("zip.tif", "tiled.tif"):
        deep = read_image(tmp_path / name)
        assert deep.bit_depth == 16 and deep.notes == [], name
        np.testing.assert_array_equal(deep.array, arr)
    monkeypatch.setitem(sys.modules, "tifffile", None)  # a Lite install
    tiled = read_image(tmp_path / "tiled.tif")
    assert tiled.bit_depth == 8 and "tiled TIFF" in " ".join(tiled.notes)
    np.testing.assert_allclose(np.asarray(tiled.rgb, dtype=float), arr / 257, atol=1)


def test_write_with_alpha_and_jpeg_drops_it(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    alpha = np.full((4, 4), 128, np.uint8)
    png = read_image(write_image(tmp_path / "a.png", arr, alpha=alpha))
    assert png.alpha is not None and int(png.alpha[0, 0]) == 128
    jpg = read_image(write_image(tmp_path / "a.jpg", arr, alpha=alpha, quality=80))
    assert jpg.alpha is None


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    write_image(tmp_path / "x.webp", np.zeros((3, 3, 3), np.uint8), quality=70)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.webp"]
    with pytest.raises(InputError, match="unsupported output format"):
        write_image(tmp_path / "x.xyz", np.zeros((3, 3, 3), np.uint8))


def test_never_overwrites_input(tmp_path):
    src = _save(tmp_path, "in.png", Image.new("RGB", (2, 2)))
    with pytest.raises(InputError, match="overwrite an input"):
        ensure_not_input(tmp_path / "." / "in.png", [src])
