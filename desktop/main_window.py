"""The main window: task and model pickers, workspace, settings + results, job queue.

Wiring only: engine work starts through desktop.workers, views draw what comes back.
torch/transformers are never imported here; they load inside a worker when a
model first runs, so the window opens fast.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QToolBar,
    QWidget,
)

from desktop.theme import apply_theme, icon
from desktop.views.attention import ExplainController, supported_methods
from desktop.views.compare import ExplainCompare
from desktop.views.error_dialogs import describe, show_error
from desktop.views.model_picker import ModelPicker
from desktop.views.queue import QueueView
from desktop.views.results import ResultsPanel
from desktop.views.task_panel import TaskPanel
from engine.vocabulary import TASK_LABELS
from desktop.views.workspace import Workspace
from desktop.workers import (
    Operation,
    PlacementEvent,
    Pools,
    call_operation,
    job_operation,
    resume_operation,
)

RESULT_CACHE = 200  # results kept for browsing a batch (the newest; older ones are on disk)
CARD_TASK = {"explain": None}  # explain works with any model that has attention


class MainWindow(QMainWindow):
    jobFinished = Signal(object)  # the Operation, after its results are drawn

    def __init__(self, *, qsettings: QSettings | None = None, settings_path: Path | None = None,
                 job_store: Any = None, welcome: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("Ocula")
        self.setWindowIcon(icon("ocula"))
        self.qsettings = qsettings or QSettings("Ocula", "Ocula")
        self.settings_path = settings_path
        self.settings = self._load_settings()
        self.job_store = job_store
        self.pools = Pools()
        self.catalog: Any = None
        self.installed: set[str] = set()
        # results are kept per (task, path): switching task shows only that task's results
        self.results: OrderedDict[tuple[str, Path], Any] = OrderedDict()
        self._op_task: dict[int, str] = {}  # id(Operation) -> its task
        # (task, path) -> the job's result record (`<name>.detections.json`): box edits go there
        self.result_records: dict[tuple[str, Path], Path] = {}
        self._unsaved: dict[str, bool] = {}  # temporary output folders of unsaved runs
        self._pending_token: int | None = None  # a caption word clicked under Caption
        self.item_info: dict[Path, dict] = {}
        self.jobs: list[Operation] = []
        self.catalog_view = None
        self.placement_text = ""
        self._welcome = welcome
        self._bundled_offered = False  # bundled models offered once a session when offline

        self.workspace = Workspace(self)
        self.viewer = self.workspace.viewer
        self.setCentralWidget(self.workspace)
        self.task_panel = TaskPanel()
        self.results_panel = ResultsPanel()
        self.explain = ExplainController(self.pools, self)
        self.queue = QueueView()
        self._build_toolbar()
        self._build_docks()
        self._build_menus()
        self._build_status_bar()
        self._connect()
        self.compare = ExplainCompare(self)  # Explain ▸ Compare side by side
        self.restore_state()
        self.load_catalog()

    # -- construction --------------------------------------------------------------------------
    def _load_settings(self) -> Any:
        from engine.settings import Settings

        try:
            return Settings.load(self.settings_path)
        except Exception as exc:  # noqa: BLE001 — a broken settings file must not stop the app
            QTimer.singleShot(0, lambda e=exc: show_error(self, e, title=self.tr("Settings")))
            return Settings()

    def _build_toolbar(self) -> None:
        tb = QToolBar(self.tr("Main"), self)
        tb.setObjectName("mainToolbar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.addToolBar(tb)
        self.task_combo = QComboBox()
        self.task_combo.setObjectName("taskPicker")
        for key, label in TASK_LABELS.items():
            self.task_combo.addItem(self.tr(label), key)
        self.model_picker = ModelPicker()
        self.act_open = self._action("open", self.tr("Open…"), QKeySequence.StandardKey.Open,
                                     self.workspace.open_files_dialog, "open")
        self.act_open_folder = self._action("open_folder", self.tr("Open folder…"),
                                            "Ctrl+Shift+O", self.workspace.open_folder_dialog,
                                            "folder")
        self.act_run = self._action("run", self.tr("Run"), "Ctrl+R", self.run, "run")
        self.act_run.setShortcuts([QKeySequence("Ctrl+R"), QKeySequence("F5")])
        self.act_cancel = self._action("cancel", self.tr("Cancel"), "Esc", self.cancel, "cancel")
        self.act_cancel.setEnabled(False)
        self.act_catalog = self._action("catalog", self.tr("Models"), "Ctrl+M",
                                        self.open_catalog, "catalog")
        self.act_settings = self._action("settings", self.tr("Settings"),
                                         QKeySequence.StandardKey.Preferences,
                                         self.open_settings, "settings")
        self.act_next = self._action("next", self.tr("Next image"), "PgDown", self.workspace.next)
        self.act_next.setShortcuts([QKeySequence("PgDown"), QKeySequence("Ctrl+Right")])
        self.act_prev = self._action("previous", self.tr("Previous image"), "PgUp",
                                     self.workspace.previous)
        self.act_prev.setShortcuts([QKeySequence("PgUp"), QKeySequence("Ctrl+Left")])
        tb.addWidget(QLabel(self.tr(" Task ")))
        tb.addWidget(self.task_combo)
        tb.addWidget(QLabel(self.tr("  Model ")))
        tb.addWidget(self.model_picker)
        tb.addSeparator()
        for action in (self.act_open, self.act_open_folder, self.act_run, self.act_cancel):
            tb.addAction(action)
        tb.addSeparator()
        tb.addAction(self.act_catalog)
        tb.addAction(self.act_settings)
        self.toolbar = tb
        # narrow windows (2x scale): icon-only buttons, not an overflow chevron hiding
        # Cancel, Models and Settings (desktop/views/toolbar_fit.py)
        from desktop.views.toolbar_fit import ToolbarFit

        self.toolbar_fit = ToolbarFit(tb, shrinkable=[self.model_picker], compact_width=200)

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.toolbar_fit.refit(self.width())

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        self.toolbar_fit.refit(self.width())

    def _action(self, name: str, text: str, shortcut: Any, slot: Any,
                icon_name: str | None = None) -> QAction:
        action = QAction(text, self)
        action.setObjectName(f"action_{name}")
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
            action.setToolTip(f"{text} ({action.shortcut().toString()})")
        if icon_name:
            action.setIcon(icon(icon_name))
        action.triggered.connect(slot)
        self.addAction(action)  # shortcuts work even when the action is in no visible bar
        return action

    def _build_docks(self) -> None:
        side = QSplitter(Qt.Orientation.Vertical)
        side.setObjectName("sideSplitter")
        # the task settings scroll rather than set the window's minimum height (a long
        # form must not push the window past a 700 px screen)
        settings_scroll = QScrollArea()
        settings_scroll.setObjectName("taskPanelScroll")
        settings_scroll.setWidget(self.task_panel)
        settings_scroll.setWidgetResizable(True)
        settings_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        settings_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        settings_scroll.setMinimumHeight(160)
        side.addWidget(settings_scroll)
        side.addWidget(self.results_panel)
        side.setStretchFactor(0, 0)
        side.setStretchFactor(1, 1)
        # scaled to the real height; the settings get their natural height where it fits
        side.setSizes([self.task_panel.sizeHint().height(), 460])
        self.side_splitter = side
        self.side_dock = QDockWidget(self.tr("Settings and results"), self)
        self.side_dock.setObjectName("sideDock")
        self.side_dock.setWidget(side)
        self.side_dock.setMinimumWidth(300)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.side_dock)
        self.queue_dock = QDockWidget(self.tr("Jobs"), self)
        self.queue_dock.setObjectName("queueDock")
        self.queue_dock.setWidget(self.queue)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.queue_dock)
        self.resizeDocks([self.queue_dock], [150], Qt.Orientation.Vertical)
        self.resizeDocks([self.side_dock], [340], Qt.Orientation.Horizontal)

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu(self.tr("&File"))
        file_menu.addActions([self.act_open, self.act_open_folder])
        clear = file_menu.addAction(self.tr("Clear inputs"))
        clear.triggered.connect(self.workspace.clear)
        file_menu.addSeparator()
        quit_action = file_menu.addAction(self.tr("Quit"))
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        view_menu = bar.addMenu(self.tr("&View"))
        view_menu.addActions([self.act_next, self.act_prev])
        view_menu.addSeparator()
        view_menu.addActions(list(self.viewer.actions.values()))
        view_menu.addSeparator()
        view_menu.addAction(self.side_dock.toggleViewAction())
        view_menu.addAction(self.queue_dock.toggleViewAction())
        run_menu = bar.addMenu(self.tr("&Run"))
        run_menu.addActions([self.act_run, self.act_cancel])
        models_menu = bar.addMenu(self.tr("&Models"))
        models_menu.addAction(self.act_catalog)
        models_menu.addAction(self.act_settings)
        help_menu = bar.addMenu(self.tr("&Help"))
        self.act_shortcuts = help_menu.addAction(self.tr("Keyboard shortcuts"))
        self.act_shortcuts.setObjectName("action_shortcuts")
        self.act_shortcuts.triggered.connect(self.show_shortcuts)
        self.act_about = help_menu.addAction(self.tr("About Ocula"))
        self.act_about.setObjectName("action_about")
        self.act_about.setMenuRole(QAction.MenuRole.AboutRole)
        self.act_about.triggered.connect(self.show_about)
        self.help_menu = help_menu

    def _build_status_bar(self) -> None:
        status = self.statusBar()
        self.placement_label = QLabel(self.tr("No model loaded"))
        self.placement_label.setObjectName("placementLabel")
        self.placement_label.setToolTip(self.tr("What really runs the model: backend, device, "
                                                "precision and any fallback"))
        self.offline_label = QLabel(self.tr("OFFLINE"))
        self.offline_label.setObjectName("offlineBadge")
        self.progress_label = QLabel()
        self.progress_label.setObjectName("statusProgress")
        status.addWidget(self.progress_label, 1)
        status.addPermanentWidget(self.offline_label)
        status.addPermanentWidget(self.placement_label)
        self._update_offline()

    def _connect(self) -> None:
        self.task_combo.currentIndexChanged.connect(lambda _: self.on_task_changed())
        self.model_picker.modelChanged.connect(self.on_model_changed)
        self.model_picker.modelPicked.connect(self.on_model_picked)
        self.model_picker.getMoreRequested.connect(self.open_catalog)
        self.workspace.imageShown.connect(self.on_image_shown)
        self.workspace.inputsChanged.connect(lambda inputs: self._update_run_enabled())
        self.viewer.legendChanged.connect(self._on_legend)
        self.viewer.patchClicked.connect(self.on_patch_clicked)
        self.viewer.canvas.promptsChanged.connect(self._on_prompts)
        self.results_panel.tokenClicked.connect(self.on_token_clicked)
        self.results_panel.boxSelected.connect(self.viewer.highlight_box)
        editor = self.viewer.box_editor
        editor.selectionChanged.connect(self.results_panel.select_box)
        editor.edited.connect(self.on_boxes_edited)
        seg = self.task_panel.segment_form
        seg.promptModeChanged.connect(self.viewer.canvas.set_mode)
        seg.clearPrompts.connect(self._clear_prompts)
        self.task_panel.explain_form.changed.connect(self.request_explain)
        self.task_panel.explain_form.exportMask.connect(self.export_mask)
        self.explain.heatmapChanged.connect(self._on_heatmap)
        self.explain.mapsReady.connect(self._on_maps)
        self.explain.placementKnown.connect(self.show_placement)
        self.explain.failed.connect(self._on_explain_failed)
        self.queue.on_resume = self.resume_job
        self.queue.on_forget = self._forget_job
        self.explain.busyChanged.connect(lambda busy: self.progress_label.setText(
            self.tr("Computing attention map…") if busy else ""))

    # -- catalog and model picker --------------------------------------------------------------
    def load_catalog(self) -> None:
        try:
            from engine.catalog.catalog import load_catalog

            self.catalog = load_catalog(strict=False)
        except Exception as exc:  # noqa: BLE001
            self.catalog = None
            self.progress_label.setText(describe(exc))
        self.refresh_models()
        # the cache scan imports huggingface_hub: start it once the window is up
        QTimer.singleShot(0, self.refresh_installed)
        QTimer.singleShot(0, self.list_unfinished_jobs)

    def on_installed_changed(self) -> None:
        """A download finished, a model was imported or deleted: re-read the catalog (an
        import adds a card) and rescan what is installed, so the picker shows it now."""
        try:
            from engine.catalog.catalog import load_catalog

            self.catalog = load_catalog(strict=False)
        except Exception as exc:  # noqa: BLE001
            self.progress_label.setText(describe(exc))
        self.refresh_models()
        self.refresh_installed()

    def refresh_installed(self) -> None:
        """Which models are downloaded: a cache scan, off the UI thread."""
        if self.catalog is None:
            return

        def scan(catalog: Any, settings: Any) -> set[str]:
            from engine.hub import is_installed

            found = set()
            for card in catalog:
                try:
                    if is_installed(card, settings=settings):
                        found.add(card.id)
                except Exception:  # noqa: BLE001 — one broken entry must not hide the rest
                    pass
            return found

        op = call_operation(scan, self.catalog, self.settings, label="scan", parent=self)
        op.succeeded.connect(self._on_installed)
        op.start(self.pools.calls)
        self._scan_op = op

    def _on_installed(self, installed: set[str]) -> None:
        self.installed = installed
        self.refresh_models()
        self._offer_bundled_offline()
        if self._welcome and not self.qsettings.value("ui/welcomed", False, type=bool):
            self._welcome = False
            QTimer.singleShot(0, self.show_welcome)

    def _offer_bundled_offline(self) -> None:
        """Offline with no installed model for a task: register the bundled tiny model of
        each such task (once a session), so an offline first run has a model that runs."""
        from desktop.views.bundled_models import tasks_without_installed

        if self._bundled_offered or self.catalog is None \
                or not getattr(self.settings, "effective_offline", False):
            return
        missing = tasks_without_installed(self.catalog, self.installed)
        if missing:
            self._bundled_offered = True
            self.use_bundled_models(missing)

    def use_bundled_models(self, tasks: list[str] | None = None) -> Operation:
        """Register the bundled models (off the UI thread), then list them as installed."""
        from desktop.views.bundled_models import register_bundled

        op = call_operation(register_bundled, tasks, label="bundled models", parent=self)
        op.succeeded.connect(lambda cards: self._on_bundled(cards))
        op.failed.connect(lambda f: self.progress_label.setText(f.message))
        op.start(self.pools.calls)
        self._bundled_op = op
        return op

    def _on_bundled(self, cards: list[Any]) -> None:
        self.progress_label.setText(self.tr("Bundled models ready for: {}").format(
            ", ".join(dict.fromkeys(t for c in cards for t in c.tasks))))
        self.on_installed_changed()
        if self.catalog_view is not None:
            self.catalog_view.reload()

    @property
    def task(self) -> str:
        return self.task_combo.currentData()

    def cards_for_task(self, task: str) -> list[Any]:
        if self.catalog is None:
            return []
        cards = list(self.catalog)
        if task == "explain":
            from engine.catalog.card import can_explain

            return [c for c in cards if can_explain(c)]
        return [c for c in cards if c.supports(task)]

    def refresh_models(self) -> None:
        prefer = self.qsettings.value(f"models/{self.task}")
        self.model_picker.populate(self.cards_for_task(self.task), self.installed, prefer=prefer)

    @property
    def card(self) -> Any | None:
        return self.model_picker.current_card()

    def on_task_changed(self) -> None:
        task = self.task
        self.task_panel.set_task(task)
        self.refresh_models()
        self.viewer.canvas.set_mode("pan")
        if task == "explain":
            self._configure_explain()
        self._show_result_for(self.workspace.current_path)

    def on_model_changed(self, card: Any | None) -> None:
        self.task_panel.configure_for_model(card)
        if self.task == "explain":
            self._configure_explain()
        self._update_run_enabled()

    def on_model_picked(self, card: Any) -> None:
        """Only a model the user chose becomes the task's preference, never a default."""
        self.qsettings.setValue(f"models/{self.task}", card.id)

    def _update_run_enabled(self) -> None:
        self.act_run.setEnabled(bool(self.workspace.inputs))

    # -- running -------------------------------------------------------------------------------
    def run(self) -> Operation | None:
        card, inputs = self.card, list(self.workspace.inputs)
        if card is None:
            self.progress_label.setText(self.tr("Choose a model first (or Get more…)."))
            self.open_catalog()
            return None
        if not inputs:
            self.progress_label.setText(self.tr("Add images first: drop them on the window or "
                                                "press Ctrl+O."))
            return None
        if self.task == "explain":
            self.request_explain(immediate=True)
            return None
        return self.start_job(self.build_spec(card, inputs))

    def build_spec(self, card: Any, inputs: list[Path]) -> Any:
        from engine.jobs.spec import JobSpec

        options = dict(self.task_panel.options())
        prompts = self.viewer.canvas.prompts
        if self.task == "segment" and getattr(card, "variant", None) == "promptable":
            if prompts.points:
                options["points"] = [[x, y, label] for x, y, label in prompts.points]
            if prompts.boxes:
                options["boxes"] = [list(b) for b in prompts.boxes]
        if self.task_panel.save_outputs.isChecked():
            out = self.task_panel.output_dir.text().strip() or str(
                inputs[0].parent / "ocula-out" / self.task)
        else:
            # "Save results to files" unchecked: the job writes into a temporary folder
            # that is removed once the job is over (its results stay in memory for the
            # viewer) or, at the latest, when the app quits.
            import tempfile

            out = tempfile.mkdtemp(prefix="ocula-unsaved-")
            self._unsaved[out] = True
        return JobSpec(task=self.task, model=card.id, inputs=[str(p) for p in inputs],
                       output_dir=out, options=options,
                       device=self.task_panel.device.currentText(),
                       precision=self.task_panel.precision.currentText(),
                       executor=self.task_panel.executor_choice())

    def store(self) -> Any:
        if self.job_store is None:
            from engine.jobs.store import JobStore

            self.job_store = JobStore()
        return self.job_store

    def start_job(self, spec: Any) -> Operation:
        op = job_operation(spec, store=self.store(), parent=self)
        self._op_task[id(op)] = spec.task
        if spec.output_dir in self._unsaved:
            op.unsaved_dir = spec.output_dir
            return self._track_job(op, None, unsaved=True)
        return self._track_job(op, spec.output_dir)

    def resume_job(self, job_id: str, executor: str | None = None) -> Operation:
        """Continue a job an earlier session left unfinished (from the job store) on
        `executor` ("local", "ray"), by default where the task panel's "Run on" says."""
        store = self.store()
        output_dir = store.job_row(job_id).get("output_dir")
        spec = store.spec(job_id)
        choice = self.task_panel.executor_choice(executor)  # Ray: the panel's Ray fields
        where = "" if choice.name == "local" else self.tr(" on {}").format(choice.name)
        op = resume_operation(job_id, store=store, parent=self, executor=choice,
                              label=self.tr("resume {}").format(spec.model) + where)
        self._op_task[id(op)] = spec.task
        return self._track_job(op, output_dir)

    def list_unfinished_jobs(self) -> None:
        """After start-up: offer to resume what an earlier session did not finish."""
        def records(store: Any) -> list:
            return store.list_jobs()

        op = call_operation(records, self.store(), label="job list", parent=self)
        op.succeeded.connect(self.queue.show_unfinished)
        op.start(self.pools.calls)
        self._jobs_op = op

    def _forget_job(self, job_id: str) -> None:
        self.store().delete_job(job_id)

    def _track_job(self, op: Operation, output_dir: str | None, *,
                   unsaved: bool = False) -> Operation:
        op.events.connect(lambda batch, o=op: self.on_job_events(o, batch))
        op.done.connect(lambda o=op: self.on_job_done(o))
        self.jobs.append(op)
        self.queue.add(op, output_dir, unsaved=unsaved)
        self.queue_dock.show()
        self.act_cancel.setEnabled(True)
        self.progress_label.setText(self.tr("Starting {}…").format(op.label))
        op.start(self.pools.jobs)
        return op

    def on_job_events(self, op: Operation, batch: list[Any]) -> None:
        """One coalesced batch: record results, badge thumbnails, redraw once."""
        statuses: dict[Path, str] = {}
        current = self.workspace.current_path
        task = self._op_task.get(id(op), self.task)
        redraw = False
        partial: str | None = None
        last = None
        for event in batch:
            kind = getattr(event, "kind", "")
            if isinstance(event, PlacementEvent):
                self.show_placement(event.text, planned=event.planned)
                continue
            if kind == "item_done":
                path = Path(event.item)
                item_result = event.result
                # a video's VideoResult (also when it came from a worker, as info["video"])
                from engine.jobs.video_result import video_result_of

                result = video_result_of(item_result) or getattr(item_result, "result",
                                                                 item_result)
                self.results[(task, path)] = result
                self.results.move_to_end((task, path))
                record = next((Path(p) for p in getattr(item_result, "written", None) or []
                               if str(p).endswith(".detections.json")), None)
                if record is not None:
                    self.result_records[(task, path)] = record
                info = getattr(item_result, "info", None) or {}
                if info.get("placement"):  # the loaded runner's own account
                    self.show_placement(str(info["placement"]), planned=False)
                statuses[path] = "done"
                redraw = redraw or (path == current and task == self.task)
            elif kind == "item_failed":
                statuses[Path(event.item)] = "failed"
            elif kind == "partial" and current is not None and Path(event.item) == current \
                    and task == self.task:
                partial = event.message  # a caption still being written
            last = event
        while len(self.results) > RESULT_CACHE:
            self.results.popitem(last=False)
        if statuses:
            self.workspace.mark(statuses)
        if redraw:
            self._show_result_for(current)
        elif partial is not None:  # once per batch: the newest text only
            from engine.results import Caption

            self.viewer.set_caption(partial)
            self.results_panel.show_caption(Caption(text=partial), streaming=True)
        if last is not None and getattr(last, "total", 0):
            eta = getattr(last, "eta_s", None)
            text = self.tr("{}: {} / {}").format(op.label, last.done, last.total)
            if eta is not None:
                text += self.tr(" · {:.0f} s left").format(eta)
            self.progress_label.setText(text)

    def on_job_done(self, op: Operation) -> None:
        self.act_cancel.setEnabled(bool(self.queue.running()))
        if op.outcome == "succeeded":
            summary = op.result
            self.progress_label.setText(getattr(summary, "message", "") or self.tr("Finished."))
        elif op.outcome == "cancelled":
            self.progress_label.setText(self.tr("Cancelled. Finished images keep their results."))
        else:
            self.progress_label.setText(op.failure.message)
            show_error(self, op.failure.exception, op.failure.details,
                       title=self.tr("The job stopped"))
        unsaved = getattr(op, "unsaved_dir", None)
        if unsaved:
            self._drop_unsaved(unsaved, op)
        self.jobFinished.emit(op)

    def _drop_unsaved(self, folder: str, op: Operation | None = None) -> None:
        """An unsaved run is over: its results are on screen; remove its files and its
        job-store record (there is nothing on disk left to resume)."""
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        self._unsaved.pop(folder, None)
        row = next((r for r in self.queue.rows if r.operation is op), None) if op else None
        if row is not None and row.job_id and self.job_store is not None:
            try:
                self.job_store.delete_job(row.job_id)
            except Exception:  # noqa: BLE001 — a store problem must not break the UI
                pass

    def cancel(self) -> None:
        self.queue.cancel_all()
        if self.explain.busy:
            self.explain.pending = None
            if self.explain.current is not None:
                self.explain.current.cancel()

    def show_placement(self, text: str, planned: bool = False) -> None:
        """The device really in use (a loaded runner's placement), or the plan for it."""
        self.placement_text = text
        self.placement_label.setText(text)
        self.placement_label.setToolTip(
            self.tr("Planned by engine.devices for this job's model: backend, device, "
                    "precision and any fallback") if planned else
            self.tr("What really runs the model: backend, device, precision and any fallback"))

    # -- results on screen ---------------------------------------------------------------------
    def on_image_shown(self, path: Path) -> None:
        self._show_result_for(path)
        if self.task == "explain" and self.explain.runner is not None:
            self.request_explain()

    def _show_result_for(self, path: Path | None) -> None:
        """Draw the current task's result for `path`, and nothing of any other task's."""
        result = self.results.get((self.task, path)) if path is not None else None
        if self.viewer.has_image:
            self.viewer.clear_results()
        if type(result).__name__ == "VideoResult" and self.task != "explain":
            self.workspace.show_video(result)  # plays it, drawing each frame's results
            self.results_panel.show_video(result, self.workspace.video.audio_note)
            return
        self.workspace.video.close_video()
        if result is None or self.task == "explain":
            self.results_panel.clear()
            return
        if self.viewer.has_image:
            self.viewer.show_result(result)
        self.results_panel.show_result(result, self.viewer.legend())
        if type(result).__name__ == "Caption" and not self._caption_words_explainable():
            # the words are links only where a click can open their attention map
            from engine.results import Caption

            self.results_panel.show_caption(Caption(text=result.text))

    def on_boxes_edited(self, detections: Any) -> Operation | None:
        """Corrected boxes: shown at once, saved in the job's result record and written
        into its exports (COCO, VOC, YOLO, CSV, overlay) off the UI thread."""
        path = self.workspace.shown_path
        if path is None:
            return None
        key = (self.task, path)
        self.results[key] = detections
        self.results_panel.show_result(detections, self.viewer.legend())
        self.results_panel.select_box(self.viewer.box_editor.selected)
        record = self.result_records.get(key)
        if record is None or not record.exists():
            self.progress_label.setText(self.tr("Corrections shown only: this run's results "
                                                "were not saved to files."))
            return None
        return self._save_edit(record, detections)

    def _save_edit(self, record: Path, detections: Any) -> Operation | None:
        """One save at a time, in order: an edit made while one is saved waits for it
        (only the newest waiting edit is kept: it holds the earlier ones)."""
        running = getattr(self, "edit_op", None)
        if running is not None and running.running:
            self._waiting_edit = (record, detections)
            return None
        from engine.exporters.edits import correct_detections

        op = call_operation(correct_detections, record, detections, label="save corrections",
                            parent=self)
        op.succeeded.connect(lambda files: self.progress_label.setText(self.tr(
            "Corrections saved: {} and {} export files.").format(
                Path(files[0]).name, len(files) - 1)))
        op.failed.connect(lambda f: self.progress_label.setText(f.message))
        op.done.connect(self._next_edit)
        op.start(self.pools.calls)
        self.edit_op = op
        return op

    def _next_edit(self) -> None:
        waiting, self._waiting_edit = getattr(self, "_waiting_edit", None), None
        if waiting is not None:
            self._save_edit(*waiting)

    def _on_legend(self, legend: list) -> None:
        del legend  # the results panel asks the viewer when it draws

    def _on_prompts(self) -> None:
        prompts = self.viewer.canvas.prompts
        self.task_panel.segment_form.show_prompt_count(len(prompts.points), len(prompts.boxes))

    def _clear_prompts(self) -> None:
        self.viewer.canvas.prompts.clear()
        self._on_prompts()

    # -- explain -------------------------------------------------------------------------------
    def _configure_explain(self) -> None:
        card = self.card
        form = self.task_panel.explain_form
        if card is None:
            form.hint.setText(self.tr("Choose a model with attention support."))
            return
        try:
            methods, reason = supported_methods(card)
        except Exception as exc:  # noqa: BLE001
            methods, reason = [], describe(exc)
        form.set_supported(methods)
        form.hint.setText(reason)

    def request_explain(self, immediate: bool = False) -> None:
        card, path = self.card, self.workspace.shown_path
        if self.task != "explain" or card is None or path is None:
            return
        options = self.task_panel.explain_form.options()
        self.explain.request(card, path, options, device=self.task_panel.device.currentText(),
                             precision="fp32", settings=self.settings, immediate=immediate)

    def on_patch_clicked(self, x: float, y: float) -> None:
        if self.task != "explain" or self.card is None or self.workspace.shown_path is None:
            return
        form = self.task_panel.explain_form
        index = form.method.findData("patch_similarity")
        if index >= 0 and form.method.model().item(index).isEnabled():
            form.method.blockSignals(True)
            form.method.setCurrentIndex(index)
            form.method.blockSignals(False)
            form._update_labels()
            options = dict(form.options(), patch=(x, y))
            self.explain.request(self.card, self.workspace.shown_path, options,
                                 device=self.task_panel.device.currentText(), precision="fp32",
                                 settings=self.settings, immediate=True)

    def _caption_words_explainable(self) -> bool:
        card = self.card
        if card is None:
            return False
        try:
            methods, _ = supported_methods(card)
        except Exception:  # noqa: BLE001
            return False
        return "cross_attention" in methods

    def on_token_clicked(self, index: int) -> None:
        """A caption word was clicked: under Explain, show its map; under Caption, switch
        to Explain (same model, caption words) and show that word's map once computed."""
        if self.task == "explain":
            self.explain.select_token(index)
            return
        card = self.card
        if card is None or not self._caption_words_explainable():
            return
        self._pending_token = index
        self.task_combo.setCurrentIndex(self.task_combo.findData("explain"))
        self.model_picker.select(card)
        form = self.task_panel.explain_form
        method = form.method.findData("cross_attention")
        if method >= 0:
            form.method.setCurrentIndex(method)
        self.request_explain(immediate=True)

    def _on_heatmap(self, values: Any) -> None:
        if self.task != "explain":
            return  # a map that arrived after the user left Explain
        self.viewer.set_heatmap(values)

    def export_mask(self, path: str | None = None) -> list[Path]:
        """The shown map's mask as `<path>.png` (0/255) and `<path>.rle.json` (COCO RLE)."""
        maps = getattr(self, "last_maps", None)
        if maps is None or maps.mask is None:
            return []
        if path is None:
            from PySide6.QtWidgets import QFileDialog

            stem = Path(self.workspace.shown_path or "mask").stem
            path, _ = QFileDialog.getSaveFileName(self, self.tr("Export mask"), f"{stem}.{maps.method}.mask.png",
                                                  self.tr("PNG mask (*.png)"))
            if not path:
                return []
        from engine.explain.render import save_mask

        written = save_mask(maps, path)
        self.progress_label.setText(self.tr("Mask saved: {}").format(", ".join(p.name for p in written)))
        return written

    def _on_maps(self, maps: Any) -> None:
        if self.task != "explain":
            return
        self.last_maps = maps
        self.task_panel.explain_form.export_mask.setEnabled(maps.mask is not None)
        form = self.task_panel.explain_form
        if maps.layers and maps.heads:
            form.blockSignals(True)
            form.set_shape(maps.layers, maps.heads)
            form.blockSignals(False)
        text = self.tr("{}: {}").format(maps.method, ", ".join(
            f"{k}={v}" for k, v in maps.params.items() if v is not None and k != "patch"))
        if maps.notes:
            text += "\n" + "\n".join(f"• {n}" for n in maps.notes)
        self.results_panel.clear()
        self.results_panel.show_attention(text)
        if maps.per_token:
            from engine.results import Caption

            labels = [t.label for t in maps.per_token]
            self.results_panel.show_caption(Caption(text=" ".join(labels), tokens=labels))
            pending, self._pending_token = self._pending_token, None
            if pending is not None:
                self.explain.select_token(min(pending, len(maps.per_token) - 1))

    def _on_explain_failed(self, message: str) -> None:
        self._pending_token = None
        self.progress_label.setText(message)
        self.results_panel.show_attention(message)

    # -- dialogs -------------------------------------------------------------------------------
    def open_catalog(self) -> Any:
        if self.catalog_view is None:
            from desktop.views.catalog import CatalogView

            self.catalog_view = CatalogView(settings=lambda: self.settings, pools=self.pools,
                                            on_download=lambda op: self.queue.add(op))
            self.catalog_view.setWindowFlag(Qt.WindowType.Window, True)
            self.catalog_view.setParent(self, Qt.WindowType.Window)
            self.catalog_view.modelChosen.connect(self.use_model)
            self.catalog_view.installedChanged.connect(self.on_installed_changed)
        task = self.task if self.task != "explain" else ""
        index = self.catalog_view.task.findData(task)
        if index >= 0:
            self.catalog_view.task.setCurrentIndex(index)
        self.catalog_view.show()
        self.catalog_view.raise_()
        return self.catalog_view

    def use_model(self, card: Any) -> None:
        if self.task != "explain" and not card.supports(self.task):
            index = self.task_combo.findData(card.primary_task)
            if index >= 0:
                self.task_combo.setCurrentIndex(index)
        self.model_picker.select(card)
        self.activateWindow()

    def open_settings(self) -> Any:
        from desktop.views.settings import SettingsDialog

        dialog = SettingsDialog(self.settings, self.qsettings, settings_path=self.settings_path,
                                parent=self)
        dialog.applied.connect(self.apply_settings)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def apply_settings(self, settings: Any) -> None:
        self.settings = settings
        self._update_offline()
        from PySide6.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            apply_theme(app, str(self.qsettings.value("ui/theme", "system")))
        self.refresh_installed()
        if self.catalog_view is not None:
            self.catalog_view._update_offline()

    def _update_offline(self) -> None:
        self.offline_label.setVisible(bool(getattr(self.settings, "effective_offline", False)))

    def show_shortcuts(self) -> Any:
        """Help → Keyboard shortcuts: every action of the window that has keys."""
        from desktop.views.help import ShortcutsDialog

        actions = list(self.actions()) + list(self.viewer.actions.values())
        for menu_action in self.menuBar().actions():
            if menu_action.menu() is not None:
                actions.extend(menu_action.menu().actions())
        dialog = ShortcutsDialog(actions, parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        self.shortcuts_dialog = dialog
        return dialog

    def show_about(self) -> Any:
        """Help → About: versions (read from package metadata), licence and folders."""
        from desktop.views.help import AboutDialog, about_facts

        store_path = getattr(self.job_store, "path", None)
        dialog = AboutDialog(about_facts(self.settings, self.settings_path, store_path),
                             parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        self.about_dialog = dialog
        return dialog

    def show_welcome(self) -> Any:
        from desktop.views.welcome import WelcomeDialog

        cache = ""
        try:
            from engine.hub import cache_dir

            cache = str(cache_dir(self.settings))
        except Exception:  # noqa: BLE001
            pass
        dialog = WelcomeDialog(self.catalog, cache_dir=cache, start_download=self._download_card,
                               offline=bool(getattr(self.settings, "effective_offline", False)),
                               use_bundled=lambda: self.use_bundled_models(), parent=self)
        dialog.finished.connect(lambda _: self.qsettings.setValue("ui/welcomed", True))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        self.welcome_dialog = dialog
        return dialog

    def _download_card(self, card: Any) -> None:
        view = self.open_catalog()
        view.hide()
        row = next((r for r in view.all_rows if r.card.id == card.id), None)
        if row is not None:
            view.download(row)

    # -- state ---------------------------------------------------------------------------------
    def restore_state(self) -> None:
        qs = self.qsettings
        geometry = qs.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        else:
            self.resize(1360, 860)
        state = qs.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        task = qs.value("ui/task")
        index = self.task_combo.findData(task) if task else -1
        if index >= 0:
            # setCurrentIndex emits nothing when the index is already current, so the
            # panel is synced explicitly (once) below.
            self.task_combo.blockSignals(True)
            self.task_combo.setCurrentIndex(index)
            self.task_combo.blockSignals(False)
        self.on_task_changed()
        self.task_panel.restore_state(qs)

    def save_state(self) -> None:
        qs = self.qsettings
        qs.setValue("window/geometry", self.saveGeometry())
        qs.setValue("window/state", self.saveState())
        qs.setValue("ui/task", self.task)
        self.task_panel.save_state(qs)
        qs.sync()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        self.save_state()
        self.queue.cancel_all()
        if self.catalog_view is not None:
            self.catalog_view.shutdown()
        self.workspace.shutdown()
        self.explain.release()
        self.pools.wait(15_000)
        for folder in list(self._unsaved):  # unsaved runs still going at quit
            self._drop_unsaved(folder)
        super().closeEvent(event)
