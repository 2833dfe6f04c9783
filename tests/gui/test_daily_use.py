"""The desktop app as a daily tool (issue 15): outputs are never inputs, unsaved runs,
results kept per task, what was opened is shown, job rows that stay in the dock, a model
picker that follows what is installed, and a Help menu."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QObject, QUrl, Signal
from PySide6.QtWidgets import QVBoxLayout, QWidget

from desktop.main_window import MainWindow


@pytest.fixture
def window(qtbot, qsettings, settings_path, tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    win = MainWindow(qsettings=qsettings, settings_path=settings_path, welcome=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


# -- 1. outputs are never inputs ---------------------------------------------------------------

@pytest.fixture
def folder_with_outputs(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "shoot"
    inputs = [_png(root / "astronaut.png"), _png(root / "sub" / "cat.png", 1)]
    # a first run's outputs: the default folder, and two custom output folders
    _png(root / "ocula-out" / "detect" / "astronaut.overlay.png", 2)
    _png(root / "results" / "astronaut.overlay.png", 3)
    (root / "results" / "ocula-report.json").write_text("{}")
    _png(root / "running" / "cat.overlay.png", 4)
    (root / "running" / ".ocula.lock").write_text("")
    return root, sorted(inputs)


def test_engine_input_walk_skips_ocula_output_folders(folder_with_outputs):
    from engine.media.inputs import expand_inputs, is_output_folder

    root, inputs = folder_with_outputs
    items = list(expand_inputs([root]))
    assert sorted(Path(i.path) for i in items) == inputs
    assert all(i.kind == "image" for i in items)
    assert is_output_folder(root / "ocula-out") and not is_output_folder(root / "sub")
    # a folder the user names is still read, even an output folder
    named = list(expand_inputs([root / "results"]))
    assert [Path(i.path).name for i in named] == ["astronaut.overlay.png"]


def test_reopening_a_folder_in_the_gui_does_not_add_its_outputs(window, folder_with_outputs):
    root, inputs = folder_with_outputs
    window.workspace.add_paths([root])
    assert sorted(window.workspace.inputs) == inputs
    assert not any("overlay" in p.name for p in window.workspace.inputs)


# -- 2. "Save results to files" unchecked -------------------------------------------------------

def test_unsaved_run_writes_to_a_temporary_folder_removed_when_done(window, tmp_path):
    image = _png(tmp_path / "in" / "a.png")
    window.task_panel.save_outputs.setChecked(False)
    window.task_panel.output_dir.setText(str(tmp_path / "would-be-out"))
    spec = window.build_spec(SimpleNamespace(id="some-model", variant=None), [image])
    out = Path(spec.output_dir)
    assert out.is_dir() and out != tmp_path / "would-be-out"
    assert tmp_path / "in" not in out.parents and "ocula-out" not in out.parts
    (out / "a.detections.json").write_text("{}")  # what a job would write

    op = SimpleNamespace(outcome="succeeded", result=None, unsaved_dir=str(out))
    window.on_job_done(op)
    assert not out.exists()
    assert not (tmp_path / "would-be-out").exists()

    # checked again: the folder the user chose
    window.task_panel.save_outputs.setChecked(True)
    spec = window.build_spec(SimpleNamespace(id="some-model", variant=None), [image])
    assert spec.output_dir == str(tmp_path / "would-be-out")


def test_unsaved_folders_still_open_at_quit_are_removed(qtbot, qsettings, settings_path,
                                                        tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    win = MainWindow(qsettings=qsettings, settings_path=settings_path, welcome=False)
    qtbot.addWidget(win)
    win.task_panel.save_outputs.setChecked(False)
    spec = win.build_spec(SimpleNamespace(id="m", variant=None), [_png(tmp_path / "a.png")])
    assert Path(spec.output_dir).is_dir()
    win.close()
    assert not Path(spec.output_dir).exists()


# -- 3. results are kept per task ---------------------------------------------------------------

def _deliver(win: MainWindow, task: str, path: Path, result) -> None:
    op = SimpleNamespace(label=f"{task} job")
    getattr(win, "_op_task", {})[id(op)] = task  # which task the job ran
    win.on_job_events(op, [SimpleNamespace(kind="item_done", item=str(path), result=result)])


def test_each_task_shows_only_its_own_results(window, qtbot, photos):
    from engine.results import Box, Caption, Detections

    path = photos[0]
    window.workspace.add_paths([path])
    qtbot.waitUntil(lambda: window.workspace.shown_path == path, timeout=10_000)
    combo = window.task_combo
    combo.setCurrentIndex(combo.findData("detect"))
    _deliver(window, "detect", path, Detections(
        boxes=[Box(2, 2, 40, 40, "cat", 0.9)], image_size=(160, 160)))
    assert window.viewer.boxes is not None and window.results_panel.table.rowCount() == 1

    combo.setCurrentIndex(combo.findData("segment"))
    assert window.viewer.boxes is None, "detect boxes shown under Segment"
    assert not window.results_panel.table.isVisibleTo(window.results_panel)

    combo.setCurrentIndex(combo.findData("explain"))
    assert window.viewer.boxes is None
    window._on_heatmap(np.ones((8, 8), dtype=np.float32))
    assert window.viewer.heatmap is not None
    combo.setCurrentIndex(combo.findData("detect"))
    assert window.viewer.heatmap is None, "heatmap shown under Detect"
    assert window.viewer.boxes is not None  # detect's own result is back
    window._on_heatmap(np.ones((8, 8), dtype=np.float32))  # a late map from Explain
    assert window.viewer.heatmap is None

    _deliver(window, "caption", path, Caption(text="a cat on a mat"))
    assert window.viewer.caption_text == ""  # not under Detect
    combo.setCurrentIndex(combo.findData("caption"))
    assert window.viewer.caption_text == "a cat on a mat"
    assert window.viewer.boxes is None
    combo.setCurrentIndex(combo.findData("explain"))
    assert window.viewer.caption_text == "", "caption strip shown under Explain"


def test_caption_words_open_their_map_or_are_plain_text(window, qtbot, photos, monkeypatch):
    from engine.results import Caption

    path = photos[0]
    window.workspace.add_paths([path])
    qtbot.waitUntil(lambda: window.workspace.shown_path == path, timeout=10_000)
    combo = window.task_combo
    combo.setCurrentIndex(combo.findData("caption"))
    card = window.catalog.get("vit-gpt2")
    window.model_picker.select(card)
    caption = Caption(text="a cat", tokens=["a", " cat"])

    # a model whose words have no attention maps: no links, no "click a word" promise
    monkeypatch.setattr(window, "_caption_words_explainable", lambda: False)
    _deliver(window, "caption", path, caption)
    assert "click a word" not in window.results_panel.summary.text()
    assert "tok:" not in window.results_panel.caption_view.toHtml()

    # one that has them: a click switches to Explain (caption words) for this image,
    # and that word's map is shown once the maps arrive
    monkeypatch.setattr(window, "_caption_words_explainable", lambda: True)
    window._show_result_for(path)
    assert "click a word" in window.results_panel.summary.text()
    requests = []
    monkeypatch.setattr(window.explain, "request",
                        lambda card, path, options, **kw: requests.append((card, path, options)))
    window.results_panel.caption_view.anchorClicked.emit(QUrl("tok:1"))
    assert window.task == "explain" and window.card.id == card.id
    assert requests and requests[-1][1] == path
    assert requests[-1][2]["method"] == "cross_attention"
    maps = SimpleNamespace(
        method="cross_attention", params={}, notes=[], layers=0, heads=0, mask=None,
        heatmap=np.zeros((4, 4), np.float32),
        per_token=[SimpleNamespace(label="a", heatmap=np.zeros((4, 4), np.float32)),
                   SimpleNamespace(label=" cat", heatmap=np.ones((4, 4), np.float32))])
    window.explain._on_maps(maps)
    assert window.explain.token_index == 1
    np.testing.assert_allclose(window.viewer.heatmap.values, maps.per_token[1].heatmap)


# -- 4. what was opened is what is shown --------------------------------------------------------

def test_open_shows_the_new_file(window, qtbot, photos):
    window.workspace.add_paths([photos[0]])
    qtbot.waitUntil(lambda: window.workspace.shown_path == photos[0], timeout=10_000)
    window.workspace.add_paths([photos[1]])  # what Open… and a drop call
    qtbot.waitUntil(lambda: window.workspace.shown_path == photos[1], timeout=10_000)
    assert window.workspace.current_path == photos[1]
    assert window.workspace.strip.currentRow() == 1


# -- 5. job rows never widen the dock -----------------------------------------------------------

class _FakeOp(QObject):
    events = Signal(list)
    done = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.label, self.kind = "detect · some-model", "job"
        self.outcome, self.failure, self.running, self.paused = None, None, True, False

    def cancel(self) -> None:
        pass


def test_a_long_failure_message_does_not_widen_the_jobs_dock(qtbot):
    from desktop.views.queue import QueueView

    host = QWidget()
    qtbot.addWidget(host)
    queue = QueueView()
    QVBoxLayout(host).addWidget(queue)
    host.resize(420, 200)
    host.show()
    qtbot.waitExposed(host)
    op = _FakeOp()
    row = queue.add(op)
    message = "the model could not be loaded: " + "x" * 2000
    op.outcome, op.running = "failed", False
    op.failure = SimpleNamespace(message=message)
    op.done.emit()
    qtbot.wait(50)
    assert row.detail.text() == "failed: " + message
    assert message in row.detail.toolTip()  # the full text, one hover away
    assert row.sizeHint().width() <= 420
    assert row.minimumSizeHint().width() <= 420
    assert queue.minimumSizeHint().width() <= 420
    assert row.width() <= 420 and row.remove_button.geometry().right() <= row.width()
    assert host.width() == 420


# -- 6. the model picker follows what is installed ----------------------------------------------

def _wait_scan(win, qtbot) -> None:
    qtbot.waitUntil(lambda: getattr(win, "_scan_op", None) is not None
                    and not win._scan_op.running, timeout=20_000)


def test_an_automatic_default_is_not_saved_and_installed_models_win(window, qtbot, qsettings):
    _wait_scan(window, qtbot)
    combo = window.task_combo
    combo.setCurrentIndex(combo.findData("detect"))
    assert qsettings.value("models/detect") is None, "an automatic pick saved as preference"
    cards = window.cards_for_task("detect")
    last = cards[-1]
    window._on_installed({last.id})  # e.g. a download finished
    assert window.card.id == last.id
    assert qsettings.value("models/detect") is None
    window.model_picker.select(cards[0])  # the user's own choice is remembered
    assert qsettings.value("models/detect") == cards[0].id
    window._on_installed({last.id})
    assert window.card.id == cards[0].id


@pytest.mark.slow  # torch + spandrel build the checkpoint
def test_an_imported_model_appears_in_the_picker_at_once(window, qtbot, tmp_path):
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    path = tmp_path / "my-upscaler.safetensors"
    save_file(Compact(num_feat=8, num_conv=2, upscale=2).state_dict(), str(path))
    _wait_scan(window, qtbot)
    combo = window.task_combo
    combo.setCurrentIndex(combo.findData("restore"))
    view = window.open_catalog()
    card = view.import_path(path, task="restore")
    assert card is not None
    assert window.model_picker.findData(card.id) >= 0
    _wait_scan(window, qtbot)
    assert card.id in window.installed
    view.hide()


# -- 7. Help menu ----------------------------------------------------------------------------------

def test_help_menu_shortcuts_and_about(window, qtbot, settings_path):
    import engine

    titles = [a.text().replace("&", "") for a in window.menuBar().actions()]
    assert "Help" in titles
    torch_loaded = "torch" in sys.modules

    window.act_shortcuts.trigger()
    dialog = window.shortcuts_dialog
    assert dialog.isVisible()
    table = dialog.table
    rows = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount())}
    assert "Ctrl+R" in rows["Run"] and "F5" in rows["Run"]
    assert "Ctrl+M" in rows["Models"]
    dialog.close()

    window.act_about.trigger()
    about = window.about_dialog
    assert about.isVisible()
    text = about.label.text()
    assert engine.__version__ in text
    assert str(settings_path) in text
    assert about.facts["Jobs"].endswith("jobs.sqlite")
    for name in ("Python", "Qt", "torch", "onnxruntime", "Licence", "Model cache"):
        assert about.facts[name]
    assert about.facts["Licence"] == "Apache-2.0"
    if not torch_loaded:
        assert "torch" not in sys.modules, "About imported torch"
    about.close()
