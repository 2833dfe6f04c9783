"""The model catalog: browse curated models and the hub, download, resume, delete.

Downloads run through desktop.workers (engine.hub.fetch with a CancelToken);
their byte progress reaches the table in coalesced batches. A cancelled download
keeps its partial files, so "Resume" continues where it stopped (huggingface_hub
resumes `.incomplete` blobs with HTTP Range requests).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableView,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop.format import human_bytes
from desktop.views.catalog_model import (
    STATE_COLUMN,
    CatalogModel,
    CatalogRow,
    ProgressDelegate,
)
from desktop.views.error_dialogs import describe, show_error
from desktop.views.model_details import card_markdown, installed_snapshot, read_readme
from desktop.workers import Operation, Pools, call_operation, download_operation
from engine.vocabulary import MODEL_TASKS

TASK_FILTERS = ("", *MODEL_TASKS)


def _scan(catalog: Any, settings: Any) -> list[CatalogRow]:
    """Installed state and disk use of every card (file-system only; off the UI thread)."""
    from engine.hub import disk_usage, is_installed

    rows = []
    for card in catalog:
        try:
            installed = is_installed(card, settings=settings)
            size = disk_usage(card, settings=settings) if installed else 0
        except Exception:  # a broken cache entry must not hide the model
            installed, size = False, 0
        rows.append(CatalogRow(card, installed=installed, disk_bytes=size))
    return rows


class CatalogView(QWidget):
    modelChosen = Signal(object)  # ModelCard the user wants to use now
    installedChanged = Signal()  # a download finished or a model was deleted

    def __init__(self, *, settings: Callable[[], Any], pools: Pools,
                 on_download: Callable[[Operation], None] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("catalogView")
        self.setWindowTitle(self.tr("Ocula — models"))
        self._settings = settings
        self.pools = pools
        self.on_download = on_download
        self.catalog: Any = None
        self.all_rows: list[CatalogRow] = []
        self.downloads: dict[str, Operation] = {}
        self.hub_hits: list[CatalogRow] = []
        self.mode = "catalog"  # catalog | hub
        self._failure_dialog: Any = None  # the one "Download failed" dialog shown at a time
        self._failed_since_dialog: list[str] = []

        self.search = QLineEdit()
        self.search.setObjectName("catalogSearch")
        self.search.setPlaceholderText(self.tr("Search models: name, architecture, paper…"))
        self.search.setClearButtonEnabled(True)
        self.task = QComboBox()
        self.task.setObjectName("catalogTask")
        for key in TASK_FILTERS:
            self.task.addItem(self.tr("All tasks") if not key else self.tr(key.capitalize()), key)
        self.installed_only = QCheckBox(self.tr("Installed only"))
        self.hub_button = QPushButton(self.tr("Search the hub"))
        self.hub_button.setObjectName("hubSearchButton")
        self.hub_button.setCheckable(True)
        self.offline_badge = QLabel(self.tr("OFFLINE"))
        self.offline_badge.setObjectName("offlineBadge")
        self.offline_badge.setToolTip(self.tr("Offline mode: only downloaded models can be used. "
                                              "Turn it off in Settings."))
        top = QHBoxLayout()
        top.addWidget(self.search, 3)
        top.addWidget(self.task)
        top.addWidget(self.installed_only)
        top.addWidget(self.hub_button)
        top.addWidget(self.offline_badge)

        self.model = CatalogModel(self)
        self.table = QTableView()
        self.table.setObjectName("catalogTable")
        self.table.setModel(self.model)
        self.table.setItemDelegate(ProgressDelegate(self.table))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.table.setColumnWidth(0, 250)
        header.setSectionResizeMode(STATE_COLUMN, QHeaderView.ResizeMode.Interactive)
        self.table.setColumnWidth(STATE_COLUMN, 130)  # room for the progress bar
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.doubleClicked.connect(lambda _: self.use_selected())
        self.table.selectionModel().selectionChanged.connect(self._on_selection)

        self.details = QTextBrowser()
        self.details.setObjectName("modelDetails")
        self.details.setOpenExternalLinks(True)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(self.details)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([760, 380])

        self.download_button = QPushButton(self.tr("Download"))
        self.download_button.setObjectName("downloadButton")
        self.cancel_button = QPushButton(self.tr("Cancel download"))
        self.cancel_button.setObjectName("cancelDownloadButton")
        self.delete_button = QPushButton(self.tr("Delete"))
        self.delete_button.setObjectName("deleteButton")
        self.import_button = QPushButton(self.tr("Import a local model"))
        self.import_button.setObjectName("importButton")
        # a file or a folder, chosen first: each opens its own dialog (never one after another)
        import_menu = QMenu(self.import_button)
        self.import_file_action = import_menu.addAction(self.tr("Model file… (.onnx, "
                                                                ".safetensors, .pth)"))
        self.import_file_action.setObjectName("importFileAction")
        self.import_folder_action = import_menu.addAction(self.tr("Model folder… (config.json "
                                                                  "+ weights)"))
        self.import_folder_action.setObjectName("importFolderAction")
        self.import_button.setMenu(import_menu)
        self.use_button = QPushButton(self.tr("Use this model"))
        self.use_button.setObjectName("useModelButton")
        self.use_button.setDefault(True)
        self.disk_label = QLabel()
        self.disk_label.setObjectName("diskUsage")
        self.status = QLabel()
        self.status.setObjectName("catalogStatus")
        self.status.setWordWrap(True)
        bottom = QHBoxLayout()
        bottom.addWidget(self.disk_label, 1)
        for button in (self.import_button, self.delete_button, self.cancel_button,
                       self.download_button, self.use_button):
            bottom.addWidget(button)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.status)
        layout.addLayout(bottom)

        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(200)  # type-ahead: filter after a short pause
        self._filter_timer.timeout.connect(self.apply_filter)
        self.search.textChanged.connect(lambda _: self._filter_timer.start())
        self.search.returnPressed.connect(self._on_return)
        self.task.currentIndexChanged.connect(lambda _: self.apply_filter())
        self.installed_only.toggled.connect(lambda _: self.apply_filter())
        self.hub_button.toggled.connect(self._on_hub_toggled)
        self.download_button.clicked.connect(self.download_selected)
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self.import_file_action.triggered.connect(self.import_file_dialog)
        self.import_folder_action.triggered.connect(self.import_folder_dialog)
        self.use_button.clicked.connect(self.use_selected)
        self.resize(1100, 640)
        self.reload()

    # -- loading -------------------------------------------------------------------------------
    @property
    def settings(self) -> Any:
        return self._settings()

    def reload(self) -> None:
        """Read the catalog, then scan the cache off the UI thread."""
        from engine.catalog.catalog import load_catalog

        try:
            self.catalog = load_catalog(strict=False)
        except Exception as exc:  # noqa: BLE001 — the view must still open
            self.catalog = None
            self.status.setText(describe(exc))
            self.all_rows = []
            self.apply_filter()
            return
        problems = getattr(self.catalog, "problems", [])
        if problems:
            self.status.setText(self.tr("{} catalog entries could not be used: {}").format(
                len(problems), "; ".join(str(p) for p in problems[:3])))
        self.all_rows = [CatalogRow(card) for card in self.catalog]
        self.apply_filter()
        op = call_operation(_scan, self.catalog, self.settings, label="scan cache", parent=self)
        op.succeeded.connect(self._on_scanned)
        op.start(self.pools.calls)
        self._scan_op = op
        self._update_offline()

    def _on_scanned(self, rows: list[CatalogRow]) -> None:
        by_id = {r.card.id: r for r in rows}
        for row in self.all_rows:
            scanned = by_id.get(row.card.id)
            if scanned is not None and row.state != "downloading":
                row.installed, row.disk_bytes = scanned.installed, scanned.disk_bytes
        self.apply_filter()
        self._update_disk_label()

    @property
    def offline(self) -> bool:
        return bool(getattr(self.settings, "effective_offline", False))

    def _update_offline(self) -> None:
        self.offline_badge.setVisible(self.offline)
        self._update_buttons()

    def _update_disk_label(self) -> None:
        # what the model cache holds: package-shipped weights (card.package) live in pip's folders
        cached = [r for r in self.all_rows if r.installed and not getattr(r.card, "package", None)]
        total = sum(r.disk_bytes for r in cached)
        count = len(cached)
        where = ""
        try:
            from engine.hub import cache_dir

            where = str(cache_dir(self.settings))
        except Exception:  # noqa: BLE001
            pass
        text = self.tr("1 model installed") if count == 1 else \
            self.tr("{} models installed").format(count)
        self.disk_label.setText(self.tr("{}, {} in {}").format(text, human_bytes(total), where))

    # -- filtering ----------------------------------------------------------------------------
    def apply_filter(self) -> None:
        if self.mode == "hub":
            if self.model.rows is not self.hub_hits:
                self.model.set_rows(self.hub_hits)
            self._update_buttons()
            return
        selected = self.selected_row()
        selected_id = selected.card.id if selected and selected.card else None
        rows = self.all_rows
        text = self.search.text().strip()
        if text:
            found = self.catalog.search(text) if self.catalog is not None else []
            order = {c.id: i for i, c in enumerate(found)}
            words = text.lower().split()
            for row in rows:  # rows the catalog does not hold (hub look-ups this session)
                card = row.card
                haystack = f"{card.id} {card.name} {card.repo or ''} {card.seed}".lower()
                if card.id not in order and all(w in haystack for w in words):
                    order[card.id] = len(order)
            rows = sorted((r for r in rows if r.card.id in order), key=lambda r: order[r.card.id])
        task = self.task.currentData()
        if task:
            rows = [r for r in rows if r.card.supports(task)]
        if self.installed_only.isChecked():
            rows = [r for r in rows if r.installed]
        self.model.set_rows(list(rows))
        # a reset model drops its selection without a signal: keep the selected row when
        # the filter still shows it, else clear the details pane (never describe a hidden row)
        if not (selected_id and self.select(selected_id)):
            self.details.clear()
        self._update_buttons()

    def select(self, card_id: str) -> bool:
        row = self.model.row_of(card_id)
        if row < 0:
            return False
        self.table.selectionModel().select(
            self.model.index(row, 0),
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows)
        self.table.scrollTo(self.model.index(row, 0))
        return True

    def selected_row(self) -> CatalogRow | None:
        indexes = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not indexes:
            return None
        return self.model.rows[indexes[0].row()] if indexes[0].row() < len(self.model.rows) \
            else None

    def _on_selection(self, *_: Any) -> None:
        row = self.selected_row()
        self._update_buttons()
        if row is None:
            self.details.clear()
            return
        if row.card is None:
            self._lookup_hit(row)
            return
        readme = ""
        if row.installed:
            readme = read_readme(installed_snapshot(row.card, self.settings))
        self.details.setMarkdown(card_markdown(row.card, installed=row.installed,
                                               disk_bytes=row.disk_bytes, readme=readme))

    def _update_buttons(self) -> None:
        row = self.selected_row()
        has_card = row is not None and row.card is not None
        downloading = has_card and row.state == "downloading"
        # imported files are the user's, package-shipped weights are pip's: neither is ours to delete
        local = has_card and bool(row.card.local_path or getattr(row.card, "package", None))
        full_only = has_card and row.needs_full_build  # a PyTorch model on the Lite build
        self.download_button.setEnabled(has_card and not downloading and not row.installed
                                        and not local and not self.offline and not full_only)
        if full_only:
            from engine.catalog.requirements import full_build_message

            self.download_button.setToolTip(full_build_message(row.card))
        else:
            self.download_button.setToolTip(
                self.tr("Offline mode is on (Settings ▸ Models, or HF_HUB_OFFLINE): models "
                        "cannot be downloaded. Installed and imported models still work.")
                if self.offline else self.tr("Download the selected model into the model cache"))
        self.download_button.setText(self.tr("Resume download") if has_card
                                     and row.state == "cancelled" else self.tr("Download"))
        self.cancel_button.setEnabled(bool(downloading))
        # imported models can be removed from the list (their files stay where they are);
        # package-shipped weights are pip's to remove
        package = has_card and bool(getattr(row.card, "package", None))
        self.delete_button.setEnabled(has_card and row.installed and not downloading
                                      and not package)
        self.delete_button.setText(self.tr("Remove import") if has_card and row.card.local_path
                                   else self.tr("Delete"))
        self.use_button.setEnabled(has_card and not downloading and not full_only)

    # -- hub search -----------------------------------------------------------------------------
    def _on_hub_toggled(self, on: bool) -> None:
        self.mode = "hub" if on else "catalog"
        self.installed_only.setEnabled(not on)
        if on:
            self.search_hub()
        else:
            self.apply_filter()

    def _on_return(self) -> None:
        if self.mode == "hub":
            self.search_hub()
        else:
            self.apply_filter()

    def search_hub(self) -> None:
        task = self.task.currentData() or "caption"
        query = self.search.text().strip()
        if getattr(self.settings, "effective_offline", False):
            self.status.setText(self.tr("Offline mode is on: the hub cannot be searched."))
            return
        try:
            from engine.catalog.search import search_hub
        except ImportError:
            self.status.setText(self.tr("Hub search is not available in this version of the "
                                        "engine (engine.catalog.search is missing)."))
            return
        self.status.setText(self.tr("Searching the hub for {} models…").format(task))
        op = call_operation(search_hub, task, query, limit=50, label="hub search", parent=self)
        op.succeeded.connect(self._on_hub_results)
        op.failed.connect(lambda f: self.status.setText(describe(f.exception)))
        op.start(self.pools.calls)
        self._hub_op = op

    def _on_hub_results(self, hits: list[Any]) -> None:
        from engine.catalog.card import ModelCard

        self.hub_hits = [CatalogRow(h) if isinstance(h, ModelCard) else CatalogRow(None, hit=h)
                         for h in hits]
        self.status.setText(self.tr("{} hub models found.").format(len(hits)))
        if self.mode == "hub":
            self.model.set_rows(self.hub_hits)

    def _lookup_hit(self, row: CatalogRow) -> None:
        repo = getattr(row.hit, "ref", None) or getattr(row.hit, "repo_id", str(row.hit))
        self.details.setMarkdown(f"# {repo}\n\n*Reading the model's metadata from the hub…*")
        if self.catalog is None:
            return
        op = call_operation(self.catalog.resolve, repo, label=f"look up {repo}", parent=self)
        op.succeeded.connect(lambda card, r=row: self._on_hit_card(r, card))
        op.failed.connect(lambda f: self.details.setMarkdown(
            f"# {repo}\n\n{describe(f.exception)}"))
        op.start(self.pools.calls)

    def _on_hit_card(self, row: CatalogRow, card: Any) -> None:
        from engine.hub import is_installed

        row.card = card
        row.installed = is_installed(card, settings=self.settings)
        index = self.model.rows.index(row) if row in self.model.rows else -1
        self.model.refresh_row(index)
        if self.selected_row() is row:
            self._on_selection()

    # -- download, cancel, delete -----------------------------------------------------------------
    def download_selected(self) -> Operation | None:
        row = self.selected_row()
        if row is None or row.card is None:
            return None
        return self.download(row)

    def download(self, row: CatalogRow) -> Operation | None:
        card = row.card
        if self.offline:  # say it once here, instead of one failed download per model
            self.status.setText(self.tr("Offline mode is on: {} cannot be downloaded. Turn "
                                        "offline mode off in Settings (and unset "
                                        "HF_HUB_OFFLINE).").format(card.name))
            return None
        existing = self.downloads.get(card.id)
        if existing is not None and existing.running:
            return existing
        op = download_operation(card, settings=self.settings, parent=self)
        row.state, row.done, row.total, row.message = "downloading", 0.0, card.download_bytes, ""
        op.events.connect(lambda batch, r=row: self._on_progress(r, batch))
        op.done.connect(lambda r=row, o=op: self._on_download_done(r, o))
        self.downloads[card.id] = op
        if self.on_download is not None:
            self.on_download(op)
        op.start(self.pools.downloads)
        self._refresh(row)
        self._update_buttons()
        return op

    def _on_progress(self, row: CatalogRow, batch: list[Any]) -> None:
        for event in reversed(batch):
            # the tracker reports each file and the whole download (item ""); show the whole
            if getattr(event, "unit", "") == "bytes" and not getattr(event, "item", ""):
                row.done = float(event.done)
                if event.total:
                    row.total = float(event.total)
                break
        self._refresh(row)

    def _on_download_done(self, row: CatalogRow, op: Operation) -> None:
        if op.outcome == "succeeded":
            from engine.hub import disk_usage

            row.state, row.installed = "", True
            row.disk_bytes = disk_usage(row.card, settings=self.settings)
            self.status.setText(self.tr("{} is ready.").format(row.card.name))
            self.installedChanged.emit()
        elif op.outcome == "cancelled":
            row.state = "cancelled"
            self.status.setText(self.tr("Download of {} paused; press Resume download to "
                                        "continue.").format(row.card.name))
        else:
            row.state = "failed"
            row.message = op.failure.message if op.failure else ""
            self.status.setText(row.message)
            self._show_failure(row, op)
        self._refresh(row)
        self._update_buttons()
        self._update_disk_label()
        if self.selected_row() is row:
            self._on_selection()

    def _show_failure(self, row: CatalogRow, op: Operation) -> None:
        """One "Download failed" dialog at a time: later failures while it is open go in
        the status line (and each row's tooltip), not in a stack of dialogs."""
        if self._failure_dialog is not None:
            self._failed_since_dialog.append(row.card.name)
            self.status.setText(self.tr("{} more downloads failed: {}. Hover a row's "
                                        "Installed cell for its reason.").format(
                len(self._failed_since_dialog), ", ".join(self._failed_since_dialog)))
            return
        dialog = show_error(self, op.failure.exception, op.failure.details,
                            title=self.tr("Download failed"))
        self._failure_dialog = dialog
        self._failed_since_dialog = []
        dialog.finished.connect(lambda _: setattr(self, "_failure_dialog", None))

    def cancel_selected(self) -> None:
        row = self.selected_row()
        if row is not None and row.card is not None:
            op = self.downloads.get(row.card.id)
            if op is not None:
                op.cancel()

    def confirm(self, title: str, text: str) -> bool:
        """Ask before anything is deleted (tests replace QMessageBox.question)."""
        answer = QMessageBox.question(self, title, text, QMessageBox.StandardButton.Yes
                                      | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def delete_selected(self) -> int:
        row = self.selected_row()
        if row is None or row.card is None or not row.installed:
            return 0
        card = row.card
        if card.local_path:
            return self._remove_import(row)
        if not self.confirm(self.tr("Delete model"), self.tr(
                "Delete {} ({}) from the model cache?\nYou can download it again later.").format(
                card.name, human_bytes(row.disk_bytes))):
            return 0
        from engine.hub import delete

        try:
            freed = delete(card, settings=self.settings)
        except Exception as exc:  # noqa: BLE001
            show_error(self, exc, title=self.tr("Could not delete"))
            return 0
        row.installed, row.disk_bytes, row.state = False, 0, ""
        self.status.setText(self.tr("{} deleted, {} freed.").format(card.name,
                                                                     human_bytes(freed)))
        self._refresh(row)
        self._update_buttons()
        self._update_disk_label()
        self.installedChanged.emit()
        self._on_selection()
        return freed

    def _remove_import(self, row: CatalogRow) -> int:
        """An imported model: forget it (its files on disk are the user's and stay)."""
        card = row.card
        if not self.confirm(self.tr("Remove imported model"), self.tr(
                "Remove {} from Ocula's models?\nIts files stay in {}.").format(
                card.name, card.local_path)):
            return 0
        from engine.catalog.local_import import remove_import

        try:
            remove_import(card.id)
        except Exception as exc:  # noqa: BLE001
            show_error(self, exc, title=self.tr("Could not remove"))
            return 0
        self.status.setText(self.tr("{} removed; its files were left in place.").format(
            card.name))
        self.reload()
        self.installedChanged.emit()
        return 0

    def _refresh(self, row: CatalogRow) -> None:
        if row in self.model.rows:
            self.model.refresh_row(self.model.rows.index(row))

    def import_file_dialog(self) -> Any:
        path, _ = QFileDialog.getOpenFileName(
            self, self.tr("Import a model file"), "",
            self.tr("Models (*.onnx *.safetensors *.pth *.pt *.ckpt *.bin);;All files (*)"))
        return self._import_chosen(path)

    def import_folder_dialog(self) -> Any:
        path = QFileDialog.getExistingDirectory(self, self.tr("Import a model folder"))
        return self._import_chosen(path)

    def _import_chosen(self, path: str) -> Any:
        if not path:
            return None
        task, ok = QInputDialog.getItem(self, self.tr("Task"), self.tr("What does it do?"),
                                        ["(detect automatically)", *TASK_FILTERS[1:]], 0, False)
        if not ok:
            return None
        return self.import_path(path, None if task.startswith("(") else task)

    def import_path(self, path: str | Path, task: str | None = None) -> Any:
        from engine.catalog.local_import import import_model

        try:
            card = import_model(path, task=task)
        except Exception as exc:  # noqa: BLE001
            show_error(self, exc, title=self.tr("Could not import"))
            return None
        self.reload()
        self.select(card.id)
        self.installedChanged.emit()
        return card

    def use_selected(self) -> None:
        row = self.selected_row()
        if row is not None and row.card is not None:
            self.modelChosen.emit(row.card)

    def shutdown(self) -> None:
        for op in self.downloads.values():
            if op.running:
                op.cancel()
