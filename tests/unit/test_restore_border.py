"""Restoration models of unpadded ("valid") convolutions: sidecar `border`, tiler, restore.

A tiny ONNX model built here loses 3 input pixels per side and upscales ×2, like the
waifu2x family. Oracle for every tiled run: pad the whole image by the border (np.pad,
same mode) and run the graph once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.catalog.local_import import import_model, list_imports
from engine.catalog.sidecar import BORDER_MODES as SIDECAR_BORDER_MODES
from engine.catalog.sidecar import validate_sidecar
from engine.errors import CatalogError
from engine.media.image import LoadedImage
from engine.media.tiling import BORDER_MODES, SizeRequirement, TileScheduler, border_region
from engine.runtimes import load_runner
from engine.tasks.restore import restore, spec_for

BORDER, SCALE = 3, 2
SIDECAR = f"""\
task = "restore"
name = "Tiny valid-conv x2"
output = "image"            # an image-to-image model
scale = {SCALE}                   # output = scale × (input − 2 × border)
border = {BORDER}                  # three unpadded 3×3 convolutions lose 3 pixels per side
border_mode = "edge"        # or "reflect": how the image is extended past its edges
range = [0, 1]
layout = "NCHW"
"""


@pytest.fixture(autouse=True)
def app_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own Ocula home, hence its own import index."""
    home = tmp_path / "ocula-home"
    monkeypatch.setenv("OCULA_HOME", str(home))
    return home


