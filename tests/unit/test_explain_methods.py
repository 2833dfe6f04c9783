"""Methods against independent references on tensors captured from real (tiny) models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.explain import methods
from engine.explain.torch_capture import capture
from tests.fixtures.tiny_vits import bright_patch_image, crafted_vit, processor_for, random_like


@pytest.fixture(scope="module")
def captured():
    """Attentions and gradients of a randomly initialised 3-layer ViT classifier."""
    model = random_like(crafted_vit("vit", layers=3), seed=3)
    pixels = processor_for((32, 32))(images=bright_patch_image((32, 32), (1, 2), 8), return_tensors="pt")
    return capture(model, pixels["pixel_values"], with_gradients=True, target=1)


def _reference_rollout(attentions, fusion, discard_ratio, start_layer):
    """Written as in vit-explain (torch, in place), independently of engine.explain."""
    att = torch.from_numpy(attentions.astype(np.float64))
    n = att.shape[-1]
    result = torch.eye(n, dtype=torch.float64)
    for layer in range(start_layer, att.shape[0]):
        fused = {"mean": att[layer].mean(0), "max": att[layer].max(0).values, "min": att[layer].min(0).values}[fusion]
        flat = fused.reshape(-1).clone()
        k = int(flat.numel() * discard_ratio)
        if k:
            _, idx = flat.topk(k, largest=False)
            idx = idx[idx != 0]  # keep CLS->CLS
            flat[idx] = 0
        fused = flat.reshape(n, n)
        a = (fused + torch.eye(n, dtype=torch.float64)) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        result = torch.matmul(a, result)
    return result.numpy()


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio,start_layer", [(0.0, 0), (0.5, 0), (0.9, 1)])
def test_rollout_matches_reference(captured, fusion, discard_ratio, start_layer):
    ours = methods.rollout(captured.attentions, head_fusion=fusion, discard_ratio=discard_ratio,
                           start_layer=start_layer, keep=(0,))
    ref = _reference_rollout(captured.attentions, fusion, discard_ratio, start_layer)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.sum(-1), 1.0, rtol=1e-9)  # rows stay distributions


def test_relevance_matches_the_chefer_rule(captured):
    a, g = captured.attentions.astype(np.float64), captured.gradients.astype(np.float64)
    r = np.eye(a.shape[-1])
    for layer in range(a.shape[0]):
        cam = np.maximum(g[layer] * a[layer], 0).mean(0)
        r = r + cam @ r
    np.testing.assert_allclose(methods.relevance(captured.attentions, captured.gradients), r, rtol=1e-10)
    assert captured.target == 1


def test_gradients_are_those_of_the_target_logit():
    """Finite differences: nudging the last layer's attention must move the logit as the gradient says."""
    model = random_like(crafted_vit("vit", layers=1), seed=5).double()
    pixels = processor_for((32, 32))(images=bright_patch_image((32, 32), (0, 0), 8),
                                     return_tensors="pt")["pixel_values"].double()
    got = capture(model, pixels, with_gradients=True, target=0)
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True)
    attention = out.attentions[0]
    # recompute the logit from a perturbed attention matrix through the layer's own modules
    layer = model.vit.layers[0]

    def logit_with(att):
        hidden = model.vit.embeddings(pixels)
        normed = layer.layernorm_before(hidden)
        b, n, _ = normed.shape
        v = layer.attention.v_proj(normed).view(b, n, att.shape[1], -1).transpose(1, 2)
        ctx = torch.matmul(att, v).transpose(1, 2).reshape(b, n, -1)
        hidden = hidden + layer.attention.o_proj(ctx)
        hidden = hidden + layer.mlp(layer.layernorm_after(hidden))
        return model.classifier(model.vit.layernorm(hidden)[:, 0])[0, 0]

    with torch.no_grad():
        base = logit_with(attention)
        assert torch.isclose(base, out.logits[0, 0])
        eps = 1e-6
        for head, q, k in [(0, 0, 3), (1, 5, 7)]:
            nudged = attention.clone()
            nudged[0, head, q, k] += eps
            numeric = float((logit_with(nudged) - base) / eps)
            assert numeric == pytest.approx(float(got.gradients[0, head, q, k]), rel=1e-3, abs=1e-6)


def test_keep_mass_matches_dino_visualize_attention():
    """DINO's torch code (visualize_attention.py) on the same values."""
    rng = np.random.default_rng(0)
    values = rng.random((3, 20)).astype(np.float32) ** 3
    th = 0.6
    att = torch.from_numpy(values)
    val, idx = torch.sort(att)
    val /= torch.sum(val, dim=1, keepdim=True)
    cumval = torch.cumsum(val, dim=1)
    th_attn = cumval > (1 - th)
    idx2 = torch.argsort(idx)
    expected = torch.stack([th_attn[h][idx2[h]] for h in range(3)]).numpy()
    ours = np.stack([methods.keep_mass_mask(v, th) for v in values])
    np.testing.assert_array_equal(ours, expected)
    assert all(values[h][ours[h]].sum() / values[h].sum() >= th for h in range(3))


def test_head_fusion_and_raw_selection(captured):
    a = captured.attentions
    layout = captured.layout
    np.testing.assert_allclose(methods.raw_attention(a, layout, layer=1, head_fusion="max"), a[1].max(0)[0])
    np.testing.assert_allclose(methods.raw_attention(a, layout, layer=-1, head=1), a[-1, 1, 0])
    with pytest.raises(ValueError, match="head_fusion"):
        methods.fuse_heads(a, "median")
    with pytest.raises(ValueError, match="layer 7"):
        methods.raw_attention(a, layout, layer=7)


def test_cosine_and_normalize():
    f = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    np.testing.assert_allclose(methods.cosine_to(f, 0), [1, 1, 0, -1])
    assert methods.normalize01(np.ones((2, 2))).max() == 0
    np.testing.assert_allclose(methods.normalize01(np.array([2.0, 4.0, 3.0])), [0, 1, 0.5])
