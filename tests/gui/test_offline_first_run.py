"""First run offline (issue 15, item 3): no download offered that cannot work, one error
message at most, the bundled tiny models offered as installed, and a model that runs
for each task; importing a folder opens the folder dialog directly."""
from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants  # noqa: F401  read HF_HUB_OFFLINE before a test sets it
import pytest
from PySide6.QtWidgets import QFileDialog, QInputDialog

from desktop.main_window import MainWindow
from desktop.views.catalog import CatalogView
from desktop.views.catalog_model import CatalogRow
from desktop.views.error_dialogs import ErrorDialog
from desktop.workers import Pools
from engine.catalog.card import ModelCard
from engine.settings import Settings


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("OCULA_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    return home


@pytest.fixture
def offline_window(qtbot, qsettings, settings_path, fresh_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    win = MainWindow(qsettings=qsettings, settings_path=settings_path, welcome=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    # offline with nothing installed, the window registers the bundled models in a worker
    # (it imports transformers): let it finish, so no test after this one races it
    qtbot.waitUntil(lambda: getattr(win, "_bundled_op", None) is None
                    or not win._bundled_op.running, timeout=300_000)
    win.close()


def test_welcome_offline_offers_bundled_models_not_downloads(qtbot, fresh_home):
    from desktop.views.welcome import WelcomeDialog
    from engine.catalog.catalog import load_catalog

    started, bundled = [], []
    dialog = WelcomeDialog(load_catalog(strict=False), start_download=started.append,
                           offline=True, use_bundled=lambda: bundled.append(True))
    qtbot.addWidget(dialog)
    assert dialog.picks, "the catalog has starter models to offer"
    assert not dialog.download_button.isEnabled()
    assert "Offline" in dialog.download_button.toolTip()
    assert "HF_HUB_OFFLINE" in dialog.download_button.toolTip()
    assert dialog.bundled_button.isVisibleTo(dialog) and dialog.bundled_button.isEnabled()
    dialog.accept_downloads()  # even if triggered (Enter), nothing starts
    assert started == []
    dialog.bundled_button.click()
    assert bundled == [True]


def _catalog_view(qtbot, settings: Settings) -> tuple[CatalogView, Pools]:
    pools = Pools()
    view = CatalogView(settings=lambda: settings, pools=pools)
    qtbot.addWidget(view)
    return view, pools


def test_catalog_download_disabled_offline_with_reason(qtbot, fresh_home):
    view, pools = _catalog_view(qtbot, Settings(offline=True))
    row = next(r for r in view.all_rows if r.card.repo and not r.card.local_path)
    view.search.clear()
    view.apply_filter()
    assert view.select(row.card.id)
    assert not view.download_button.isEnabled()
    assert "Offline mode is on" in view.download_button.toolTip()
    assert view.download(row) is None  # the welcome dialog's path: refused, once, in words
    assert "Offline mode is on" in view.status.text()
    assert not view.findChildren(ErrorDialog)
    pools.wait()


def test_several_failed_downloads_show_one_dialog(qtbot, hub, tmp_path):
    view, pools = _catalog_view(qtbot, Settings())
    rows = []
    for i in range(3):  # repos the hub does not have: each download fails
        card = ModelCard(id=f"hub:gone/m{i}", name=f"Gone {i}", tasks=("detect",),
                         runtime="transformers", repo=f"gone/m{i}", download_bytes=1000)
        rows.append(CatalogRow(card))
    view.all_rows.extend(rows)
    view.apply_filter()
    ops = [view.download(r) for r in rows]
    qtbot.waitUntil(lambda: all(op.outcome is not None for op in ops), timeout=30_000)
    assert [op.outcome for op in ops] == ["failed"] * 3
    dialogs = [d for d in view.findChildren(ErrorDialog) if d.isVisible()]
    assert len(dialogs) == 1
    assert "2 more downloads failed" in view.status.text()
    view.shutdown()
    pools.wait()


def test_import_a_folder_opens_the_folder_dialog_directly(qtbot, fresh_home, monkeypatch):
    from desktop.views.bundled_models import bundled_path

    def no_file_dialog(*args, **kwargs):
        raise AssertionError("the file dialog opened before the folder dialog")

    folder = bundled_path("detect")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(no_file_dialog))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(folder)))
    monkeypatch.setattr(QInputDialog, "getItem",
                        staticmethod(lambda *a, **k: ("(detect automatically)", True)))
    view, pools = _catalog_view(qtbot, Settings())
    assert view.import_button.menu() is not None
    card = view.import_folder_dialog()
    assert card is not None and card.local_path == str(folder)
    assert view.selected_row().card.id == card.id
    pools.wait()


@pytest.mark.slow  # torch + transformers load in the worker
def test_offline_first_run_ends_with_a_model_that_runs(offline_window, qtbot, photos):
    """Fresh app home, nothing downloaded, offline: every task ends with an installed
    model — the bundled one wherever nothing else is installed (the MTCNN face detector,
    when its package is installed, already counts for detect) — and a detect run with the
    bundled detector (the welcome dialog's "Use bundled test models") gives a result."""
    from desktop.views.bundled_models import BUNDLED, is_bundled

    win = offline_window
    qtbot.waitUntil(lambda: win.catalog is not None and getattr(win, "_bundled_op", None)
                    is not None and not win._bundled_op.running, timeout=120_000)
    assert win._bundled_op.outcome == "succeeded", win._bundled_op.failure
    # the cards reach the window through a queued signal, then a cache scan off the UI
    # thread says what is installed
    qtbot.waitUntil(lambda: all(any(c.id in win.installed for c in win.cards_for_task(t))
                                for t in BUNDLED), timeout=30_000)
    for task in BUNDLED:  # each task's picker offers an installed model
        installed = [c for c in win.cards_for_task(task) if c.id in win.installed]
        assert installed, task
        if not any(not is_bundled(c) for c in installed):
            win.task_combo.setCurrentIndex(win.task_combo.findData(task))
            assert win.card is not None and is_bundled(win.card), task
    win.progress_label.setText("")
    op = win.use_bundled_models(["detect"])
    qtbot.waitUntil(lambda: any(is_bundled(c) and c.id in win.installed
                                for c in win.cards_for_task("detect")), timeout=120_000)
    detector = next(c for c in win.cards_for_task("detect")
                    if is_bundled(c) and c.id in win.installed)
    win.task_combo.setCurrentIndex(win.task_combo.findData("detect"))
    win.model_picker.select(detector)
    assert win.card.id == detector.id
    win.task_combo.setCurrentIndex(win.task_combo.findData("detect"))
    win.task_panel.forms["detect"].threshold.setValue(0.0)  # random weights: low scores
    win.task_panel.save_outputs.setChecked(False)
    win.workspace.add_paths([photos[0]])
    qtbot.waitUntil(lambda: win.workspace.shown_path == photos[0], timeout=10_000)
    with qtbot.waitSignal(win.jobFinished, timeout=180_000) as finished:
        op = win.run()
    assert finished.args[0] is op and op.outcome == "succeeded", \
        op.failure and op.failure.details
    result = win.results[("detect", photos[0])]
    assert type(result).__name__ == "Detections" and result.boxes
    assert win.viewer.boxes is not None
