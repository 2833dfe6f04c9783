"""First run: what Ocula does, where models go, and one small model per task to start."""
from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from desktop.format import human_bytes, human_params
from engine.vocabulary import JOB_TASKS

STARTER_TASKS = tuple(t for t in JOB_TASKS if t != "explain")  # a model per task


def starter_models(catalog: Any) -> dict[str, Any]:
    """The smallest downloadable, commercially usable (else any) model for each task that
    runs on this install (the Lite build: ONNX entries only)."""
    from engine.catalog.requirements import needs_full_build

    picks: dict[str, Any] = {}
    for task in STARTER_TASKS:
        cards = [c for c in catalog.list(task=task) if c.repo and not c.gated
                 and not c.trust_remote_code and not needs_full_build(c)]
        if not cards:
            continue
        cards.sort(key=lambda c: (c.commercial_use is not True,
                                  c.download_bytes or 1 << 62))
        picks[task] = cards[0]
    return picks


class WelcomeDialog(QDialog):
    def __init__(self, catalog: Any, *, cache_dir: str = "",
                 start_download: Callable[[Any], None] | None = None,
                 offline: bool = False, use_bundled: Callable[[], Any] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("welcomeDialog")
        self.setWindowTitle(self.tr("Welcome to Ocula"))
        self.start_download = start_download
        self.offline = offline
        self.use_bundled = use_bundled
        self.picks = starter_models(catalog) if catalog is not None else {}
        intro = QLabel(self.tr(
            "<h2>Vision models on your own computer</h2>"
            "<p>Ocula captions, detects, segments and restores images, and shows what a "
            "model looks at. Everything runs here; nothing is uploaded.</p>"
            "<p>Models are downloaded once from the Hugging Face hub and kept in "
            "<code>{}</code>. You can see their size before downloading and delete them "
            "any time in <b>Models</b>. Downloads can be paused and resumed.</p>"
            "<p>To start, pick a small model for each task:</p>").format(
                cache_dir or self.tr("the Hugging Face cache")))
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)
        grid = QGridLayout()
        self.checks: dict[str, QCheckBox] = {}
        for row, (task, card) in enumerate(self.picks.items()):
            check = QCheckBox(f"{task.capitalize()}: {card.name}")
            check.setObjectName(f"starter_{task}")
            check.setChecked(True)
            check.toggled.connect(self._update_total)
            self.checks[task] = check
            detail = QLabel(f"{human_bytes(card.download_bytes)} · {human_params(card.params)} "
                            f"parameters · {card.license}")
            detail.setObjectName("starterDetail")
            grid.addWidget(check, row, 0)
            grid.addWidget(detail, row, 1)
        if not self.picks:
            grid.addWidget(QLabel(self.tr("No catalog models are available.")), 0, 0)
        self.total = QLabel()
        self.total.setObjectName("starterTotal")
        buttons = QDialogButtonBox()
        self.download_button = buttons.addButton(self.tr("Download selected"),
                                                 QDialogButtonBox.ButtonRole.AcceptRole)
        # the bundled tiny models need no download: the way to start offline
        self.bundled_button = buttons.addButton(self.tr("Use bundled test models"),
                                                QDialogButtonBox.ButtonRole.ActionRole)
        self.bundled_button.setObjectName("useBundledButton")
        self.bundled_button.setToolTip(self.tr(
            "Tiny models that ship with Ocula (random weights): every task runs at once, "
            "offline, to try the app. Their results are not meaningful."))
        self.bundled_button.setVisible(use_bundled is not None)
        self.bundled_button.clicked.connect(self.accept_bundled)
        buttons.addButton(self.tr("Not now"), QDialogButtonBox.ButtonRole.RejectRole)
        buttons.accepted.connect(self.accept_downloads)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(grid)
        layout.addWidget(self.total)
        layout.addWidget(buttons)
        self._update_total()
        self.setMinimumWidth(560)

    def selected(self) -> list[Any]:
        return [self.picks[t] for t, check in self.checks.items() if check.isChecked()]

    def _update_total(self) -> None:
        cards = self.selected()
        size = sum(c.download_bytes or 0 for c in cards)
        self.total.setText(self.tr("Total download: {} for {} models.").format(
            human_bytes(size), len(cards)))
        # offline: downloading cannot work, so the button says why instead of failing later
        self.download_button.setEnabled(bool(cards) and not self.offline)
        self.download_button.setToolTip(self.tr(
            "Offline mode is on (Settings ▸ Models, or HF_HUB_OFFLINE): nothing can be "
            "downloaded. Use the bundled test models, or import a model in Models.")
            if self.offline else "")
        if self.offline:
            self.total.setText(self.tr("Offline: downloads are off. The bundled test models "
                                       "work without a network."))

    def accept_bundled(self) -> None:
        if self.use_bundled is not None:
            self.use_bundled()
        self.accept()

    def accept_downloads(self) -> None:
        if self.offline:
            return
        if self.start_download is not None:
            for card in self.selected():
                self.start_download(card)
        self.accept()
