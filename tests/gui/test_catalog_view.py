"""The catalog view against the local hub: progress, cancel, resume, delete, details."""
from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.views.catalog import CatalogView
from desktop.views.catalog_model import STATE_COLUMN, CatalogRow
from desktop.workers import Pools
from engine.catalog.card import ModelCard
from engine.settings import Settings
from tests.fixtures.repos import random_bytes, write_files

REPO = "tester/tiny-weights"
WEIGHTS = "*/resolve/*/model.safetensors"
SIZE = 3_000_000


@pytest.fixture
def view(qtbot, hub, tmp_path: Path):
    weights = random_bytes(SIZE, seed=3)
    hub.add_repo(REPO, write_files(tmp_path / "repo", {
        "config.json": '{"model_type": "detr"}',
        "README.md": ("---\nlicense: mit\n---\n# Tiny weights\n\n"
                      "A model card written in **Markdown**.\n"),
        "model.safetensors": weights,
    }))
    pools = Pools()
    catalog_view = CatalogView(settings=lambda: Settings(), pools=pools)
    qtbot.addWidget(catalog_view)
    card = ModelCard(id=f"hub:{REPO}", name="Tiny weights", tasks=("detect",),
                     runtime="transformers", repo=REPO, download_bytes=SIZE + 200,
                     params=750_000, license="mit", commercial_use=True,
                     seed="Carion et al. 2020, End-to-End Object Detection with Transformers")
    row = CatalogRow(card)
    catalog_view.all_rows.append(row)
    catalog_view.search.setText("")
    catalog_view.apply_filter()
    assert catalog_view.select(card.id)
    yield catalog_view, row, hub
    catalog_view.shutdown()
    pools.wait()


def _state_text(view: CatalogView, row: CatalogRow) -> str:
    index = view.model.index(view.model.rows.index(row), STATE_COLUMN)
    return view.model.data(index, Qt.ItemDataRole.DisplayRole)


def test_download_progress_cancel_resume_delete(view, qtbot, monkeypatch):
    view, row, hub = view
    asked: list[str] = []
    monkeypatch.setattr(view, "confirm", lambda title, text: asked.append(text) or True)
    hub.throttle(WEIGHTS, 1_000_000)  # ~3 s for the weights
    assert view.download_button.isEnabled() and not view.cancel_button.isEnabled()
    view.download_button.click()
    op = view.downloads[row.card.id]
    assert row.state == "downloading" and view.cancel_button.isEnabled()
    seen: list[str] = []
    qtbot.waitUntil(lambda: 0.1 < (row.fraction or 0) < 0.9 and
                    seen.append(_state_text(view, row)) is None, timeout=15_000)
    qtbot.waitUntil(lambda: (row.fraction or 0) > 0.25, timeout=15_000)
    seen.append(_state_text(view, row))
    assert all(text.endswith("%") for text in seen) and seen[0] != seen[-1]
    assert op.deliveries < 60  # coalesced: no per-chunk UI updates

    with qtbot.waitSignal(op.done, timeout=10_000):
        view.cancel_button.click()
    assert op.outcome == "cancelled" and row.state == "cancelled"
    assert _state_text(view, row) == "paused — resume"
    assert view.download_button.text() == "Resume download"
    partial_at = row.done
    assert 0 < partial_at < SIZE

    hub.unthrottle()
    view.download_button.click()
    resumed = view.downloads[row.card.id]
    with qtbot.waitSignal(resumed.done, timeout=20_000):
        pass
    assert resumed.outcome == "succeeded", resumed.failure and resumed.failure.details
    assert row.installed and row.state == "" and row.disk_bytes >= SIZE
    assert _state_text(view, row).startswith("yes")
    # the resumed request asked only for the missing bytes
    assert any(r and r.startswith("bytes=") and r != "bytes=0-" for r in hub.ranges(WEIGHTS))
    from desktop.format import human_bytes

    assert view.disk_label.text().startswith("1 model installed, " + human_bytes(row.disk_bytes))
    # details show the repo's model card (README, front matter removed) and the seed paper
    view._on_selection()
    text = view.details.toPlainText()
    assert "A model card written in Markdown." in text and "license: mit" not in text
    assert "Carion et al. 2020" in text

    freed = view.delete_selected()
    assert freed >= SIZE and not row.installed
    assert len(asked) == 1 and "Tiny weights" in asked[0]  # asked first, once
    assert not view.delete_button.isEnabled() and view.download_button.isEnabled()


