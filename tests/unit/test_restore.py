"""restore(): tiled vs whole-image oracles on real spandrel/transformers runners."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.catalog.card import ModelCard
from engine.media.image import LoadedImage, from_pil
from engine.runtimes.base import Outputs, Runner
from engine.tasks.restore import auto_tile_size, restore, spec_for
from tests.fixtures import tiny_restorers as tr

# Two fp32 paths to the same 16-bit picture (a tile vs the whole image, ONNX Runtime vs torch:
# other conv shapes, other summation order) differ by fp32 noise (~1e-6 measured) that only tips
# a rounding: 1 code value (1.5e-5) seen on every kernel set tried. The worst-case fp32 bound is
# no guide here (tests/tolerances.py): these nets run on |weights| reach 1e2 (Compact) to 1e19
# (DRUNet). 1e-4 allows 6 code values; a visible seam costs 1e-3 and more (test_tiling: 8e-3).
SAME_PICTURE = 1e-4


def loaded(array: np.ndarray, alpha: np.ndarray | None = None) -> LoadedImage:
    rgb8 = array if array.dtype == np.uint8 else (array.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    return LoadedImage(rgb=Image.fromarray(rgb8, "RGB"), array=array, alpha=alpha,
                       bit_depth=16 if array.dtype == np.uint16 else 8)


def photo(h: int, w: int, dtype=np.uint8) -> np.ndarray:
    from skimage import data

    crop = data.astronaut()[60:60 + h, 120:120 + w]
    if dtype == np.uint16:  # real 16-bit detail below the 8-bit step
        noise = np.random.default_rng(0).integers(0, 257, crop.shape)
        return np.clip(crop.astype(np.int64) * 257 + noise - 128, 0, 65535).astype(np.uint16)
    return np.ascontiguousarray(crop)


@pytest.fixture(scope="module")
def compact():
    return tr.spandrel_runner(tr.compact_descriptor(scale=2), "tiny-compact-x2")


def test_spandrel_spec_comes_from_the_descriptor(compact):
    spec = spec_for(compact)
    assert spec.scale == 2 and spec.supports_half and spec.requirement.multiple_of == 1
    safmn = tr.spandrel_runner(tr.safmn_descriptor(), "tiny-safmn")
    assert spec_for(safmn).requirement.multiple_of == 8


def test_tiled_equals_whole_image_for_a_convolutional_spandrel_model(compact):
    # Compact(num_conv=2): four 3×3 convs, receptive radius 4 <= overlap/4 = 4: exact
    image = loaded(photo(120, 136, np.uint16))
    whole = restore(compact, image, tile_size=4096)
    tiled = restore(compact, image, tile_size=48, tile_overlap=16)
    assert whole.tile_size is None and tiled.tile_size == 48 and tiled.info["tiles"] > 9
    assert whole.image.dtype == np.uint16 and whole.image.shape == (240, 272, 3)
    diff = np.abs(whole.image.astype(np.int64) - tiled.image.astype(np.int64)) / 65535
    assert diff.max() < SAME_PICTURE
    # and the whole pass is the descriptor's own output (spandrel's call, rounded to 16 bits)
    x = torch.from_numpy(image.array.astype(np.float32).transpose(2, 0, 1) / 65535)[None]
    ref = compact.descriptor(x)[0].numpy().transpose(1, 2, 0)
    assert np.abs(whole.image / 65535 - ref).max() < SAME_PICTURE


def test_padding_to_size_requirements_and_crop_back():
    runner = tr.spandrel_runner(tr.safmn_descriptor(scale=2), "tiny-safmn")
    seen = []
    hook = runner.module.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[2:])))
    try:
        result = restore(runner, loaded(photo(37, 53)), tile_size=24, tile_overlap=8)
    finally:
        hook.remove()
    assert result.image.shape == (74, 106, 3)
    assert seen and all(h % 8 == 0 and w % 8 == 0 for h, w in seen)


def test_sixteen_bit_roundtrip_stays_sixteen_bit():
    identity = tr.spandrel_runner(tr.compact_descriptor(scale=1, identity=True), "identity")
    source = photo(40, 56, np.uint16)
    assert np.any(source % 257)  # real 16-bit detail, not 8-bit values stretched
    result = restore(identity, loaded(source), tile_size=24, tile_overlap=8)
    assert result.image.dtype == np.uint16 and result.info["bit_depth"] == 16
    np.testing.assert_array_equal(result.image, source)


def test_alpha_is_kept_and_resized(compact):
    rgb = photo(48, 64)
    alpha = np.zeros((48, 64), np.uint8)
    alpha[:, 32:] = 255
    with_alpha = restore(compact, loaded(rgb, alpha), tile_size=32, tile_overlap=8)
    without = restore(compact, loaded(rgb), tile_size=32, tile_overlap=8)
    assert with_alpha.image.shape == (96, 128, 4)
    np.testing.assert_array_equal(with_alpha.image[..., :3], without.image)  # alpha never enters the model
    out_alpha = with_alpha.image[..., 3]
    assert np.all(out_alpha[:, :56] == 0) and np.all(out_alpha[:, 72:] == 255)
    # a file read from disk goes the same way (RGBA PNG through engine.media.image)
    rgba = from_pil(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    assert restore(compact, rgba, tile_size=32, tile_overlap=8).image.shape == (96, 128, 4)


def test_sixteen_bit_alpha_follows_the_image_depth(compact):
    alpha = np.full((24, 24), 40000, np.uint16)
    result = restore(compact, loaded(photo(24, 24, np.uint16), alpha), tile_size=64)
    assert result.image.dtype == np.uint16
    assert np.all(np.abs(result.image[..., 3].astype(int) - 40000) <= 1)


class OomAboveRunner(Runner):
    """A real runner in front of another: raises CUDA's OOM error above a tile edge."""

    def __init__(self, inner: Runner, max_edge: int) -> None:
        super().__init__(inner.card, inner.placement, processor=inner.processor)
        self.inner, self.max_edge, self.edges = inner, max_edge, []
        self.scale, self.size_requirements = inner.scale, inner.size_requirements
        self.supports_half, self.descriptor = inner.supports_half, inner.descriptor

    @property
    def module(self):
        return self.inner.module

    def forward(self, inputs) -> Outputs:
        edge = max(inputs["pixel_values"].shape[2:])
        self.edges.append(edge)
        if edge > self.max_edge:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {edge ** 2} B")
        return self.inner.forward(inputs)


