"""explain() takes engine Runners: torch runners through .module/.processor, ONNX ones by file."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from engine.catalog.card import AttentionSupport, ModelCard, Source
from engine.errors import UnsupportedModelError
from engine.explain import capabilities, explain
from engine.runtimes.base import Placement, Runner
from tests.fixtures.tiny_vits import bright_patch_image, crafted_vit, processor_for


class _TorchRunner(Runner):
    """The protocol as engine.runtimes' transformers backend implements it (module + processor)."""

    def __init__(self, card, model, processor):
        super().__init__(card, Placement("transformers", "cpu", "fp32"), processor=processor)
        self._model = model

    @property
    def module(self):
        return self._model


class _FileRunner(Runner):
    def __init__(self, card, processor=None):
        super().__init__(card, Placement("onnx", "cpu", "fp32", provider="CPUExecutionProvider"),
                         processor=processor)


def _card(runtime: str, **extra) -> ModelCard:
    return ModelCard(id=f"test-{runtime}", name="tiny", tasks=("features",), runtime=runtime,
                     attention=AttentionSupport.FULL, **extra)


def test_torch_runner_uses_its_module_and_processor():
    runner = _TorchRunner(_card("transformers"), crafted_vit("vit"), processor_for((32, 32)))
    maps = explain(runner, bright_patch_image((32, 32), (1, 3), 8), method="rollout")
    assert maps.model == "test-transformers"
    assert np.unravel_index(np.argmax(maps.grid_map), (4, 4)) == (1, 3)


def test_onnx_runner_is_explained_from_its_file_and_processor(tmp_path):
    model = crafted_vit("vit", classify=False)
    path = tmp_path / "model.onnx"
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False,
                          input_names=["pixel_values"], opset_version=17)
    path.write_bytes(buffer.getvalue())
    card = _card("onnx", source=Source.LOCAL, local_path=str(path))
    runner = _FileRunner(card, processor=processor_for((32, 32)))
    assert capabilities(card).methods == ("raw", "rollout", "dino", "discover")
    maps = explain(runner, bright_patch_image((32, 32), (2, 0), 8), method="dino")
    assert np.unravel_index(np.argmax(maps.grid_map), (4, 4)) == (2, 0)
    assert any("Softmax" in note for note in maps.notes)
    with pytest.raises(UnsupportedModelError, match="relevance"):
        explain(runner, bright_patch_image((32, 32), (2, 0), 8), method="relevance")


def test_runner_without_module_or_file_is_refused():
    runner = _FileRunner(_card("spandrel"))
    with pytest.raises(UnsupportedModelError, match="torch module or an ONNX file"):
        explain(runner, bright_patch_image((32, 32), (0, 0), 8), method="raw")
