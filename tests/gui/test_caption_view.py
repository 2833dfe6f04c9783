"""Captions in the GUI: a caption job's text on the image, and each caption word's
cross-attention map one click away. Tiny random ViT-GPT2 imported from a local folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PySide6.QtCore import QUrl

from desktop.main_window import MainWindow

pytestmark = pytest.mark.slow  # torch + transformers load in the worker


@pytest.fixture
def caption_window(qtbot, qsettings, settings_path, tmp_path, monkeypatch, photos):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    from engine.catalog.local_import import import_model
    from tests.fixtures.tiny_captioners import vit_gpt2

    card = import_model(vit_gpt2().save(tmp_path / "tiny-vit-gpt2"), task="caption",
                        name="Tiny ViT-GPT2")
    win = MainWindow(qsettings=qsettings, settings_path=settings_path)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    win.workspace.add_paths([photos[0]])
    qtbot.waitUntil(lambda: win.workspace.shown_path == photos[0], timeout=10_000)
    yield win, win.catalog.get(card.id)
    win.close()


def test_caption_job_text_is_shown_on_the_image(caption_window, qtbot, tmp_path, photos):
    win, card = caption_window
    win.task_combo.setCurrentIndex(win.task_combo.findData("caption"))
    win.model_picker.select(card)
    win.task_panel.forms["caption"].max_new_tokens.setValue(8)
    win.task_panel.output_dir.setText(str(tmp_path / "out"))
    with qtbot.waitSignal(win.jobFinished, timeout=180_000) as finished:
        win.run()
    op = finished.args[0]
    assert op.outcome == "succeeded", op.failure and op.failure.details
    record = json.loads((tmp_path / "out" / f"{photos[0].stem}.caption.json").read_text())
    text = record["caption"] if "caption" in record else record["result"]["caption"]
    assert win.viewer.caption_text == text
    assert win.viewer.caption_label.isVisible() == bool(text)
    assert text in win.results_panel.caption_view.toPlainText()
    win.viewer.toggle_overlay("caption")  # shortcut C
    assert not win.viewer.caption_label.isVisible()


def test_click_a_caption_word_to_see_its_map(caption_window, qtbot):
    win, card = caption_window
    win.task_combo.setCurrentIndex(win.task_combo.findData("explain"))
    win.model_picker.select(card)
    form = win.task_panel.explain_form
    index = form.method.findData("cross_attention")
    assert form.method.model().item(index).isEnabled()
    form.method.setCurrentIndex(index)
    with qtbot.waitSignal(win.explain.mapsReady, timeout=180_000) as ready:
        win.run()
    maps = ready.args[0]
    assert len(maps.per_token) >= 2
    assert win.results_panel.tokens == [t.label for t in maps.per_token]
    # clicking word 1 in the caption (a link in the results panel) shows its own map
    with qtbot.waitSignal(win.explain.heatmapChanged, timeout=5000) as shown:
        win.results_panel.caption_view.anchorClicked.emit(QUrl("tok:1"))
    assert np.array_equal(shown.args[0], maps.per_token[1].heatmap)
    assert win.explain.token_index == 1
    assert win.viewer.heatmap is not None
    np.testing.assert_allclose(win.viewer.heatmap.values, maps.per_token[1].heatmap)
