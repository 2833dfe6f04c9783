"""On the Lite build (no torch) the GUI shows PyTorch models greyed with what to install,
never picks one, and picks the ONNX entry of each task instead.

The seam is engine.catalog.requirements._installed (what `find_spec` says is installed):
patched to answer as a Lite install does, so the real catalog, picker and table run."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from desktop.views.catalog_model import NAME, STATE, CatalogModel, CatalogRow
from desktop.views.model_picker import ModelPicker
from engine.catalog import requirements
from engine.catalog.catalog import load_catalog

LITE_MISSING = {"torch", "transformers", "spandrel", "torchvision"}


@pytest.fixture
def lite(monkeypatch):
    real = requirements._installed
    monkeypatch.setattr(requirements, "_installed", lambda m: m not in LITE_MISSING and real(m))


def test_catalog_rows_of_torch_models_are_greyed_with_the_reason(qtbot, lite):
    cards = {c.id: c for c in list(load_catalog())}
    model = CatalogModel()
    model.set_rows([CatalogRow(cards["rtdetr-r18"]), CatalogRow(cards["rtdetr-r18-onnx"])])
    torch_row, onnx_row = (model.index(0, STATE), model.index(1, STATE))
    assert model.data(torch_row) == "needs the full build"
    assert model.data(onnx_row) == ""
    assert "pip install 'ocula[torch]'" in model.data(model.index(0, NAME), Qt.ItemDataRole.ToolTipRole)
    assert model.data(model.index(0, NAME), Qt.ItemDataRole.ForegroundRole) is not None
    assert model.data(model.index(1, NAME), Qt.ItemDataRole.ForegroundRole) is None


@pytest.mark.parametrize("task,onnx_ids", [
    ("detect", {"yolos-tiny-onnx", "detr-resnet50-onnx", "rtdetr-r18-onnx"}),
    ("segment", {"birefnet-lite-onnx", "segformer-b0-ade-onnx", "slimsam-77-onnx"}),
    ("caption", {"vit-gpt2-onnx"}),
    ("restore", {"swin2sr-x2-onnx"}),
])
def test_picker_never_picks_a_torch_model_on_lite(qtbot, lite, task, onnx_ids):
    cards = [c for c in list(load_catalog()) if c.supports(task)]
    picker = ModelPicker()
    qtbot.addWidget(picker)
    torch_card = next(c for c in cards if c.runtime == "transformers")
    picker.populate(cards, installed={torch_card.id}, prefer=torch_card.id)  # even installed
    assert picker.current_card().id in onnx_ids
    index = picker.findData(torch_card.id)
    assert index >= 0 and not picker.model().item(index).isEnabled()
    assert "full build" in picker.itemText(index)


def test_full_build_offers_torch_models(qtbot):
    if requirements.missing_packages(load_catalog().get("rtdetr-r18")):
        pytest.skip("this environment is a Lite install")
    cards = [c for c in list(load_catalog()) if c.supports("detect")]
    picker = ModelPicker()
    qtbot.addWidget(picker)
    picker.populate(cards, installed={"rtdetr-r18"}, prefer="rtdetr-r18")
    assert picker.current_card().id == "rtdetr-r18"


def test_welcome_starters_run_on_lite(lite):
    from desktop.views.welcome import starter_models

    picks = starter_models(load_catalog())
    assert set(picks) == {"caption", "detect", "segment", "restore"}
    assert all(c.runtime == "onnx" for c in picks.values()), {t: c.id for t, c in picks.items()}


def test_onnx_sam_needs_the_full_build_on_lite(lite):
    """SlimSAM's ONNX export still needs transformers' SamProcessor (no numpy port yet)."""
    card = load_catalog().get("slimsam-77-onnx")
    assert requirements.needs_full_build(card)
    assert "transformers" in requirements.full_build_message(card)
    assert not requirements.needs_full_build(load_catalog().get("segformer-b0-ade-onnx"))
