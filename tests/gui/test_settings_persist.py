"""Settings survive a restart: window layout and last-used task settings (QSettings),
engine settings (TOML shared with the CLI), the hub token (the CLI's login: one store)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QLabel

from desktop.main_window import MainWindow
from engine.hub import auth
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


@pytest.fixture
def token_files(tmp_path, monkeypatch):
    """huggingface_hub's token files in this test's folder, not the session's HF_HOME."""
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH",
                        str(tmp_path / "hf" / "stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path / "hf" / "token"


def _settings_view(qtbot, qsettings, settings_path):
    from desktop.views.settings import SettingsDialog

    dialog = SettingsDialog(Settings.load(settings_path), qsettings, settings_path=settings_path)
    qtbot.addWidget(dialog)
    dialog.open()
    return dialog


def _save_token_in_settings(qtbot, qsettings, settings_path, token: str):
    dialog = _settings_view(qtbot, qsettings, settings_path)
    dialog.token.setText(token)
    dialog.save_and_close()
    qtbot.waitUntil(lambda: dialog.login_op is None, timeout=20_000)
    return dialog


def test_token_saved_in_settings_is_the_clis_login_and_back(qtbot, tmp_path, qsettings,
                                                           settings_path, hub, token_files):
    """One store: the settings view saves where `ocula models login` saves, reads what it
    wrote, and the engine's downloads send it."""
    from engine import cli
    from tests.fixtures.repos import write_files

    hub.add_token("hf_from_the_gui", user="alice")
    hub.add_token("hf_from_the_cli", user="bob")
    hub.add_repo("org/gated-tiny", write_files(tmp_path / "repo", {"config.json": "{}"}),
                 gated=True, token="hf_only_for_this_repo")
    views = (qtbot, qsettings, settings_path)

    # GUI -> store: checked with the hub off the UI thread, then saved and the dialog closes
    dialog = _save_token_in_settings(*views, "hf_from_the_gui")
    assert dialog.result() == dialog.DialogCode.Accepted
    assert "alice" in dialog.token_status.text()
    assert auth.saved_token() == auth.stored_token() == "hf_from_the_gui"
    assert token_files.read_text().strip() == "hf_from_the_gui"
    assert stat.S_IMODE(token_files.stat().st_mode) & 0o077 == 0  # only the user reads it
    assert "HF_TOKEN" not in os.environ  # the file is the store, not this process's env
    from engine.hub import fetch_repo

    assert (fetch_repo("org/gated-tiny") / "config.json").is_file()  # sent by the engine
    assert hub.requests("*/resolve/*")[-1].token == "hf_from_the_gui"

    # CLI -> store -> GUI: `ocula models login` replaces it, the settings view shows that one
    assert cli.main(["models", "login", "hf_from_the_cli"]) == 0
    assert auth.saved_token() == "hf_from_the_cli"
    again = _settings_view(*views)
    assert again.token.text() == "hf_from_the_cli"
    assert str(token_files) in again.findChild(QLabel, "tokenNote").text()
    again.reject()

    # a token the hub refuses is not saved, and the dialog stays open with the reason
    refused = _save_token_in_settings(*views, "hf_not_a_token")
    assert refused.isVisible() and "rejected" in refused.token_status.text()
    assert auth.saved_token() == "hf_from_the_cli"
    refused.reject()

    # an emptied field logs out: the CLI's login is gone too
    _save_token_in_settings(*views, "")
    assert auth.saved_token() is None and not token_files.exists()


def test_a_token_of_the_old_desktop_store_moves_to_the_hub_store_once(tmp_path, monkeypatch,
                                                                       token_files):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    legacy = auth.legacy_token_file()
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text("hf_old_gui_token", encoding="utf-8")
    assert auth.migrate_legacy_token()
    assert auth.saved_token() == "hf_old_gui_token" and not legacy.exists()
    assert stat.S_IMODE(token_files.stat().st_mode) == 0o600
    legacy.write_text("hf_written_again", encoding="utf-8")  # by an old copy of the app
    assert not auth.migrate_legacy_token()  # once: the marker says it was done
    assert auth.saved_token() == "hf_old_gui_token"


def test_a_saved_login_wins_over_the_old_desktop_token(tmp_path, monkeypatch, token_files):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    token_files.parent.mkdir(parents=True, exist_ok=True)
    token_files.write_text("hf_cli_login", encoding="utf-8")
    legacy = auth.legacy_token_file()
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text("hf_old_gui_token", encoding="utf-8")
    assert not auth.migrate_legacy_token()
    assert auth.saved_token() == "hf_cli_login" and not legacy.exists()


@pytest.mark.parametrize("saved", [None, "caption", "restore"])
def test_settings_panel_matches_the_task_picker_at_start(qtbot, tmp_path, settings_path, saved):
    ini = tmp_path / "ui.ini"
    if saved is not None:
        QSettings(str(ini), QSettings.Format.IniFormat).setValue("ui/task", saved)
    window = _window(qtbot, ini, settings_path)
    task = window.task_combo.currentData()
    assert window.task_panel.stack.currentWidget() is window.task_panel.forms[task]


def test_ray_settings_of_run_on_reach_the_job_and_persist(qtbot, tmp_path, settings_path):
    """Issue 17: the app's job options take the CLI's Ray choices (--address, --workers,
    --gpus-per-worker), shown only for Ray, kept across a restart."""
    from engine.jobs.spec import ExecutorChoice

    ini = tmp_path / "ui.ini"
    first = _window(qtbot, ini, settings_path)
    first.show()
    qtbot.waitExposed(first)
    panel = first.task_panel
    assert not panel.ray_box.isVisibleTo(panel)
    assert panel.executor_choice() == ExecutorChoice()
    panel.executor.setCurrentText("ray")
    assert panel.ray_box.isVisibleTo(panel)
    assert panel.executor_choice() == ExecutorChoice(name="ray")  # a local Ray runtime
    panel.ray_address.setText("  ray://head:10001 ")
    panel.ray_workers.setValue(3)
    panel.ray_gpus.setChecked(True)
    wanted = ExecutorChoice(name="ray", address="ray://head:10001", workers=3,
                            gpus_per_worker=1.0)
    assert panel.executor_choice() == wanted
    assert panel.executor_choice("local") == ExecutorChoice()  # the Resume menu's choice
    first.close()

    second = _window(qtbot, ini, settings_path)
    second.show()
    qtbot.waitExposed(second)
    assert second.task_panel.executor_choice() == wanted
    assert second.task_panel.ray_box.isVisibleTo(second.task_panel)
