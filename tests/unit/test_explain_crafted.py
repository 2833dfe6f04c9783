"""Maps from ViTs whose attention is known in advance (tests/fixtures/tiny_vits.py):
the CLS token attends to the brightest patch, so every method must peak on its pixels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.explain import explain
from tests.fixtures.tiny_vits import bright_patch_image, crafted_vit, processor_for, random_like

PATCH = 8
CASES = [  # family, registers, model-input (height, width), bright cell (row, col)
    ("vit", 0, (32, 32), (2, 1)),
    ("vit", 0, (32, 48), (1, 4)),  # non-square: interpolated position embeddings
    ("deit", 0, (32, 32), (3, 3)),  # CLS + distillation token
    ("dinov2", 0, (48, 32), (4, 2)),  # interpolates natively
    ("dinov2_registers", 0, (32, 32), (0, 3)),
    ("dinov2_registers", 4, (32, 48), (3, 5)),
    ("dinov2_registers", 4, (48, 32), (5, 0)),
]


def _peak_cell(heatmap: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    return int(y // PATCH), int(x // PATCH)


@pytest.mark.parametrize("family,registers,size,cell", CASES)
@pytest.mark.parametrize("method", ["raw", "rollout", "relevance", "dino"])
def test_map_peaks_on_the_attended_patch(family, registers, size, cell, method):
    model = crafted_vit(family, registers=registers)
    image = bright_patch_image(size, cell, PATCH)
    maps = explain(model, image, method=method, processor=processor_for(size))
    assert maps.heatmap.shape == (size[0], size[1])
    assert maps.layout.grid == (size[0] // PATCH, size[1] // PATCH)
    assert len(maps.layout.special.get("registers", ())) == registers
    if family == "deit":
        assert maps.layout.special["distillation"] == (1,)
    assert _peak_cell(maps.heatmap) == cell
    assert np.unravel_index(np.argmax(maps.grid_map), maps.grid_map.shape) == cell
    inside = maps.heatmap[cell[0] * PATCH:(cell[0] + 1) * PATCH, cell[1] * PATCH:(cell[1] + 1) * PATCH]
    assert inside.mean() > 3 * maps.heatmap.mean()


def test_registers_are_not_drawn_as_patches():
    """With 4 registers the token count is 1 + 4 + grid: a square-root guess would be wrong."""
    model = crafted_vit("dinov2_registers", registers=4)
    maps = explain(model, bright_patch_image((32, 32), (1, 1), PATCH), method="raw",
                   processor=processor_for((32, 32)))
    assert maps.attentions.shape[-1] == 1 + 4 + 16
    assert maps.layout.special == {"cls": (0,), "registers": (1, 2, 3, 4)}
    assert maps.layout.patch_start == 5


def test_raw_attention_from_a_clicked_patch_uses_that_query():
    model = crafted_vit("vit")
    image = bright_patch_image((32, 32), (2, 2), PATCH)
    maps = explain(model, image, method="raw", processor=processor_for((32, 32)), patch=(20.0, 20.0), head=0)
    query = maps.layout.patch_start + 2 * 4 + 2
    expected = maps.attentions[-1, 0, query, maps.layout.patch_slice].reshape(4, 4)
    np.testing.assert_allclose(maps.grid_map, expected, rtol=1e-6)


def test_patch_similarity_segments_patches_like_the_clicked_one():
    """Features carry brightness: clicking a bright patch selects the bright patches."""
    model = crafted_vit("vit")
    array = np.zeros((32, 32, 3), np.uint8)
    array[0:8, 0:8] = array[24:32, 16:24] = 255
    maps = explain(model, Image.fromarray(array), method="patch_similarity", processor=processor_for((32, 32)),
                   patch=(3.0, 3.0), threshold=0.99)
    assert maps.mask[4, 4] and maps.mask[28, 20]
    assert not maps.mask[12, 12]
    assert np.isclose(maps.grid_map[0, 0], 1.0)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x):
        order = np.argsort(x.ravel(), kind="stable")
        r = np.empty(order.size)
        r[order] = np.arange(order.size)
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


@pytest.mark.parametrize("method", ["raw", "rollout", "relevance"])
def test_model_randomisation_changes_the_map(method):
    """Adebayo et al. 2018: a map that survives re-initialising the weights explains the
    image, not the model. The crafted model ranks patches by brightness; transformers'
    random initialisation of the same architecture must not (Spearman < 0.5)."""
    import skimage.data

    image = Image.fromarray(skimage.data.astronaut()).resize((64, 64), Image.Resampling.BILINEAR)
    brightness = np.asarray(image, np.float64).mean(-1).reshape(8, 8, 8, 8).mean(axis=(1, 3))
    # softer attention (qk_gain 0.5) so every patch's rank carries the rule, not only the top one;
    # target 0 is the class whose logit grows with attended brightness
    model = crafted_vit("vit", image_size=(64, 64), qk_gain=0.5)
    processor = processor_for((64, 64))
    fixed = explain(model, image, method=method, processor=processor, target=0).grid_map
    if method != "relevance":  # relevance clips negative contributions: only the bright end ranks
        assert _spearman(fixed, brightness) > 0.9  # the crafted model follows its rule
    assert np.argmax(fixed) == np.argmax(brightness)
    correlations = [
        _spearman(fixed, explain(random_like(model, seed), image, method=method, processor=processor,
                                 target=0).grid_map)
        for seed in range(3)
    ]
    assert max(correlations) < 0.5, correlations
