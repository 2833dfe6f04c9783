"""ONNX graph surgery: the exposed Softmax outputs are the same attention as in torch."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch

from engine.explain import explain
from engine.explain.onnx_attention import (
    OnnxAttentionModel,
    attention_softmax_nodes,
    expose_attention,
    patch_embedding_conv,
)
from tests.fixtures.tiny_vits import bright_patch_image, crafted_vit, processor_for, random_like
from tests.tolerances import softmax_tol

MEAN = STD = (0.5, 0.5, 0.5)


def _export(model: torch.nn.Module, size=(32, 48)) -> onnx.ModelProto:
    buffer = io.BytesIO()
    example = torch.zeros(1, 3, *size)
    with torch.no_grad():
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["pixel_values"],
                          output_names=["last_hidden_state"], opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def vit_and_onnx():
    from transformers import ViTModel

    base = crafted_vit("vit", layers=3, classify=False, image_size=(32, 48))
    model = random_like(base, seed=11)  # random weights: every head's attention is non-trivial
    assert isinstance(model, ViTModel)
    return model, _export(model)


def test_surgery_finds_one_softmax_per_layer_and_keeps_the_model_outputs(vit_and_onnx):
    model, proto = vit_and_onnx
    nodes = attention_softmax_nodes(proto)
    assert len(nodes) == model.config.num_hidden_layers
    exposed, names = expose_attention(proto)
    original = [o.name for o in proto.graph.output]
    outputs = [o.name for o in exposed.graph.output]
    assert outputs == original + names
    dims = [d.dim_value for d in exposed.graph.output[len(original)].type.tensor_type.shape.dim]
    assert len(dims) == 4 and dims[-2:] == [25, 25]  # inferred shapes travel with the new outputs
    assert [o.name for o in proto.graph.output] == original  # the input model is left alone
    assert patch_embedding_conv(proto) == (8, 8)


def test_onnx_attention_equals_torch(vit_and_onnx):
    model, proto = vit_and_onnx
    onnx_model = OnnxAttentionModel.from_model(proto, mean=MEAN, std=STD, prefix_tokens=("cls",))
    image = bright_patch_image((32, 48), (1, 3), 8)
    pixels, _ = onnx_model.preprocess(image)
    with torch.no_grad():
        torch_att = model(pixel_values=torch.from_numpy(pixels), output_attentions=True).attentions
    torch_att = np.stack([a[0].numpy() for a in torch_att])
    onnx_att = onnx_model.run(pixels)
    assert onnx_att.shape == torch_att.shape == (3, 2, 25, 25)
    np.testing.assert_allclose(onnx_att, torch_att, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["raw", "rollout", "dino"])
def test_onnx_maps_equal_torch_maps(vit_and_onnx, method):
    """Same image, same preprocessing (plain resize to 32×48): same maps within 1e-5."""
    model, proto = vit_and_onnx
    onnx_model = OnnxAttentionModel.from_model(proto, mean=MEAN, std=STD)
    image = bright_patch_image((64, 96), (1, 3), 16)  # resized 2× down by both pipelines
    processor = processor_for((32, 48), resample=3)  # bicubic, as OnnxAttentionModel.preprocess
    from_onnx = explain(onnx_model, image, method=method)
    from_torch = explain(model, image, method=method, processor=processor)
    assert from_onnx.layout == from_torch.layout
    # the two resize implementations (PIL vs torchvision) differ by a grey level at most
    np.testing.assert_allclose(from_onnx.attentions, from_torch.attentions, atol=2e-3)
    pixels, _ = onnx_model.preprocess(image)
    from engine.explain.geometry import stretch_geometry
    from engine.explain.self_attention import Options, compute
    from engine.explain.torch_capture import capture

    captured = capture(model, torch.from_numpy(pixels))
    same_input = compute(method, captured.layout, stretch_geometry(image.size, (32, 48)), captured.attentions,
                         options=Options())
    np.testing.assert_allclose(from_onnx.grid_map, same_input.grid_map, atol=1e-5, rtol=0)
    np.testing.assert_allclose(from_onnx.attentions, captured.attentions, atol=1e-5, rtol=0)
    # ONNX Runtime vs torch: two fp32 paths (tests/tolerances.py). This random-init ViT's logits
    # are tiny (max Σ|q·k|/√d < 0.03; Σ K ~600: the 8×8×3 patch conv and 3 layers), so each
    # probability is exact to 2·Σ K·eps·0.03 + (25 + 2)·eps relative; rollout chains 3 layers.
    grid_rtol = 3 * softmax_tol(logit_scale=0.03, reduction_len=600, tokens=25).rtol
    # The heatmap is (g - lo) / (hi - lo), so |δh| <= 4·max|δg| / (hi - lo): near-uniform
    # attention (range ~1.5e-4 on values ~0.04) magnifies 1 ulp of the grid to ~3e-5 here.
    grid = same_input.grid_map
    heat_atol = 4 * grid_rtol * np.abs(grid).max() / np.ptp(grid)
    np.testing.assert_allclose(from_onnx.heatmap, same_input.heatmap, atol=heat_atol, rtol=0)


def test_crafted_onnx_export_peaks_on_the_bright_patch():
    model = crafted_vit("vit", classify=False)
    onnx_model = OnnxAttentionModel.from_model(_export(model, (32, 32)), mean=MEAN, std=STD)
    maps = explain(onnx_model, bright_patch_image((32, 32), (3, 0), 8), method="rollout")
    assert np.unravel_index(np.argmax(maps.grid_map), maps.grid_map.shape) == (3, 0)
    assert any("Softmax" in note for note in maps.notes)


def test_attention_sessions_take_the_engines_thread_count(vit_and_onnx, monkeypatch):
    # A Ray worker with one thread sets OCULA_ONNX_THREADS=1: the attention graph's session
    # must keep to it (it took every core before, so two replicas fought over two cores).
    _, proto = vit_and_onnx
    for threads in (1, 3):
        monkeypatch.setenv("OCULA_ONNX_THREADS", str(threads))
        model = OnnxAttentionModel.from_model(proto, mean=MEAN, std=STD, prefix_tokens=("cls",))
        options = model.session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)


def test_graph_without_attention_is_refused():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Softmax(dim=1))
    buffer = io.BytesIO()
    torch.onnx.export(conv, (torch.zeros(1, 3, 8, 8),), buffer, dynamo=False, opset_version=17)
    with pytest.raises(ValueError, match="no attention Softmax"):
        expose_attention(onnx.load_from_string(buffer.getvalue()))
