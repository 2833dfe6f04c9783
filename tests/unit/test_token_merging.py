"""Token merging (`speed` balanced/fast, engine.runtimes.token_merging) against oracles:
the unpatched model (r = 0), a direct numpy ToMe, the softmax identity behind proportional
attention, and the real caption / explain pipelines on tiny random models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from engine.catalog.card import ModelCard, Source
from engine.errors import UnsupportedModelError
from engine.runtimes import load_runner
from engine.runtimes.runner_cache import RunnerCache
from engine.runtimes.token_merging import (
    apply_token_merging,
    bipartite_soft_matching,
    encoder_flops,
    merge_weighted,
    tokens_per_layer,
)
from engine.settings import Settings
from tests.fixtures import tiny_captioners as tc
from tests.tolerances import EPS32, fp32_tol

FAMILIES = ("vit", "deit", "dinov2", "dinov2_registers")


def tiny_encoder(family: str, *, layers: int = 3, attention: str = "eager", seed: int = 0):
    """A random ViT-family encoder: 32×32 input, 4-pixel patches (64 patches), 16 wide."""
    common = {"hidden_size": 16, "num_hidden_layers": layers, "num_attention_heads": 2, "image_size": 32,
                  "patch_size": 4, "attn_implementation": attention}
    torch.manual_seed(seed)
    if family == "vit":
        return transformers.ViTModel(transformers.ViTConfig(intermediate_size=32, **common)).eval()
    if family == "deit":
        return transformers.DeiTModel(transformers.DeiTConfig(intermediate_size=32, **common)).eval()
    if family == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=2, **common)).eval()
    config = transformers.Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=3, **common)
    return transformers.Dinov2WithRegistersModel(config).eval()


def pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def expected_counts(tokens: int, protected: int, r: int, layers: int) -> list[int]:
    counts = [tokens]
    for _ in range(layers):
        counts.append(counts[-1] - min(r, (counts[-1] - protected) // 2))
    return counts


# -- (a) r = 0 is the unpatched model ------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_r0_computes_exactly_what_the_unpatched_model_does(family):
    model = tiny_encoder(family)
    x = pixels()
    with torch.no_grad():
        before = model(pixel_values=x, output_attentions=True, output_hidden_states=True)
    merging = apply_token_merging(model, "fast", r=0)
    with torch.no_grad(), merging.tracing() as traced:
        after = model(pixel_values=x, output_attentions=True, output_hidden_states=True)
    # the same modules on the same inputs and shapes: bit-identical (tests/tolerances.py)
    assert torch.equal(before.last_hidden_state, after.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(before.attentions, after.attentions))
    assert all(torch.equal(a, b) for a, b in zip(before.hidden_states, after.hidden_states))
    n = before.last_hidden_state.shape[1]
    assert traced.trace.tokens_per_layer == [n] * 4
    merging.remove()
    assert not hasattr(model, "token_merging")
    assert not type(model.embeddings).__name__.startswith("TokenMerging")


# -- (b) matching and merge against a direct numpy ToMe ---------------------------------------------


def numpy_tome(metric: np.ndarray, x: np.ndarray, size: np.ndarray, r: int, protected: int):
    """ToMe written out per token: A = even, B = odd tokens after the protected prefix; each A
    token's best B by cosine; the r best edges merge by size-weighted mean into their B token.
    Returns (tokens, sizes, which A tokens merged into which B token) in the order prefix,
    kept A tokens, B tokens."""
    rest = list(range(protected, metric.shape[0]))
    a_tokens, b_tokens = rest[0::2], rest[1::2]
    unit = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
    best = {a: max(b_tokens, key=lambda b: float(unit[a] @ unit[b])) for a in a_tokens}
    score = {a: float(unit[a] @ unit[best[a]]) for a in a_tokens}
    merged = sorted(a_tokens, key=lambda a: -score[a])[:r]
    kept = [a for a in a_tokens if a not in merged]
    out_x, out_size = [x[t] for t in range(protected)], [size[t] for t in range(protected)]
    out_x += [x[a] for a in kept]
    out_size += [size[a] for a in kept]
    for b in b_tokens:
        members = [b] + [a for a in merged if best[a] == b]
        total = sum(size[t] for t in members)
        out_x.append(sum(x[t] * size[t] for t in members) / total)
        out_size.append(total)
    return np.stack(out_x), np.array(out_size), {a: best[a] for a in merged}


@pytest.mark.parametrize("protected", [1, 2, 4])
def test_matching_and_weighted_merge_match_numpy(protected):
    rng = np.random.default_rng(protected)
    batch, n, channels, r = 2, 13, 5, 3
    metric = rng.normal(size=(batch, n, 4)).astype(np.float32)
    x = rng.normal(size=(batch, n, channels)).astype(np.float32)
    size = rng.integers(1, 5, size=(batch, n, 1)).astype(np.float32)  # as after earlier merges
    matching = bipartite_soft_matching(torch.from_numpy(metric), r, protected)
    assert matching.r == r
    merged_x, merged_size = merge_weighted(matching, torch.from_numpy(x), torch.from_numpy(size))
    assert merged_x.shape == (batch, n - r, channels)
    for item in range(batch):
        want_x, want_size, edges = numpy_tome(metric[item], x[item], size[item, :, 0], r, protected)
        a_index = [protected + 2 * int(i) for i in matching.merged[item, :, 0]]
        b_index = [protected + 2 * int(i) + 1 for i in matching.targets[item, :, 0]]
        assert dict(zip(a_index, b_index)) == edges  # which tokens merge, into which
        np.testing.assert_array_equal(merged_size[item, :, 0].numpy(), want_size)
        # a weighted mean of <= n terms of size <= 4·|x|
        tol = fp32_tol(2 * n, scale=float(np.abs(x[item]).max()) * 4)
        np.testing.assert_allclose(merged_x[item].numpy(), want_x, rtol=tol.rtol, atol=tol.atol)


def test_matching_merges_at_most_half_and_never_the_prefix():
    metric = torch.randn(1, 9, 4)
    matching = bipartite_soft_matching(metric, 100, protected=3)
    assert matching.r == 3  # (9 - 3) // 2
    x = torch.arange(9.0).view(1, 9, 1)
    assert matching.merge(x)[0, :3, 0].tolist() == [0.0, 1.0, 2.0]
    assert bipartite_soft_matching(metric, 0, protected=1) is None


# -- proportional attention: a merged pair of equal tokens is the pair ---------------------------------


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_proportional_attention_makes_a_merged_duplicate_exact(attention):
    """softmax with log(size) on a merged token's logit = the softmax over its copies, so
    attention over [t0, t1, t2, t2] equals attention over [t0, t1, t2 of size 2]."""
    from engine.runtimes.token_merging import _proportional

    model = tiny_encoder("vit", layers=1, attention=attention)
    attn = model.layers[0].attention
    tokens = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(3))
    copies = torch.cat([tokens, tokens[:, 2:]], dim=1)
    size = torch.tensor([1.0, 1.0, 2.0]).view(1, 3, 1)
    with torch.no_grad():
        full, _ = attn(copies, None)
        merged, _ = attn(tokens, _proportional(None, size))
    tol = fp32_tol(16 + 4, depth=2, scale=float(full.abs().max()))
    np.testing.assert_allclose(merged[0].numpy(), full[0, :3].numpy(), rtol=tol.rtol, atol=tol.atol)


# -- (c) source tracking: maps back on the patch grid ---------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_sources_partition_the_input_and_maps_unmerge_onto_every_patch(family):
    from engine.explain.torch_capture import capture

    model = tiny_encoder(family)
    merging = apply_token_merging(model, "fast", r=10)
    protected = merging.protected
    assert protected == {"vit": 1, "deit": 2, "dinov2": 1, "dinov2_registers": 4}[family]
    n = 64 + protected
    with torch.no_grad(), merging.tracing() as traced:
        out = model(pixel_values=pixels(1), output_attentions=True)
    trace = traced.trace
    assert trace.tokens_per_layer == expected_counts(n, protected, 10, 3)
    for index, count in enumerate(trace.tokens_per_layer):
        s = trace.source(index)
        assert s.shape == (count, n)
        np.testing.assert_array_equal(s.sum(axis=0), np.ones(n))  # every input token in one
        np.testing.assert_array_equal(np.diag(s[:protected, :protected]), np.ones(protected))
    for layer, attention in enumerate(out.attentions):
        merged = attention[0].numpy()
        full = trace.attention_to_tokens(layer, merged)
        s = trace.source(layer)
        owner, size = s.argmax(axis=0), s.sum(axis=1)
        # each input token takes its token's row; a merged key's share is split by its size
        np.testing.assert_allclose(full, merged[:, owner][:, :, owner] / size[owner], rtol=1e-6)
        np.testing.assert_allclose(full.sum(-1), 1.0, rtol=n * EPS32 * 4)

    captured = capture(model, pixels(1), with_gradients=True)
    assert captured.attentions.shape == (3, 2, n, n)
    assert captured.gradients.shape == (3, 2, n, n)
    assert captured.layer_features.shape == (3, n, 16)
    assert captured.features.shape == (n, 16) and captured.keys.shape == (n, 16)
    assert captured.layout.grid == (8, 8) and captured.layout.num_tokens == n
    np.testing.assert_allclose(captured.attentions.sum(-1), 1.0, rtol=n * EPS32 * 4)
    assert any("token merging" in note for note in captured.notes)


# -- speed -> r --------------------------------------------------------------------------------------


def test_r_is_the_fewest_tokens_reaching_the_target_flops():
    sizes = {"tokens": 197, "protected": 1, "layers": 12, "width": 768, "mlp_width": 3072}
    assert tokens_per_layer("off", **sizes) == 0
    for speed, target in (("balanced", 1.45), ("fast", 2.1)):
        r = tokens_per_layer(speed, **sizes)
        full = encoder_flops(r=0, **sizes)
        assert full / encoder_flops(r=r, **sizes) >= target > full / encoder_flops(r=r - 1, **sizes)
    assert (tokens_per_layer("balanced", **sizes), tokens_per_layer("fast", **sizes)) == (10, 17)


# -- (d) the real pipelines: caption and explain, load_runner(speed=...) ----------------------------------


@pytest.fixture(scope="module")
def captioner_card(tmp_path_factory) -> ModelCard:
    folder = tc.vit_gpt2().save(tmp_path_factory.mktemp("vit-gpt2"))
    return ModelCard(id="local:vit-gpt2", name="vit-gpt2", tasks=("caption",),
                     runtime="transformers", source=Source.LOCAL, local_path=str(folder))


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8))


def test_fast_captioner_merges_its_encoder_tokens_and_captions(captioner_card):
    from engine.tasks.caption import caption

    runner = load_runner(captioner_card, device="cpu", precision="fp32", speed="fast",
                         settings=Settings())
    merging = runner.module.token_merging
    assert any("token merging (fast)" in note for note in runner.notes)
    with merging.tracing() as traced:
        result = caption(runner, [_photo()], max_new_tokens=6)[0]
    assert len(result.token_ids) <= 6
    # 16 patches + CLS, 2 layers: fast merges the most a layer can (8 = (17 - 1) // 2, then 4)
    assert merging.r == 8
    assert traced.trace.tokens_per_layer == [17, 9, 5]
    plain = load_runner(captioner_card, device="cpu", precision="fp32", settings=Settings())
    assert not hasattr(plain.module, "token_merging")


def test_fast_cross_attention_maps_cover_the_patch_grid(captioner_card):
    from engine.explain.with_options import explain_with_options

    runner = load_runner(captioner_card, device="cpu", precision="fp32", speed="fast",
                         attention=True, settings=Settings())
    maps = explain_with_options(runner, _photo(), {"method": "cross", "max_new_tokens": 4,
                                                   "speed": "fast"}, cache=None)
    assert maps.attentions.shape[-1] == 17  # mapped back from 5 merged encoder tokens
    assert all(t.grid_map.shape == (4, 4) for t in maps.per_token)
    np.testing.assert_allclose(maps.attentions.sum(-1), 1.0, rtol=17 * EPS32 * 4)
    assert any("merged encoder tokens" in note for note in maps.notes)


@pytest.fixture(scope="module")
def vit_card(tmp_path_factory) -> ModelCard:
    folder = tmp_path_factory.mktemp("vit-features")
    tiny_encoder("vit").save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return ModelCard(id="local:vit-features", name="vit-features", tasks=("features",),
                     runtime="transformers", source=Source.LOCAL, local_path=str(folder))


@pytest.mark.parametrize("method", ["rollout", "relevance", "cls_similarity", "discover", "dino"])
def test_fast_explain_maps_are_on_the_patch_grid(vit_card, method):
    from engine.explain.with_options import explain_with_options

    runner = load_runner(vit_card, device="cpu", precision="fp32", speed="fast", attention=True,
                         settings=Settings())
    maps = explain_with_options(runner, _photo(), {"method": method, "speed": "fast"}, cache=None)
    assert maps.grid_map.shape == (8, 8)
    assert maps.heatmap.shape == (40, 56)
    assert np.isfinite(maps.grid_map).all()
    assert any("token merging" in note for note in maps.notes)


def test_cache_keeps_off_and_fast_apart(vit_card):
    cache = RunnerCache(1024, settings=Settings())
    off = cache.get_or_load(vit_card, device="cpu")
    fast = cache.get_or_load(vit_card, device="cpu", speed="fast")
    assert fast is not off and len(cache) == 2
    assert cache.get_or_load(vit_card, device="cpu", speed="fast") is fast
    assert hasattr(fast.module, "token_merging") and not hasattr(off.module, "token_merging")
    assert {key[-1] for key in cache} == {"off", "fast"}


def test_models_without_a_vit_encoder_refuse_speed(tmp_path):
    blip = tc.blip().save(tmp_path / "blip")
    card = ModelCard(id="local:blip", name="blip", tasks=("caption",), runtime="transformers",
                     source=Source.LOCAL, local_path=str(blip))
    with pytest.raises(UnsupportedModelError, match="speed 'fast'.*ViT, DeiT and DINOv2"):
        load_runner(card, device="cpu", precision="fp32", speed="fast", settings=Settings())
    onnx = ModelCard(id="local:x.onnx", name="x", tasks=("features",), runtime="onnx",
                     source=Source.LOCAL, local_path=str(tmp_path / "missing.onnx"))
    with pytest.raises(UnsupportedModelError, match="runs on onnx. Run it with speed off"):
        load_runner(onnx, device="cpu", precision="fp32", speed="balanced", settings=Settings())
