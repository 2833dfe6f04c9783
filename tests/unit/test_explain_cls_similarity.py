"""Issue 18, CLS-to-patch similarity (GLSim-style global-local similarity) on the torch path,
and register tokens (DINOv2 with registers): oracles computed in numpy from the hidden states
transformers returns for the same pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.tiny_vits import processor_for
from tests.tolerances import fp32_tol

HIDDEN = 32


def _cosine_to_first(tokens: np.ndarray) -> np.ndarray:
    """cos(token 0, every token), in float64: the oracle, written out."""
    f = tokens.astype(np.float64)
    return (f @ f[0]) / (np.linalg.norm(f, axis=1) * np.linalg.norm(f[0]))


def _random_image(size: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def _tiny_vit(seed: int = 0):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=HIDDEN, num_hidden_layers=3,
                       num_attention_heads=2, intermediate_size=64, attn_implementation="eager")
    return ViTModel(config).eval()


def tiny_dinov2_registers(registers: int = 4, seed: int = 0, image_size: int = 28, patch: int = 7):
    """A randomly initialised Dinov2WithRegistersModel (transformers' own init)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(seed)
    config = Dinov2WithRegistersConfig(image_size=image_size, patch_size=patch, hidden_size=HIDDEN,
                                       num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                       num_register_tokens=registers, attn_implementation="eager")
    return Dinov2WithRegistersModel(config).eval()


def test_cls_similarity_equals_numpy_over_the_last_hidden_state_and_each_layer():
    from engine.explain import explain

    model = _tiny_vit()
    processor = processor_for((32, 32))
    image = _random_image()
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    tol = fp32_tol(HIDDEN)
    maps = explain(model, image, method="cls_similarity", processor=processor)
    expected = _cosine_to_first(out.last_hidden_state[0].numpy())[1:].reshape(4, 4)
    np.testing.assert_allclose(maps.grid_map, expected, rtol=tol.rtol, atol=tol.atol)
    assert maps.params["layer"] == -1 and maps.method == "cls_similarity"
    # a chosen layer: the output tokens of that block (hidden_states[layer + 1])
    for layer in (0, 1):
        at = explain(model, image, method="cls_similarity", layer=layer, processor=processor)
        expected = _cosine_to_first(out.hidden_states[layer + 1][0].numpy())[1:].reshape(4, 4)
        np.testing.assert_allclose(at.grid_map, expected, rtol=tol.rtol, atol=tol.atol)
        assert at.params["layer"] == layer
    # the heatmap is the same map drawn over the image: brightest in the most similar cell
    assert maps.heatmap.shape == (32, 32)
    row, col = np.unravel_index(np.argmax(maps.grid_map), maps.grid_map.shape)
    y, x = np.unravel_index(np.argmax(maps.heatmap), maps.heatmap.shape)
    assert (y // 8, x // 8) == (row, col)


def test_cls_similarity_resolves_from_the_word_similarity_and_the_cli_spelling():
    from engine.explain import explain

    model = _tiny_vit()
    processor = processor_for((32, 32))
    image = _random_image()
    direct = explain(model, image, method="cls_similarity", processor=processor)
    for spelling in ("similarity", "cls-similarity"):
        same = explain(model, image, method=spelling, processor=processor)
        assert same.method == "cls_similarity"
        np.testing.assert_array_equal(same.grid_map, direct.grid_map)


def test_cls_similarity_needs_a_cls_token():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from engine.errors import UnsupportedModelError
    from engine.explain import explain

    config = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=HIDDEN, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64, attn_implementation="eager")
    model = SiglipVisionModel(config).eval()
    with pytest.raises(UnsupportedModelError, match="cls_similarity"):
        explain(model, _random_image(), method="cls_similarity", processor=processor_for((32, 32)))


@pytest.mark.parametrize("registers", [0, 4])
def test_register_tokens_are_not_patches_in_any_self_attention_map(registers):
    """Oracle: the map's grid covers hidden_states[:, 1 + registers:] only (CLS and registers out)."""
    from engine.explain import explain

    model = tiny_dinov2_registers(registers)
    processor = processor_for((28, 28))
    image = _random_image(28, seed=1)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    last = out.last_hidden_state[0].numpy()
    assert last.shape[0] == 1 + registers + 16
    tol = fp32_tol(HIDDEN)
    cls = explain(model, image, method="cls_similarity", processor=processor)
    assert cls.layout.patch_start == 1 + registers and cls.layout.grid == (4, 4)
    assert cls.layout.special.get("registers", ()) == tuple(range(1, 1 + registers))
    np.testing.assert_allclose(cls.grid_map, _cosine_to_first(last)[1 + registers:].reshape(4, 4),
                               rtol=tol.rtol, atol=tol.atol)
    raw = explain(model, image, method="raw", processor=processor)
    attention = out.attentions[-1][0].numpy().mean(axis=0)[0]  # CLS row, heads averaged
    np.testing.assert_allclose(raw.grid_map, attention[1 + registers:].reshape(4, 4), rtol=1e-6, atol=1e-7)
    clicked = explain(model, image, method="patch_similarity", patch=(24.0, 3.0), processor=processor)
    query = 1 + registers + 0 * 4 + 3  # row 0, column 3 of the 4×4 grid of 7-px patches
    f = last.astype(np.float64)
    expected = (f @ f[query]) / (np.linalg.norm(f, axis=1) * np.linalg.norm(f[query]))
    np.testing.assert_allclose(clicked.grid_map, expected[1 + registers:].reshape(4, 4),
                               rtol=tol.rtol, atol=tol.atol)


def test_registers_holding_the_high_norm_tokens_are_reported():
    """Darcet et al.: with registers the high-norm outliers sit in the registers, not among the
    patches. Large register embeddings make the registers' last-layer norms the largest; the
    artifact view then reports their norms (oracle: numpy norms of hidden_states[-1]) and finds
    no patch outlier."""
    from engine.explain import explain

    model = tiny_dinov2_registers(4)
    with torch.no_grad():  # transformers starts them at zero: give them large, distinct values
        torch.manual_seed(3)
        model.embeddings.register_tokens.copy_(50.0 * torch.randn_like(model.embeddings.register_tokens))
    processor = processor_for((28, 28))
    image = _random_image(28, seed=2)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][0].numpy()
    norms = np.linalg.norm(hidden.astype(np.float64), axis=1)
    maps = explain(model, image, method="rollout", processor=processor)
    np.testing.assert_allclose(maps.params["register_norms"], norms[1:5], rtol=1e-6)
    mean, peak = maps.params["patch_norms"]
    assert mean == pytest.approx(norms[5:].mean(), rel=1e-6) and peak == pytest.approx(norms[5:].max(), rel=1e-6)
    assert min(maps.params["register_norms"]) > peak
    assert "artifacts" not in maps.params  # no patch outlier left
    assert any("registers hold the high-norm tokens" in note for note in maps.notes)
    # without the scaling the same note gives the numbers but claims nothing
    plain = explain(tiny_dinov2_registers(4), image, method="rollout", processor=processor)
    note = next(n for n in plain.notes if "register token(s)" in n)
    assert ("registers hold" in note) == (min(plain.params["register_norms"]) > plain.params["patch_norms"][1])