class ValidConvX2(torch.nn.Module):
    """Three 3×3 convolutions without padding, a ×2 pixel shuffle, plus the (cropped,
    nearest-upscaled) input as a residual so the output looks like the image."""

    def __init__(self, convs: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[torch.nn.Module] = []
        for i in range(convs):
            out = 3 * SCALE * SCALE if i == convs - 1 else 8
            layers += [torch.nn.Conv2d(3 if i == 0 else 8, out, 3)]
            if i < convs - 1:
                layers.append(torch.nn.ReLU())
        self.body = torch.nn.Sequential(*layers, torch.nn.PixelShuffle(SCALE))
        self.convs = convs

    def forward(self, x):
        c = self.convs
        base = torch.nn.functional.interpolate(x[:, :, c:-c, c:-c], scale_factor=SCALE,
                                               mode="nearest")
        return base + 0.1 * self.body(x)


def export(path: Path, *, size: int | None = None, convs: int = 3) -> Path:
    """`size` = a fixed size×size input; None = dynamic height and width."""
    axes = None if size else {"images": {0: "batch", 2: "height", 3: "width"},
                              "output": {0: "batch", 2: "out_height", 3: "out_width"}}
    edge = size or 16
    torch.onnx.export(ValidConvX2(convs).eval(), (torch.zeros(1, 3, edge, edge),), str(path),
                      dynamo=False, input_names=["images"], output_names=["output"],
                      dynamic_axes=axes)
    return path


def with_sidecar(path: Path, text: str) -> Path:
    path.with_suffix(".toml").write_text(text, encoding="utf-8")
    return path


def photo(h: int, w: int) -> np.ndarray:
    """A 16-bit crop of a real photo (edges, flat areas and texture)."""
    from skimage import data

    crop = data.astronaut()[60:60 + h, 120:120 + w].astype(np.int64) * 257
    noise = np.random.default_rng(0).integers(0, 257, crop.shape)
    return np.clip(crop + noise - 128, 0, 65535).astype(np.uint16)


def loaded(array: np.ndarray) -> LoadedImage:
    rgb8 = (array.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    return LoadedImage(rgb=Image.fromarray(rgb8, "RGB"), array=array, alpha=None, bit_depth=16)


def oracle(onnx_path: Path, array16: np.ndarray, mode: str) -> np.ndarray:
    """The whole image padded by the border once, one run of the graph, encoded like restore()."""
    import onnxruntime as ort

    x = array16.astype(np.float32) / 65535
    x = np.pad(x, ((BORDER, BORDER), (BORDER, BORDER), (0, 0)), mode=mode)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    y = session.run(None, {"images": np.ascontiguousarray(x.transpose(2, 0, 1))[None]})[0][0]
    return np.rint(np.clip(y, 0, 1) * 65535).transpose(1, 2, 0).astype(np.uint16)


def assert_matches_oracle(got: np.ndarray, ref: np.ndarray) -> None:
    # Each tile sees exactly the pixels the whole pass sees, so its fp32 values equal the
    # oracle's; blending (w1·y + w2·y) / (w1 + w2) in the overlaps can move a value by a
    # few ulps (~1e-7), which flips the 16-bit rounding only at an exact .5 boundary: at
    # most 1 code value (1.5e-5), and almost never.
    diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    assert diff.max() <= 1
    assert np.mean(diff > 0) < 1e-3


# -- restore() through an imported ONNX model ------------------------------------------------

@pytest.mark.parametrize("mode", ["edge", "reflect"])
def test_bordered_onnx_model_tiles_seamlessly_and_equals_the_whole_image_oracle(
        tmp_path: Path, mode: str) -> None:
    path = with_sidecar(export(tmp_path / "valid2x.onnx"),
                        SIDECAR.replace('border_mode = "edge"', f'border_mode = "{mode}"'))
    card = import_model(path)
    assert card.sidecar["border"] == BORDER and card.sidecar["border_mode"] == mode
    runner = load_runner(card, device="cpu")
    assert spec_for(runner).requirement.border == BORDER
    source = photo(70, 94)  # non-square, many 24-px tiles
    tiled = restore(runner, loaded(source), tile_size=24, tile_overlap=8)
    whole = restore(runner, loaded(source), tile_size=4096)
    assert tiled.image.shape == whole.image.shape == (140, 188, 3)
    assert tiled.info["tiles"] > 9 and whole.info["tiles"] == 1
    ref = oracle(path, source, mode)
    np.testing.assert_array_equal(whole.image, ref)  # one pass: the same pixels, the same run
    assert_matches_oracle(tiled.image, ref)
    # the border really is made up with `mode`: the other mode changes the image's edges
    other = oracle(path, source, "reflect" if mode == "edge" else "edge")
    assert np.abs(other.astype(np.int64) - ref.astype(np.int64)).max() > 100


def test_fixed_shape_bordered_graph_gets_tiles_of_its_input_less_the_border(tmp_path: Path) -> None:
    fixed = with_sidecar(export(tmp_path / "fixed32.onnx", size=32), SIDECAR)
    card = import_model(fixed)
    assert card.sidecar["input_size"] == [32, 32] and card.sidecar["border"] == BORDER
    runner = load_runner(card, device="cpu")
    source = photo(50, 70)
    got = restore(runner, loaded(source), tile_overlap=8)  # auto tile size: 32 − 2·3
    assert got.info["tile_size_final"] == 26 and got.image.shape == (100, 140, 3)
    # the same weights with dynamic axes, run once over the padded whole image
    assert_matches_oracle(got.image, oracle(export(tmp_path / "dyn.onnx"), source, "edge"))


def test_missing_border_at_run_time_says_which_border_explains_the_output(tmp_path: Path) -> None:
    # a dynamic graph cannot be checked at import, so the tiler's error must say it
    path = with_sidecar(export(tmp_path / "noborder.onnx"),
                        'task = "restore"\noutput = "image"\nscale = 2\n')
    runner = load_runner(import_model(path), device="cpu")
    with pytest.raises(ValueError) as err:
        restore(runner, loaded(photo(40, 40)), tile_size=4096)
    text = str(err.value)
    assert "the model returned a 68×68 tile for a 40×40 input; expected scale ×2" in text
    assert "68 = 2 × (40 − 2×3)" in text and "Set border = 3" in text


# -- the sidecar ----------------------------------------------------------------------------

def test_border_round_trips_through_the_index(tmp_path: Path) -> None:
    import_model(with_sidecar(export(tmp_path / "valid2x.onnx", size=16), SIDECAR))
    (card,) = list_imports()  # re-read and re-validated from index.toml
    assert card.sidecar["border"] == BORDER and card.sidecar["border_mode"] == "edge"
    assert card.sidecar["input_size"] == [16, 16]


BORDER_ERRORS = [
    ("border = 300\n", "field 'border' is 300; expected a whole number of input pixels (0-256)"),
    ("border = -1\n", "field 'border' is -1; expected a whole number"),
    ("border = 2.5\n", "field 'border' is 2.5"),
    ("border = true\n", "field 'border' is True"),
    ('border = 3\nborder_mode = "wrap"\n',
     "field 'border_mode' is 'wrap'; expected one of edge, reflect"),
    ('border_mode = "edge"\n', "field 'border_mode' is set without 'border'"),
    ("border = 8\n", "input height 16 leaves nothing inside a border of 8 pixels"),
    # the graph is 16 -> 20: scale 2 with border 3, so a sidecar without it is told so
    ("", "output height 20 is not input height 16 x scale 2; output 20 = 2 × (16 − 2×3): "
         "set border = 3"),
    ("border = 2\n", "output height 20 is not input height 16 (less 2 x border 2) x scale 2; "
                     "output 20 = 2 × (16 − 2×3): set border = 3"),
]


@pytest.mark.parametrize("extra, message", BORDER_ERRORS, ids=[m[:40] for _, m in BORDER_ERRORS])
def test_bad_border_in_a_sidecar_is_refused_with_the_fix(tmp_path: Path, extra: str,
                                                         message: str) -> None:
    path = with_sidecar(export(tmp_path / "valid.onnx", size=16),
                        'task = "restore"\noutput = "image"\nscale = 2\n' + extra)
    with pytest.raises(CatalogError) as err:
        import_model(path)
    assert message in str(err.value) and "valid.toml" in str(err.value)
    assert list_imports() == []


def test_the_user_guide_example_shape_suggests_its_border(tmp_path: Path) -> None:
    # seven unpadded 3×3 convolutions on a fixed 128×128 input: 2 × (128 − 2×7) = 228
    path = with_sidecar(export(tmp_path / "seven.onnx", size=128, convs=7),
                        'task = "restore"\noutput = "image"\nscale = 2\n')
    with pytest.raises(CatalogError, match=r"output 228 = 2 × \(128 − 2×7\): set border = 7"):
        import_model(path)
    with_sidecar(path, 'task = "restore"\noutput = "image"\nscale = 2\nborder = 7\n')
    assert import_model(path).sidecar["border"] == 7


@pytest.mark.parametrize("output, task", [("yolov8", "detect"), ("semantic_logits", "segment")])
def test_border_is_for_restoration_outputs_only(output: str, task: str) -> None:
    for key, value in (("border", 3), ("border_mode", "edge")):
        with pytest.raises(CatalogError, match=f"field '{key}' .* is not restoration"):
            validate_sidecar({"output": output, key: value}, where="m.toml", task=task)


def test_border_with_a_too_small_input_size_is_refused_without_the_graph() -> None:
    with pytest.raises(CatalogError, match="leaves nothing of the 6×6 input_size"):
        validate_sidecar({"output": "image", "scale": 2, "border": 3, "input_size": [6, 6]},
                         where="catalog entry")
    assert SIDECAR_BORDER_MODES == BORDER_MODES  # the numpy-free copy agrees with the tiler's


# -- the tiler, with exact numpy models --------------------------------------------------

def valid_box(border: int, scale: int, *, multiple_of: int = 1, fixed: tuple | None = None,
              max_edge: int | None = None):
    """`border` unpadded 3×3 weighted box filters, then nearest ×scale (numpy, per channel).

    Each output pixel is a fixed sequence of elementwise multiply-adds of the same input
    pixels wherever the tile is, so tiles reproduce the whole pass bit for bit.
    """
    weights = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16

    def fn(tile: np.ndarray) -> np.ndarray:
        assert tile.shape[1] % multiple_of == 0 and tile.shape[2] % multiple_of == 0
        assert fixed is None or tile.shape[1:] == fixed
        if max_edge is not None and max(tile.shape[1:]) > max_edge:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        x = tile
        for _ in range(border):
            h, w = x.shape[1] - 2, x.shape[2] - 2
            x = sum(weights[i, j] * x[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
        return np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)

    return fn


def tiled_run(fn, image, requirement, *, scale, tile, overlap=8, **kw):
    runner = TileScheduler(fn, scale=scale, channels_out=3, requirement=requirement,
                         tile_size=tile, overlap=overlap, min_tile=4, **kw)
    out = np.zeros((image.shape[0] * scale, image.shape[1] * scale, 3), np.float32)
    runner.run(image, out, max_value=1.0)
    return out, runner.stats


@pytest.mark.parametrize("mode", BORDER_MODES)
@pytest.mark.parametrize("requirement_kw", [{}, {"multiple_of": 8}, {"fixed": (30, 30)}],
                         ids=["any-size", "multiple-of-8", "fixed-30"])
def test_tiler_feeds_real_context_and_matches_the_padded_whole_image(mode, requirement_kw) -> None:
    border, scale = 4, 2
    image = np.random.default_rng(7).random((61, 83, 3), dtype=np.float32)
    req = SizeRequirement(border=border, border_mode=mode, **requirement_kw)
    fn = valid_box(border, scale, **requirement_kw)  # asserts the model's input sizes
    padded = np.pad(image, ((border, border), (border, border), (0, 0)), mode=mode)
    ref = valid_box(border, scale)(np.ascontiguousarray(padded.transpose(2, 0, 1)))
    ref = ref.transpose(1, 2, 0)
    for overlap in (0, 8):
        out, stats = tiled_run(fn, image, req, scale=scale, tile=20, overlap=overlap)
        assert out.shape == (122, 166, 3) and stats.planned > 4
        # identical tile values; only the overlap blending rounds (a few fp32 ulps of 1.0)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_out_of_memory_splits_keep_the_border_context() -> None:
    border = 3
    image = np.random.default_rng(8).random((90, 70, 3), dtype=np.float32)
    fn = valid_box(border, 2, max_edge=30 + 2 * border)
    padded = np.pad(image, ((border, border), (border, border), (0, 0)), mode="edge")
    ref = valid_box(border, 2)(np.ascontiguousarray(padded.transpose(2, 0, 1))).transpose(1, 2, 0)
    out, stats = tiled_run(fn, image, SizeRequirement(border=border), scale=2, tile=128)
    assert stats.halvings >= 1 and stats.tile_size < 128
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_border_region_is_the_whole_image_padded_once() -> None:
    rng = np.random.default_rng(9)
    image = rng.integers(0, 65536, (23, 31, 3), dtype=np.uint16)
    for mode in BORDER_MODES:
        for border in (1, 5, 40):  # 40 > the image: np.pad mirrors/repeats again
            whole = np.pad(image, ((border, border), (border, border), (0, 0)), mode=mode)
            for _ in range(20):
                y0, x0 = int(rng.integers(0, 23)), int(rng.integers(0, 31))
                y1, x1 = int(rng.integers(y0 + 1, 24)), int(rng.integers(x0 + 1, 32))
                got = border_region(image, y0, y1, x0, x1, border, mode)
                np.testing.assert_array_equal(got, whole[y0:y1 + 2 * border, x0:x1 + 2 * border])


def test_size_requirement_applies_to_the_input_including_the_border() -> None:
    req = SizeRequirement(multiple_of=8, border=3)
    assert req.fit_tile(24) == 18 and req.padded_size(18, 18) == (18, 18)  # 18 + 6 = 24
    assert req.padded_size(19, 5) == (26, 10)  # inputs 32 and 16
    assert SizeRequirement(fixed=(32, 48), border=3).padded_size(20, 20) == (26, 42)
    assert SizeRequirement(fixed=(32, 48), border=3).fit_tile(999) == 26
    assert SizeRequirement(border=3).fit_tile(1) == 1
    with pytest.raises(ValueError, match="leaves nothing"):
        SizeRequirement(fixed=(6, 6), border=3)
    with pytest.raises(ValueError, match="border_mode"):
        SizeRequirement(border=1, border_mode="wrap")


def test_wrong_border_in_the_tiler_names_the_right_one() -> None:
    req = SizeRequirement(border=1)
    with pytest.raises(ValueError, match="expected scale ×2 less a border of 1 pixels") as err:
        tiled_run(valid_box(3, 2), np.zeros((20, 20, 3), np.float32), req, scale=2, tile=64)
    assert "Set border = 3" in str(err.value)
