"""DINOv2 with registers end to end: a tiny random Dinov2WithRegistersModel published on the
local hub, fetched and loaded by load_runner(attention=True), explained through the explain
task's route. Oracle: transformers' own forward of the saved folder, in numpy: the patch grid is
hidden_states[:, 1 + num_registers:] and nothing else."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.catalog.card import ModelCard
from engine.settings import Settings
from tests.tolerances import fp32_tol
from tests.unit.test_explain_cls_similarity import HIDDEN, tiny_dinov2_registers

REGISTERS = 4


def _save_tiny(folder):
    from transformers import ViTImageProcessor

    model = tiny_dinov2_registers(REGISTERS, seed=5)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.5] * 3
                      ).save_pretrained(folder)
    return folder


@pytest.fixture
def runner(hub, tmp_path):
    from engine.runtimes import load_runner

    sha = hub.add_repo("org/tiny-dinov2-registers", _save_tiny(tmp_path / "tiny"))
    card = ModelCard(id="hub:org/tiny-dinov2-registers", name="tiny registers", tasks=("features",),
                     runtime="transformers", repo="org/tiny-dinov2-registers", revision=sha,
                     architecture="Dinov2WithRegistersModel", attention="full")
    return load_runner(card, device="cpu", settings=Settings(), attention=True)


def test_hub_dinov2_with_registers_maps_cover_the_patch_tokens_only(runner, tmp_path):
    from transformers import AutoImageProcessor, Dinov2WithRegistersModel

    from engine.explain import capabilities
    from engine.explain.with_options import explain_with_options

    assert type(runner.module).__name__ == "Dinov2WithRegistersModel"
    assert "cls_similarity" in capabilities(runner).methods
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8))
    folder = tmp_path / "tiny"
    reference = Dinov2WithRegistersModel.from_pretrained(folder, attn_implementation="eager").eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = reference(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    hidden = out.last_hidden_state[0].numpy().astype(np.float64)
    assert hidden.shape[0] == 1 + REGISTERS + 16
    patches = hidden[1 + REGISTERS:]
    tol = fp32_tol(HIDDEN)

    cls = explain_with_options(runner, image, {"method": "cls_similarity"}, cache=None)
    expected = (patches @ hidden[0]) / (np.linalg.norm(patches, axis=1) * np.linalg.norm(hidden[0]))
    np.testing.assert_allclose(cls.grid_map, expected.reshape(4, 4), rtol=tol.rtol, atol=tol.atol)
    assert cls.layout.special == {"cls": (0,), "registers": (1, 2, 3, 4)}
    assert cls.layout.patch_start == 1 + REGISTERS and cls.layout.grid == (4, 4)
    assert cls.heatmap.shape == (40, 56)  # back on the original image, registers nowhere

    dino = explain_with_options(runner, image, {"method": "dino"}, cache=None)
    heads = out.attentions[-1][0].numpy()[:, 0, 1 + REGISTERS:]  # CLS row of each head, patches only
    np.testing.assert_allclose(dino.head_maps[0], heads.reshape(-1, 4, 4), rtol=1e-6, atol=1e-7)
    assert len(dino.params["register_norms"]) == REGISTERS
    np.testing.assert_allclose(dino.params["register_norms"],
                               np.linalg.norm(out.hidden_states[-1][0].numpy()[1:1 + REGISTERS], axis=1),
                               rtol=1e-5)