def test_out_of_memory_halves_the_tile_size(compact):
    image = loaded(photo(96, 128, np.uint16))
    limited = OomAboveRunner(compact, max_edge=40)
    result = restore(limited, image, tile_size=128, tile_overlap=16)
    assert result.info["oom_halvings"] >= 1 and result.info["tile_size_final"] <= 40
    assert result.info["tile_sizes_tried"][0] == 128
    assert any("halved" in note for note in result.info["notes"])
    reference = restore(compact, image, tile_size=4096)
    diff = np.abs(reference.image.astype(np.int64) - result.image.astype(np.int64)) / 65535
    assert diff.max() < SAME_PICTURE


@pytest.mark.slow
def test_swin2sr_tiles_stay_within_the_stated_seam_bound():
    """Measured seam error of tiled Swin2SR (see the report / docstring of tiling.py).

    Shifted-window attention over 4 stacked blocks (window 4) reaches ~20 px, more than
    overlap/4, so seams are not exact; attention decays with distance, so the error is
    small and falls as the overlap grows. Measured on this crop: overlap 32 -> max
    1.3e-5, overlap 8 -> 2.5e-3 (output std ~0.02 for this random init).
    """
    runner = tr.swin2sr_runner()
    spec = spec_for(runner)
    assert spec.scale == 2 and spec.requirement.multiple_of == 4
    image = loaded(photo(96, 128, np.uint16))
    whole = restore(runner, image, tile_size=4096).image / 65535
    wide = restore(runner, image, tile_size=64, tile_overlap=32).image / 65535
    narrow = restore(runner, image, tile_size=64, tile_overlap=8).image / 65535
    wide_err, narrow_err = np.abs(wide - whole).max(), np.abs(narrow - whole).max()
    assert wide_err < 1e-4
    assert narrow_err > wide_err
    assert narrow_err < 1e-2


def test_auto_tile_size_fits_memory_and_requirements(compact):
    spec = spec_for(compact)
    assert auto_tile_size(spec, "cpu", (100, 80)) == 100  # small image: one pass
    big = auto_tile_size(spec, "cpu", (20000, 20000))
    assert 64 <= big <= 2048
    from dataclasses import replace

    from engine.media.tiling import SizeRequirement
    heavy = replace(spec, bytes_per_pixel=10 ** 7, requirement=SizeRequirement(multiple_of=8))
    small = auto_tile_size(heavy, "cpu", (20000, 20000))
    assert small < big and small % 8 == 0


def test_non_restoration_models_are_refused_clearly():
    from engine.errors import UnsupportedModelError

    card = ModelCard(id="x", name="some detector", tasks=("detect",), runtime="pytorch-script")

    class Plain(Runner):
        pass

    from engine.runtimes.base import Placement
    with pytest.raises(UnsupportedModelError, match="some detector"):
        spec_for(Plain(card, Placement("x", "cpu", "fp32")))


def test_fixed_size_onnx_export_is_tiled_padded_and_cropped(tmp_path, compact):
    """A graph with a fixed 32×32 input: every tile is padded to it and cropped back."""
    from engine.export_onnx import _image_module
    from engine.runtimes.base import Placement
    from engine.runtimes.onnx_backend import load_onnx

    path = tmp_path / "fixed32.onnx"
    with torch.no_grad():
        torch.onnx.export(_image_module(compact), (torch.rand(1, 3, 32, 32),), str(path),
                          input_names=["input"], output_names=["output"], dynamo=False)
    card = tr.restore_card("fixed32", "onnx", local_path=str(path),
                           sidecar={"output": "image", "scale": 2, "range": [0.0, 1.0]})
    runner = load_onnx(card, path, Placement("onnx", "cpu", "fp32", provider="CPUExecutionProvider"))
    spec = spec_for(runner)
    assert spec.requirement.fixed == (32, 32) and spec.scale == 2
    image = loaded(photo(50, 70, np.uint16))
    got = restore(runner, image, tile_overlap=16)  # auto tile size = the fixed size
    assert got.info["tile_size_final"] == 32 and got.image.shape == (100, 140, 3)
    # radius-4 model, overlap 16: tiles reproduce the whole-image torch pass
    ref = restore(compact, image, tile_size=4096)
    assert np.abs(got.image / 65535 - ref.image / 65535).max() < SAME_PICTURE


def test_precision_requests_autocast_or_fall_back_with_a_note(compact):
    image = loaded(photo(40, 48, np.uint16))
    fp32 = restore(compact, image, tile_size=4096)
    bf16 = restore(compact, image, tile_size=4096, precision="bf16")  # CPU autocast
    assert bf16.info["precision"] == "bf16"
    diff = np.abs(bf16.image / 65535 - fp32.image / 65535)
    assert 0 < diff.max() < 0.05  # really ran in bfloat16 (8-bit mantissa), and close
    fp16 = restore(compact, image, tile_size=4096, precision="fp16")
    assert fp16.info["precision"] == "fp32"
    assert any("fp16 on the CPU" in note for note in fp16.info["notes"])
    np.testing.assert_array_equal(fp16.image, fp32.image)
