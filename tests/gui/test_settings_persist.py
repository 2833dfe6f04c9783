"""Settings survive a restart: window layout and last-used task settings (QSettings),
engine settings (TOML shared with the CLI), the hub token (keyring or a 0600 file)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings

from desktop import token_store
from desktop.main_window import MainWindow
from engine.settings import Settings


def _window(qtbot, ini: Path, settings_path: Path) -> MainWindow:
    qs = QSettings(str(ini), QSettings.Format.IniFormat)
    qs.setValue("ui/welcomed", True)
    window = MainWindow(qsettings=qs, settings_path=settings_path)
    qtbot.addWidget(window)
    return window


def test_layout_and_task_settings_persist_across_restart(qtbot, tmp_path, settings_path):
    ini = tmp_path / "ui.ini"
    first = _window(qtbot, ini, settings_path)
    first.show()
    qtbot.waitExposed(first)
    first.resize(720, 560)  # inside the offscreen screen (800×600)
    size = (first.width(), first.height())
    assert size[0] == 720
    first.task_combo.setCurrentIndex(first.task_combo.findData("segment"))
    seg = first.task_panel.segment_form
    seg.threshold.setValue(0.35)
    panel = first.task_panel
    panel.device.setCurrentText("cpu")
    panel.precision.setCurrentText("fp32")
    panel.output_dir.setText(str(tmp_path / "results"))
    panel.forms["detect"].classes.setText("cat, remote control")
    first.queue_dock.hide()
    first.viewer.set_overlay_visible("masks", False)
    first.close()

    second = _window(qtbot, ini, settings_path)
    second.show()
    qtbot.waitExposed(second)
    assert second.task == "segment"
    assert second.task_panel.segment_form.threshold.value() == pytest.approx(0.35)
    assert second.task_panel.device.currentText() == "cpu"
    assert second.task_panel.precision.currentText() == "fp32"
    assert second.task_panel.output_dir.text() == str(tmp_path / "results")
    assert second.task_panel.forms["detect"].classes.text() == "cat, remote control"
    assert (second.width(), second.height()) == size
    assert not second.queue_dock.isVisible() and second.side_dock.isVisible()
    second.close()


def test_settings_dialog_writes_engine_settings_and_theme(qtbot, tmp_path, settings_path):
    ini = tmp_path / "ui.ini"
    window = _window(qtbot, ini, settings_path)
    dialog = window.open_settings()
    dialog.offline.setChecked(True)
    dialog.device.setCurrentText("cpu")
    dialog.cache_dir.setText(str(tmp_path / "models"))
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    dialog.grant_repo.setText("owner/custom-model")
    dialog.grant_rev.setText("0123456789abcdef0123456789abcdef01234567")
    dialog._add_grant()
    dialog.save_and_close()

    saved = Settings.load(settings_path)  # what the CLI will read
    assert saved.offline and saved.device == "cpu"
    assert saved.cache_dir == str(tmp_path / "models")
    assert saved.allows_remote_code("owner/custom-model",
                                    "0123456789abcdef0123456789abcdef01234567")
    assert not window.offline_label.isHidden()
    assert QSettings(str(ini), QSettings.Format.IniFormat).value("ui/theme") == "dark"
    window.close()

    again = _window(qtbot, ini, settings_path)
    assert again.settings.offline and not again.offline_label.isHidden()
    again.close()


def test_token_goes_to_a_private_file_without_keyring(tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if token_store._keyring() is not None:
        pytest.skip("an OS keyring is available here; the file fallback is not used")
    where = token_store.save_token("hf_secret_value")
    path = token_store.token_file()
    assert where == str(path) and path.read_text() == "hf_secret_value"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.environ["HF_TOKEN"] == "hf_secret_value"
    monkeypatch.delenv("HF_TOKEN")
    assert token_store.apply_token() and os.environ["HF_TOKEN"] == "hf_secret_value"
    token_store.save_token("")
    assert not path.exists() and "HF_TOKEN" not in os.environ


@pytest.mark.parametrize("saved", [None, "caption", "restore"])
def test_settings_panel_matches_the_task_picker_at_start(qtbot, tmp_path, settings_path, saved):
    ini = tmp_path / "ui.ini"
    if saved is not None:
        QSettings(str(ini), QSettings.Format.IniFormat).setValue("ui/task", saved)
    window = _window(qtbot, ini, settings_path)
    task = window.task_combo.currentData()
    assert window.task_panel.stack.currentWidget() is window.task_panel.forms[task]
