"""Explain mode end to end: a tiny ViT imported from a local folder, real attention maps."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtTest import QTest

from desktop.main_window import MainWindow

pytestmark = pytest.mark.slow  # torch + transformers load in the worker (several seconds)


@pytest.fixture
def window(qtbot, qsettings, settings_path, tmp_path, monkeypatch, photos):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))  # a fresh import index
    from engine.catalog.local_import import import_model
    from tests.fixtures.repos import tiny_vit_classifier

    card = import_model(tiny_vit_classifier(tmp_path / "tiny-vit"), name="Tiny ViT")
    win = MainWindow(qsettings=qsettings, settings_path=settings_path)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    win.task_combo.setCurrentIndex(win.task_combo.findData("explain"))
    win.model_picker.select(win.catalog.get(card.id))
    win.workspace.add_paths([photos[0]])
    qtbot.waitUntil(lambda: win.workspace.shown_path == photos[0], timeout=10_000)
    yield win
    win.close()


def test_attention_map_layers_heads_and_patch_click(window, qtbot):
    win = window
    form = win.task_panel.explain_form
    assert win.card.id.startswith("local:")
    assert form.method.model().item(form.method.findData("patch_similarity")).isEnabled()
    assert not form.method.model().item(form.method.findData("gradcam")).isEnabled()
    form.method.setCurrentIndex(form.method.findData("raw"))
    with qtbot.waitSignal(win.explain.mapsReady, timeout=120_000) as first:
        win.run()
    maps = first.args[0]
    width, height = win.viewer.canvas.image_size
    assert maps.heatmap.shape == (height, width) and maps.method == "raw"
    assert win.viewer.heatmap is not None
    assert win.viewer.heatmap.mapRectToScene(win.viewer.heatmap.boundingRect()) == \
        QRectF(0, 0, width, height)
    assert "transformers on cpu" in win.placement_label.text()
    # the tiny ViT has 2 layers and 2 heads: the sliders now cover exactly those
    assert (form.layer.minimum(), form.layer.maximum()) == (-1, 1)
    assert (form.head.minimum(), form.head.maximum()) == (-1, 1)

    with qtbot.waitSignal(win.explain.mapsReady, timeout=30_000) as second:
        form.layer.setValue(0)
        form.head.setValue(1)
    assert second.args[0].params["layer"] == 0 and second.args[0].params["head"] == 1
    assert not np.allclose(second.args[0].heatmap, maps.heatmap)

    canvas = win.viewer.canvas
    target = QPointF(width * 0.25, height * 0.5)
    with qtbot.waitSignal(win.explain.mapsReady, timeout=30_000) as third:
        QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton,
                         pos=canvas.mapFromScene(target))
    clicked = third.args[0]
    assert clicked.method == "patch_similarity"
    px, py = clicked.params["patch"]
    assert abs(px - target.x()) <= 2 and abs(py - target.y()) <= 2
    assert form.method.currentData() == "patch_similarity"
    assert win.explain.requests == 3  # one model load, three maps
    # issue 18: the clicked segment exports as a PNG mask and COCO RLE
    assert form.export_mask.isEnabled()
    from PIL import Image

    from engine.exporters.masks import rle_decode

    png, rle = win.export_mask(str(win.settings_path.parent / "seg.png"))
    mask = np.asarray(Image.open(png))[..., 0] > 0
    np.testing.assert_array_equal(mask, clicked.mask)
    import json

    np.testing.assert_array_equal(rle_decode(json.loads(rle.read_text())["segmentation"]), clicked.mask)
