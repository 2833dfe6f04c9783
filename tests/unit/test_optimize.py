"""`ocula models optimize`: verified ONNX exports run through the same task code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine import paths
from engine.catalog.card import ModelCard
from engine.export_onnx import (
    ExportVerificationError,
    find_optimized,
    onnx_runner_for_export,
    optimize,
    optimized_dir,
)
from engine.runtimes.base import Placement
from engine.tasks.restore import restore, spec_for
from tests.fixtures import tiny_restorers as tr
from tests.tolerances import fp32_tol
from tests.unit.test_restore import SAME_PICTURE, loaded, photo


def sample() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def test_restorer_export_gives_the_same_restoration(tmp_path):
    runner = tr.spandrel_runner(tr.compact_descriptor(scale=2), "tiny-compact-optimize")
    path = optimize(runner.card, runner, sample())
    assert path == optimized_dir(runner.card) / "model.onnx" and path.is_file()
    assert paths.app_home() in path.parents
    onnx_runner = onnx_runner_for_export(runner.card, path)
    assert spec_for(onnx_runner).scale == 2  # read from the file's own metadata
    image = loaded(photo(72, 88, np.uint16))
    for tile in (4096, 40):
        ref = restore(runner, image, tile_size=tile, tile_overlap=16).image / 65535
        got = restore(onnx_runner, image, tile_size=tile, tile_overlap=16).image / 65535
        assert got.shape == ref.shape and np.abs(got - ref).max() < SAME_PICTURE
    # cached: a second call reuses the verified export
    mtime = path.stat().st_mtime_ns
    assert optimize(runner.card, runner, sample()) == path and path.stat().st_mtime_ns == mtime
    assert find_optimized(runner.card) == path


def test_size_requirements_and_call_functions_travel_with_the_export():
    runner = tr.spandrel_runner(tr.drunet_descriptor(), "tiny-drunet-optimize")
    assert spec_for(runner).requirement.multiple_of == 8
    path = optimize(runner.card, runner, sample())
    onnx_runner = onnx_runner_for_export(runner.card, path)
    assert spec_for(onnx_runner).requirement.multiple_of == 8
    assert spec_for(onnx_runner).scale == 1
    image = loaded(photo(37, 53, np.uint16))
    ref = restore(runner, image, tile_size=24, tile_overlap=8).image / 65535
    got = restore(onnx_runner, image, tile_size=24, tile_overlap=8).image / 65535
    assert got.shape == (37, 53, 3) and np.abs(got - ref).max() < SAME_PICTURE


def test_models_torch_cannot_export_are_refused_clearly():
    from engine.errors import UnsupportedModelError

    # SAFMN pools to a size computed from the input: no dynamic-shape ONNX export
    runner = tr.spandrel_runner(tr.safmn_descriptor(scale=2), "tiny-safmn-optimize")
    with pytest.raises(UnsupportedModelError, match="could not export.*keeps running on torch"):
        optimize(runner.card, runner, sample())
    assert find_optimized(runner.card) is None


class SizeDependent(torch.nn.Module):
    """Takes a Python branch on the input height: tracing bakes in the branch it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(self.shuffle(self.conv(x)))
        if x.shape[-2] > 40:
            y = 1.0 - y
        return y


def test_an_export_that_does_not_reproduce_torch_is_refused():
    import spandrel
    from spandrel.architectures.Compact import CompactArch

    model = SizeDependent().eval()
    descriptor = spandrel.ImageModelDescriptor(
        model, model.state_dict(), architecture=CompactArch(), purpose="SR", tags=[],
        supports_half=True, supports_bfloat16=True, scale=2, input_channels=3, output_channels=3)
    runner = tr.spandrel_runner(descriptor, "size-dependent")
    with pytest.raises(ExportVerificationError, match="keeps running on torch"):
        optimize(runner.card, runner, sample())
    assert find_optimized(runner.card) is None
    folder = optimized_dir(runner.card)
    assert not folder.exists() and not list(folder.parent.glob("*.part"))


def test_single_forward_model_export():
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from engine.runtimes.transformers_backend import TransformersRunner

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64)).eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    card = ModelCard(id="tiny-vit-features", name="tiny vit", tasks=("features",),
                     runtime="transformers")
    runner = TransformersRunner(card, Placement("transformers", "cpu", "fp32"), model, processor)
    path = optimize(card, runner, sample())
    onnx_runner = onnx_runner_for_export(card, path)
    inputs = processor(images=[sample(), sample().rotate(90)], return_tensors="pt")
    got = onnx_runner.forward(dict(inputs))  # batch of 2: the batch axis is dynamic
    ref = runner.forward(dict(inputs))
    # ONNX Runtime vs torch, fp32 (tests/tolerances.py): the 8×8×3 patch conv (192) and two
    # layers (~200 terms each) before the final LayerNorm, whose outputs reach ~3
    tol = fp32_tol(600, scale=4)
    assert torch.allclose(got["last_hidden_state"], ref["last_hidden_state"], rtol=tol.rtol,
                          atol=tol.atol)


