"""Where one input's outputs go: collision-safe, mirrored, atomic, never over an input.

Each input gets an output key — its path relative to the input folder without the
extension (`holiday/beach`) — reserved in the job store when the input is queued,
so names are decided once and a resumed job writes exactly the same files again
(an interrupted item is redone in place, never duplicated as `beach-2`). Every file
is written to a hidden temporary name in the same folder and renamed when complete.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.errors import InputError
from engine.media.image import atomic_write_bytes, write_image

FRAME_KINDS = ("overlay", "restored", "frame")  # image kinds that become a video frame


class OutputPlan:
    """Output paths and atomic writers for one input.

    `out.path(".overlay.png", kind="overlay")` names a file; the write_* methods
    write it atomically and remember it (`out.written`, `out.by_kind`).
    """

    is_frame = False

    def __init__(self, output_dir: str | os.PathLike, key: str, input_path: Path | None = None,
                 *, is_input: Callable[[Path], bool] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.key = key
        self.input_path = input_path
        self._is_input = is_input
        self.written: list[Path] = []
        self.by_kind: dict[str, Path] = {}

    @property
    def stem(self) -> str:
        return Path(self.key).name

    @property
    def folder(self) -> Path:
        return (self.output_dir / self.key).parent

    def path(self, suffix: str, kind: str = "output") -> Path:
        """The output file for `suffix` (e.g. ".overlay.png", ".json", "_mask.png")."""
        if not suffix or "/" in suffix or "\\" in suffix:
            raise ValueError(f"output suffix {suffix!r} must be a non-empty file-name ending.")
        target = self.output_dir / (self.key + suffix)
        if self._clashes_with_input(target):
            # Same name as an input (output folder = input folder): keep both, visibly.
            stem, dot, ext = suffix.rpartition(".")
            target = self.output_dir / (self.key + (stem + ".ocula" + dot + ext if dot
                                                    else suffix + ".ocula"))
        return target

    def _clashes_with_input(self, target: Path) -> bool:
        if self.input_path is not None and _same_file(target, self.input_path):
            return True
        return bool(self._is_input and target.exists() and self._is_input(target))

    # -- atomic writers --------------------------------------------------------------------
    def write_bytes(self, suffix: str, data: bytes, *, kind: str = "output") -> Path:
        target = self.path(suffix, kind)
        atomic_write_bytes(target, data)
        return self._record(target, kind)

    def write_text(self, suffix: str, text: str, *, kind: str = "output") -> Path:
        return self.write_bytes(suffix, text.encode("utf-8"), kind=kind)

    def write_image(self, suffix: str, image: np.ndarray | Image.Image, *, kind: str = "image",
                    quality: int | None = None, alpha: np.ndarray | None = None) -> Path:
        target = self.path(suffix, kind)
        write_image(target, image, quality=quality, alpha=alpha)  # temp file + rename
        return self._record(target, kind)

    def reserve(self, suffix: str, *, kind: str = "output") -> Path:
        """The path for a file a streaming writer writes itself (atomically), recorded as
        this input's output like the write_* methods' files."""
        return self._record(self.path(suffix, kind), kind)

    def _record(self, target: Path, kind: str) -> Path:
        if target not in self.written:
            self.written.append(target)
        self.by_kind[kind] = target
        return target


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


@dataclass
class FrameInfo:
    index: int  # frame number in decode (presentation) order, from 0
    pts: int | None
    time_s: float
    keyframe: bool = False


@dataclass
class Captured:
    suffix: str
    kind: str
    data: Any


class FrameOutput(OutputPlan):
    """OutputPlan for one video frame: writes stay in memory, nothing touches the disk.

    The video pipeline encodes the captured "overlay"/"restored"/"frame" image, and
    writes per-frame annotations itself, so a handler written for images works on
    video unchanged.
    """

    is_frame = True

    def __init__(self, output_dir: Path, key: str, input_path: Path | None,
                 frame: FrameInfo) -> None:
        super().__init__(output_dir, key, input_path)
        self.frame = frame
        self.captured: list[Captured] = []

    def write_bytes(self, suffix: str, data: bytes, *, kind: str = "output") -> Path:
        self.captured.append(Captured(suffix, kind, data))
        return self._record(self.path(suffix, kind), kind)

    def write_image(self, suffix: str, image: np.ndarray | Image.Image, *, kind: str = "image",
                    quality: int | None = None, alpha: np.ndarray | None = None) -> Path:
        self.captured.append(Captured(suffix, kind, image))
        return self._record(self.path(suffix, kind), kind)

    def frame_image(self) -> np.ndarray | None:
        for cap in self.captured:
            if cap.kind in FRAME_KINDS:
                return np.asarray(cap.data.convert("RGB") if isinstance(cap.data, Image.Image)
                                  else cap.data)
        return None


def cleanup_partial(output_dir: Path, key: str) -> int:
    """Delete temporary files an interrupted item left in its folder; return how many."""
    folder = (Path(output_dir) / key).parent
    base = Path(key).name
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        # atomic_write_bytes: ".<name>.XXXX.part"; write_image: ".<stem>.XXXX<ext>".
        if name.startswith(("." + base + ".", ".ocula-part-")):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


# Ocula's temporary names (a file is written to one of them, then renamed):
#   atomic_write_bytes / the job report: ".<name>.XXXXXXXX.part" (tempfile.mkstemp)
#   write_image:                        ".<stem>.XXXXXXXX<ext>"
#   a video's merged annotations:       ".<name>.part"
_TEMP_PATTERNS = (
    re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.part$"),
    re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<ext>\.[A-Za-z0-9]{1,5})$"),
    re.compile(r"^\.(?P<name>.+)\.part$"),
)


def temp_target(name: str) -> str | None:
    """The file a temporary named `name` was going to become, None if it is not one."""
    for pattern in _TEMP_PATTERNS:
        m = pattern.match(name)
        if m:
            groups = m.groupdict()
            return groups.get("name") or (groups["stem"] + groups["ext"])
    return None


def cleanup_stale_temporaries(output_dir: Path, owns: Callable[[str], bool]) -> list[Path]:
    """Delete the temporaries a killed run of this job left anywhere in its output folder.

    Only names matching Ocula's temporary-name patterns are considered, and of those only
    the ones whose final file `owns(relative posix path)` says belongs to this job, so a
    user's own hidden files and another job's files are never touched. Run while the job
    holds the folder's lock (no other Ocula job writes there). Returns what was deleted.
    """
    output_dir = Path(output_dir)
    removed: list[Path] = []
    for root, dirs, files in os.walk(output_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(root).relative_to(output_dir).as_posix()
        for name in files:
            if not name.startswith("."):
                continue
            target = temp_target(name)
            if target is None or not owns(target if rel == "." else f"{rel}/{target}"):
                continue
            path = Path(root) / name
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def remove_written(paths: list[Path] | list[str]) -> None:
    """Delete files an input wrote before it failed (a failed input leaves no files)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            pass


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output folder ({exc.strerror}). Choose "
                         f"a folder you can write to.") from exc
    if not os.access(path, os.W_OK):
        raise InputError(f"{path}: the output folder is not writable. Choose another one.")