def test_failed_download_says_why(view, qtbot):
    view, row, hub = view
    hub.remove_repo(REPO)
    view.download_button.click()
    op = view.downloads[row.card.id]
    qtbot.waitUntil(lambda: op.outcome is not None, timeout=20_000)
    assert op.outcome == "failed" and row.state == "failed"
    assert REPO in view.status.text()  # a sentence naming the repo, not a traceback
    assert "Traceback" not in view.status.text()
    from desktop.views.error_dialogs import ErrorDialog

    dialogs = [w for w in view.findChildren(ErrorDialog)]
    assert dialogs and not dialogs[0].details_view.isVisible()
    dialogs[0].details_button.click()
    assert dialogs[0].details_view.isVisible()
    assert "Traceback" in dialogs[0].details_view.toPlainText()


def test_filters_and_offline_badge(view, qtbot, monkeypatch):
    view, row, hub = view
    total = len(view.model.rows)
    view.task.setCurrentIndex(view.task.findData("restore"))
    assert 0 < len(view.model.rows) < total
    assert all(r.card.supports("restore") for r in view.model.rows)
    view.task.setCurrentIndex(0)
    view.search.setText("tiny weights")
    view.apply_filter()
    assert [r.card.id for r in view.model.rows] == [row.card.id]
    assert view.offline_badge.isHidden()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    view._update_offline()
    assert not view.offline_badge.isHidden()


def test_hub_search_lists_hits_and_reads_a_card_on_selection(view, qtbot, tmp_path):
    view, row, hub = view
    import numpy as np
    from safetensors.numpy import save_file

    folder = tmp_path / "vit"
    folder.mkdir()
    save_file({"w": np.zeros((16, 8), np.float32)}, str(folder / "model.safetensors"))
    write_files(folder, {"config.json": '{"architectures": ["DetrForObjectDetection"], '
                                        '"model_type": "detr"}'})
    tag = "zq-gui-probe"
    hub.add_repo(f"gui/{tag}-small", folder, pipeline_tag="object-detection",
                 library_name="transformers", license="apache-2.0", downloads=50)
    hub.add_repo(f"gui/{tag}-big", folder, pipeline_tag="object-detection",
                 library_name="transformers", license="apache-2.0", downloads=5000)
    view.task.setCurrentIndex(view.task.findData("detect"))
    view.search.setText(tag)
    view.hub_button.setChecked(True)  # searches at once
    qtbot.waitUntil(lambda: len(view.model.rows) == 2, timeout=20_000)
    names = [view.model.data(view.model.index(i, 0)) for i in range(2)]
    assert names == [f"gui/{tag}-big", f"gui/{tag}-small"]  # most downloaded first
    assert "5,000 downloads" in _state_text(view, view.model.rows[0])
    view.table.selectRow(0)
    qtbot.waitUntil(lambda: view.model.rows[0].card is not None, timeout=20_000)
    card = view.model.rows[0].card
    assert card.repo == f"gui/{tag}-big" and card.supports("detect")
    qtbot.waitUntil(lambda: f"gui/{tag}-big" in view.details.toPlainText(), timeout=5000)
    assert view.selected_row() is view.model.rows[0]
    assert view.download_button.isEnabled() and view.use_button.isEnabled()
    view.hub_button.setChecked(False)  # back to the catalog, still filtered by the text
    assert view.model.rows == []
    view.search.clear()
    view.apply_filter()
    assert any(r is row for r in view.model.rows)
