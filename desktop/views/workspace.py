"""The workspace: the inputs of the next run, one shown large, the rest as thumbnails.

Files, folders and videos arrive by drag and drop or the Open dialogs. Folders
are expanded to the images and videos inside (sorted, recursively). Thumbnails
and the large image are decoded off the UI thread; the strip only receives
finished thumbnails, in coalesced batches.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from PySide6.QtCore import QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QImageReader, QPainter, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QListView,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from desktop.views.video_player import VideoPlayer
from desktop.views.viewer import ImageViewer
from desktop.workers import Operation, call_operation

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
THUMB_PX = 96


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given (if image or video); folders walked for images and videos.

    Hidden entries and Ocula's own output folders inside a folder (`ocula-out`, or any
    folder holding a job report or lock: engine.media.inputs.is_output_folder) are
    skipped, as the engine's job input walk skips them: outputs are never inputs."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(_walk_media(path)))
        elif path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            out.append(path)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _walk_media(folder: Path) -> Iterable[Path]:
    from engine.media.inputs import is_output_folder

    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and not is_output_folder(os.path.join(top, d))]
        for name in files:
            if not name.startswith(".") and \
                    Path(name).suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                yield Path(top) / name


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _thumbnail(path: Path) -> QImage:
    """Decode a small version cheaply (JPEG decoders scale while decoding)."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)  # EXIF orientation, like engine.media.image
    size = reader.size()
    if size.isValid() and size.width() > 0:
        reader.setScaledSize(size.scaled(THUMB_PX * 2, THUMB_PX * 2,
                                         Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    return image


def _video_placeholder(name: str) -> QPixmap:
    pixmap = QPixmap(THUMB_PX, THUMB_PX)
    pixmap.fill(QColor(52, 56, 64))
    painter = QPainter(pixmap)
    painter.setPen(QColor(230, 230, 230))
    painter.drawText(pixmap.rect(), Qt.AlignmentFlag.AlignCenter, "▶\n" + name[:12])
    painter.end()
    return pixmap


class ThumbnailStrip(QListWidget):
    filesDropped = Signal(list)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("thumbnailStrip")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(THUMB_PX, THUMB_PX))
        self.setGridSize(QSize(THUMB_PX + 16, THUMB_PX + 30))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setWrapping(True)
        self.setAcceptDrops(True)
        self.setDragEnabled(False)

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.filesDropped.emit(paths)
            event.acceptProposedAction()


class Workspace(QWidget):
    """Inputs + current image. The main window reads `inputs` when the user runs a task."""

    inputsChanged = Signal(list)  # list[Path]
    currentChanged = Signal(int)  # index into inputs (-1: none)
    imageShown = Signal(object)  # path whose pixels are now on the canvas

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("workspace")
        self.setAcceptDrops(True)
        self.inputs: list[Path] = []
        self.current = -1
        self.status: dict[Path, str] = {}  # done | failed, from job events
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._thumb_op: Operation | None = None
        self._image_op: Operation | None = None
        self.shown_path: Path | None = None

        self.viewer = ImageViewer(self)
        self.video = VideoPlayer(self.viewer)  # the transport bar of a processed video
        self.viewer.add_bar(self.video)
        self.strip = ThumbnailStrip(self)
        self.strip.currentRowChanged.connect(self._on_row)
        self.strip.filesDropped.connect(self.add_paths)
        self.strip.setVisible(False)
        self.splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.splitter.setObjectName("workspaceSplitter")
        self.splitter.addWidget(self.viewer)
        self.splitter.addWidget(self.strip)
        self.splitter.setStretchFactor(0, 5)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([600, 150])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)

    # -- adding inputs -------------------------------------------------------------------------
    def add_paths(self, paths: Iterable[str | os.PathLike], *, replace: bool = False) -> int:
        """Add files/folders; returns how many inputs were added. The first of the new
        inputs becomes the shown one (so Explain and the results follow what was opened)."""
        new = expand_paths(paths)
        if replace:
            self.inputs = []
            self.status.clear()
            self.strip.clear()
            self.current = -1
        known = set(self.inputs)
        new = [p for p in new if p not in known]
        if not new and not replace:
            return 0
        start = len(self.inputs)
        self.inputs.extend(new)
        for path in new:
            item = QListWidgetItem(path.name)
            item.setToolTip(str(path))
            item.setSizeHint(QSize(THUMB_PX + 12, THUMB_PX + 26))
            if is_video(path):
                item.setIcon(QIcon(_video_placeholder(path.name)))
            self.strip.addItem(item)
        self.strip.setVisible(len(self.inputs) > 1)
        self._load_thumbnails([(start + i, p) for i, p in enumerate(new) if not is_video(p)])
        self.inputsChanged.emit(list(self.inputs))
        if new:
            self.set_current(start)  # what was just opened or dropped is what is shown
        elif self.current < 0 and self.inputs:
            self.set_current(0)
        return len(new)

    def clear(self) -> None:
        self.inputs = []
        self.status.clear()
        self.strip.clear()
        self.strip.setVisible(False)
        self.current = -1
        self.shown_path = None
        self.video.close_video()
        self.viewer.clear_image()
        self.inputsChanged.emit([])
        self.currentChanged.emit(-1)

    def open_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, self.tr("Open images or videos"), "",
            self.tr("Images and videos ({})").format(
                " ".join(f"*{s}" for s in sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))))
        if files:
            self.add_paths(files)

    def open_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.tr("Open a folder of images"))
        if folder:
            self.add_paths([folder])

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.add_paths(paths)
            event.acceptProposedAction()

    # -- navigation ------------------------------------------------------------------------------
    def set_current(self, index: int) -> None:
        if not self.inputs:
            return
        index = max(0, min(len(self.inputs) - 1, index))
        if self.strip.currentRow() != index:
            self.strip.setCurrentRow(index)  # re-enters through _on_row
            return
        self.current = index
        self._show(self.inputs[index])
        self.currentChanged.emit(index)

    def next(self) -> None:
        self.set_current(self.current + 1)

    def previous(self) -> None:
        self.set_current(self.current - 1)

    @property
    def current_path(self) -> Path | None:
        return self.inputs[self.current] if 0 <= self.current < len(self.inputs) else None

    def _on_row(self, row: int) -> None:
        if row >= 0 and row != self.current:
            self.current = row
            self._show(self.inputs[row])
            self.currentChanged.emit(row)

    def _show(self, path: Path) -> None:
        """Decode the full image off the UI thread; show it if still current."""
        self.video.close_video()  # another input: the video shown before stops
        op = call_operation(_load_display_image, path, label=f"open {path.name}", parent=self)
        op.succeeded.connect(lambda result, p=path: self._on_image(p, result))
        op.failed.connect(lambda failure, p=path: self._on_image_failed(p, failure))
        self._image_op = op
        op.start(self._pool)

    def _on_image(self, path: Path, image: QImage) -> None:
        if path != self.current_path:
            return  # the user moved on
        self.shown_path = path
        self.viewer.set_image(QPixmap.fromImage(image))
        self.imageShown.emit(path)

    def _on_image_failed(self, path: Path, failure) -> None:
        if path != self.current_path:
            return
        self.shown_path = None
        self.viewer.clear_image()
        self.viewer.empty_label.setText(failure.message)

    # -- thumbnails and per-item status ------------------------------------------------------------
    def _load_thumbnails(self, todo: list[tuple[int, Path]]) -> None:
        if not todo:
            return

        def work(emit, cancel, pause) -> None:
            for index, path in todo:
                if cancel.cancelled:
                    return
                image = _thumbnail(path)
                if not image.isNull():
                    emit((index, path, image))

        op = Operation(work, label="thumbnails", kind="call", parent=self)
        op.events.connect(self._on_thumbnails)
        self._thumb_op = op
        op.start(self._pool)

    def _on_thumbnails(self, batch: list[tuple[int, Path, QImage]]) -> None:
        for index, path, image in batch:
            if index < self.strip.count() and self.inputs[index] == path:
                self.strip.item(index).setIcon(QIcon(QPixmap.fromImage(image)))

    def mark(self, statuses: dict[Path, str]) -> None:
        """Badge finished/failed inputs (called once per coalesced batch of job events)."""
        index = {p: i for i, p in enumerate(self.inputs)}
        for path, state in statuses.items():
            self.status[path] = state
            i = index.get(path)
            if i is None:
                continue
            item = self.strip.item(i)
            item.setText(("✓ " if state == "done" else "✗ ") + path.name)
            if state == "failed":
                item.setForeground(QColor(220, 80, 80))

    def wait_idle(self, msecs: int = 10_000) -> bool:
        return self._pool.waitForDone(msecs)

    def show_video(self, result: Any) -> None:
        """Play a processed video (engine.jobs.video_result.VideoResult) in the viewer."""
        from engine.errors import OculaError

        if self.video.result != result:
            try:
                self.video.open(result)
            except OculaError as exc:  # e.g. the video was moved since the job ran
                self.video.close_video()
                self.viewer.flash(str(exc), 6000)
        else:
            self.video.seek(self.video.index)  # redraw the frame's results (just cleared)

    def shutdown(self) -> None:
        self.video.close_video()
        for op in (self._thumb_op, self._image_op):
            if op is not None:
                op.cancel()
        self._pool.waitForDone(5000)


def _load_display_image(path: Path) -> Any:
    """Full image for the canvas, EXIF-oriented like engine results; first frame for videos."""
    if is_video(path):
        return _video_first_frame(path)
    from engine.media.image import read_image

    loaded = read_image(path)
    rgb = loaded.rgb
    image = QImage(rgb.tobytes(), rgb.width, rgb.height, rgb.width * 3,
                   QImage.Format.Format_RGB888)
    return image.copy()


def _video_first_frame(path: Path) -> QImage:
    import av  # PyAV; imported only when a video is shown

    from engine.errors import InputError

    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                rgb = frame.to_ndarray(format="rgb24")
                h, w, _ = rgb.shape
                return QImage(rgb.tobytes(), w, h, w * 3, QImage.Format.Format_RGB888).copy()
    except av.FFmpegError as exc:
        raise InputError(f"{path}: this video cannot be decoded ({exc}).") from exc
    raise InputError(f"{path}: this video has no frames.")