@pytest.mark.slow
def test_captioner_export_captions_like_torch():
    from engine.tasks.caption import caption
    from tests.fixtures import tiny_captioners as tc
    from tests.unit.test_caption import photos, runner_for

    runner = runner_for(tc.vit_gpt2())
    folder = optimize(runner.card, runner, sample())
    assert (folder / "encoder_model.onnx").is_file()
    assert (folder / "decoder_model_merged.onnx").is_file()
    assert not (folder / "decoder_model.onnx").exists()
    onnx_runner = onnx_runner_for_export(runner.card, folder)
    images = photos()
    assert [c.token_ids for c in caption(onnx_runner, images, max_new_tokens=10)] == \
        [c.token_ids for c in caption(runner, images, max_new_tokens=10)]


def test_optimize_refuses_models_without_torch(tmp_path):
    from engine.errors import UnsupportedModelError

    runner = tr.spandrel_runner(tr.compact_descriptor(scale=2), "tiny-compact-optimize-2")
    path = optimize(runner.card, runner, sample())
    onnx_runner = onnx_runner_for_export(runner.card, path)
    with pytest.raises(UnsupportedModelError, match="only torch models"):
        optimize(onnx_runner.card, onnx_runner, sample())


def _segformer(folder):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    SegformerForSemanticSegmentation(SegformerConfig(
        num_labels=4, hidden_sizes=[8, 16, 24, 32], decoder_hidden_size=32,
        depths=[1, 1, 1, 1], id2label={0: "sky", 1: "road", 2: "tree", 3: "car"})
    ).eval().save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def _torch_and_fast_path(folder, task: str):
    """(torch runner, the fast-path runner load_runner gives once `optimize` has run) for a
    local model folder."""
    from engine.catalog.card import Source
    from engine.runtimes import load_runner

    card = ModelCard(id=f"tiny-{task}-fast", name=f"tiny {task}", tasks=(task,),
                     runtime="transformers", local_path=str(folder), source=Source.LOCAL)
    runner = load_runner(card, device="cpu", precision="fp32")
    optimize(card, runner, sample())
    return runner, load_runner(card, device="cpu", precision="fp32")


def test_optimized_segmenter_runs_through_the_task_on_the_fast_path(tmp_path):
    """A one-graph export is found by load_runner and runs segment() with the source's
    model type, labels and pre-processing (they travel beside the graph)."""
    from engine.tasks.segment import segment

    runner, fast = _torch_and_fast_path(_segformer(tmp_path / "seg"), "segment")
    assert fast.module is None and any("ocula models optimize" in n for n in fast.notes)
    image = sample().resize((96, 80))
    got, ref = segment(fast, [image])[0], segment(runner, [image])[0]
    assert got.labels == ref.labels
    assert got.label_map.shape == ref.label_map.shape == (80, 96)
    # labels are exact where the top-two torch logits are not near-ties (fp32 noise)
    assert (got.label_map == ref.label_map).mean() > 0.99


def test_optimized_detr_takes_photos_of_any_aspect_ratio(tmp_path):
    """DETR keeps each photo's aspect ratio, so its export must accept every input size:
    boxes from the fast path equal torch's on a portrait and a landscape photo (the
    verification sample is landscape)."""
    from engine.tasks.detect import detect
    from tests.benchmarks.bench_tasks import build_small_detr

    runner, fast = _torch_and_fast_path(build_small_detr(tmp_path / "detr"), "detect")
    assert fast.module is None
    for size in ((200, 300), (320, 180)):
        image = sample().resize(size)
        got, ref = detect(fast, [image], threshold=0.0)[0], detect(runner, [image], threshold=0.0)[0]
        assert len(ref.boxes) > 0
        assert [b.label for b in got.boxes] == [b.label for b in ref.boxes]
        # boxes: sigmoid outputs x image size; a loose pixel bound still catches a graph
        # fixed to the sample's size (it refuses the input) or a wrong resize (boxes move)
        for a, b in zip(got.boxes, ref.boxes):
            assert np.allclose(a.xyxy, b.xyxy, atol=1e-2 * max(size))
