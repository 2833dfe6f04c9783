"""Settings: engine choices (shared with the CLI) and UI choices (QSettings).

Engine settings (device, precision, cache folder, offline mode, remote-code
allow-list) are `engine.settings.Settings`, saved as TOML so `ocula` on the
command line sees the same values. The theme and window layout live in QSettings.
The hub token is the CLI's: engine.hub.auth stores it where huggingface_hub keeps it
(what `ocula models login` writes); a new token is checked with the hub off the UI
thread before it is saved.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop.theme import THEMES
from desktop.workers import Operation, call_operation
from engine.hub import auth
from engine.settings import RemoteCodeGrant, Settings
from engine.vocabulary import DEVICE_CHOICES, PRECISION_CHOICES


def env_offline() -> bool:
    """HF_HUB_OFFLINE is set to a true value (engine.settings reads it the same way)."""
    return Settings(offline=False).effective_offline


class SettingsDialog(QDialog):
    applied = Signal(object)  # the saved engine Settings

    def __init__(self, settings: Settings, qsettings: QSettings, *,
                 settings_path: Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Ocula settings"))
        self.setObjectName("settingsDialog")
        self.settings = copy.deepcopy(settings)
        self.qsettings = qsettings
        self.settings_path = settings_path
        self.login_op: Operation | None = None  # the hub check of a new token, while it runs
        tabs = QTabWidget()
        tabs.addTab(self._general_tab(), self.tr("General"))
        tabs.addTab(self._models_tab(), self.tr("Models and downloads"))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save_and_close)
        buttons.rejected.connect(self.reject)
        self.buttons = buttons
        layout = QVBoxLayout(self)
        layout.addWidget(tabs)
        layout.addWidget(buttons)
        self.resize(560, 460)

    # -- tabs ------------------------------------------------------------------------------------
    def _general_tab(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.theme = QComboBox()
        self.theme.setObjectName("themeCombo")
        labels = {"system": self.tr("Follow the system"), "light": self.tr("Light"),
                  "dark": self.tr("Dark")}
        for name in THEMES:
            self.theme.addItem(labels[name], name)
        self.theme.setCurrentIndex(max(0, self.theme.findData(
            self.qsettings.value("ui/theme", "system"))))
        self.device = QComboBox()
        self.device.setObjectName("defaultDevice")
        self.device.addItems(DEVICE_CHOICES)
        self.device.setEditable(True)  # cuda:1 etc.
        self.device.setCurrentText(self.settings.device)
        self.precision = QComboBox()
        self.precision.setObjectName("defaultPrecision")
        self.precision.addItems(PRECISION_CHOICES)
        self.precision.setCurrentText(self.settings.precision)
        self.runner_cache = QSpinBox()
        self.runner_cache.setRange(0, 1 << 20)
        self.runner_cache.setSuffix(" MB")
        self.runner_cache.setValue(self.settings.runner_cache_mb)
        self.pixel_limit = QSpinBox()
        self.pixel_limit.setRange(1, 2_000_000_000)
        self.pixel_limit.setValue(min(self.settings.pixel_limit, 2_000_000_000))
        self.pixel_limit.setSuffix(self.tr(" pixels"))
        form.addRow(self.tr("Theme"), self.theme)
        form.addRow(self.tr("Default device"), self.device)
        form.addRow(self.tr("Default precision"), self.precision)
        form.addRow(self.tr("Keep loaded models up to"), self.runner_cache)
        form.addRow(self.tr("Largest image accepted"), self.pixel_limit)
        return page

    def _models_tab(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.cache_dir = QLineEdit(self.settings.cache_dir)
        self.cache_dir.setObjectName("cacheDir")
        self.cache_dir.setPlaceholderText(self.tr("the Hugging Face cache (HF_HOME)"))
        browse = QPushButton(self.tr("Browse…"))
        browse.clicked.connect(self._browse_cache)
        row = QHBoxLayout()
        row.addWidget(self.cache_dir, 1)
        row.addWidget(browse)
        self.offline = QCheckBox(self.tr("Offline: never contact the hub, use downloaded "
                                         "models only"))
        self.offline.setObjectName("offlineCheck")
        self.offline.setChecked(self.settings.offline)
        # HF_HUB_OFFLINE set in the environment wins over the setting: show it on and locked
        self.offline_note = QLabel()
        self.offline_note.setObjectName("offlineNote")
        self.offline_note.setWordWrap(True)
        if env_offline():
            self.offline.setChecked(True)
            self.offline.setEnabled(False)
            self.offline_note.setText(self.tr(
                "Offline because HF_HUB_OFFLINE={} is set in the environment; unset it and "
                "restart Ocula to go online.").format(os.environ.get("HF_HUB_OFFLINE", "")))
        self.offline_note.setVisible(env_offline())
        self.token = QLineEdit(auth.saved_token() or "")
        self.token.setObjectName("hfToken")
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText(self.tr("hf_… (only needed for gated models)"))
        token_note = QLabel(self.tr("Saved in {} — the same login as `ocula models login`.")
                            .format(auth.describe_token_store()))
        token_note.setWordWrap(True)
        token_note.setObjectName("tokenNote")
        self.token_status = QLabel()
        self.token_status.setWordWrap(True)
        self.token_status.setObjectName("tokenStatus")
        self.token_status.setVisible(False)

        self.grants = QListWidget()
        self.grants.setObjectName("remoteCodeList")
        for grant in self.settings.allowed_remote_code:
            self.grants.addItem(f"{grant.repo} @ {grant.revision}")
        self.grant_repo = QLineEdit()
        self.grant_repo.setPlaceholderText(self.tr("owner/name"))
        self.grant_rev = QLineEdit()
        self.grant_rev.setPlaceholderText(self.tr("revision (commit sha)"))
        add = QPushButton(self.tr("Allow"))
        add.clicked.connect(self._add_grant)
        remove = QPushButton(self.tr("Remove"))
        remove.clicked.connect(self._remove_grant)
        grant_row = QHBoxLayout()
        grant_row.addWidget(self.grant_repo, 2)
        grant_row.addWidget(self.grant_rev, 2)
        grant_row.addWidget(add)
        grant_row.addWidget(remove)
        warn = QLabel(self.tr("Models listed here may run Python code from their repository. "
                              "Allow only exact revisions of authors you trust."))
        warn.setWordWrap(True)
        form.addRow(self.tr("Model cache"), row)
        form.addRow(self.offline)
        form.addRow(self.offline_note)
        form.addRow(self.tr("Hub token"), self.token)
        form.addRow(token_note)
        form.addRow(self.token_status)
        form.addRow(self.tr("Allowed remote code"), self.grants)
        form.addRow(grant_row)
        form.addRow(warn)
        return page

    def _browse_cache(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.tr("Model cache folder"))
        if folder:
            self.cache_dir.setText(folder)

    def _add_grant(self) -> None:
        repo, rev = self.grant_repo.text().strip(), self.grant_rev.text().strip()
        if not repo or "/" not in repo or not rev:
            self.grant_repo.setFocus()
            return
        self.settings.allowed_remote_code.append(RemoteCodeGrant(repo, rev))
        self.grants.addItem(f"{repo} @ {rev}")
        self.grant_repo.clear()
        self.grant_rev.clear()

    def _remove_grant(self) -> None:
        row = self.grants.currentRow()
        if row >= 0:
            self.grants.takeItem(row)
            del self.settings.allowed_remote_code[row]

    # -- saving ---------------------------------------------------------------------------------
    def collect(self) -> Settings:
        s = self.settings
        s.device = self.device.currentText().strip() or "auto"
        s.precision = self.precision.currentText()
        s.cache_dir = self.cache_dir.text().strip()
        if self.offline.isEnabled():  # locked by HF_HUB_OFFLINE: keep the saved choice
            s.offline = self.offline.isChecked()
        s.runner_cache_mb = self.runner_cache.value()
        s.pixel_limit = self.pixel_limit.value()
        return s

    def save_and_close(self) -> None:
        """Save and close; a changed token is first checked with the hub (off the UI
        thread), and the dialog stays open with the hub's answer if it is refused."""
        if self.login_op is not None:
            return  # a check is under way
        token = self.token.text().strip()
        if token == (auth.saved_token() or ""):
            self._save_and_accept()
        elif not token:
            auth.clear_token()  # deletes two small files
            self._save_and_accept()
        else:
            self._log_in(token)

    def _log_in(self, token: str) -> None:
        self.buttons.setEnabled(False)
        self._show_token_status(self.tr("Checking the token with the hub…"))
        op = call_operation(auth.save_token, token, label="hub login")
        op.succeeded.connect(self._on_logged_in)
        op.failed.connect(self._on_login_failed)
        self.login_op = op
        op.start()

    def _on_logged_in(self, user: str) -> None:
        self.login_op = None
        self.buttons.setEnabled(True)
        self._show_token_status(self.tr("Logged in as {}.").format(user))
        self._save_and_accept()

    def _on_login_failed(self, failure) -> None:
        self.login_op = None
        self.buttons.setEnabled(True)
        self._show_token_status(failure.message)
        self.token.setFocus()

    def _show_token_status(self, text: str) -> None:
        self.token_status.setText(text)
        self.token_status.setVisible(True)

    def reject(self) -> None:
        if self.login_op is None:  # not while a new token is being saved
            super().reject()

    def _save_and_accept(self) -> None:
        settings = self.collect()
        settings.save(self.settings_path)
        self.qsettings.setValue("ui/theme", self.theme.currentData())
        self.qsettings.sync()
        self.applied.emit(settings)
        self.accept()
