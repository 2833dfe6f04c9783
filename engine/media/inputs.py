"""Input expansion: files, folders (recursive), globs, videos and URLs of object stores
(`s3://bucket/photos/`, through fsspec: engine.media.remote) → a stream of items.

`expand_inputs` is a generator so a job over 100,000 files never holds them all in
memory: the job store inserts the items in chunks as they come. Problems that belong
to one input (a missing file, a folder that cannot be listed) are yielded as items of
kind "error" carrying the reason, so the batch records them and goes on.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.media.image import IMAGE_SUFFIXES, check_readable_file
from engine.media.remote import is_url, list_url

VIDEO_SUFFIXES = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
    ".m2ts", ".wmv", ".flv", ".3gp", ".ogv", ".mxf", ".y4m",
}
_GLOB_CHARS = set("*?[")
# Ocula's own output folders are never inputs: the default output folder's name, and the
# files a job leaves in any output folder (its report; its lock while it runs). The names
# are the ones engine.jobs writes (jobs.report.REPORT_JSON, jobs.folder_lock.LOCK_NAME);
# they are spelled here because this layer sits below engine.jobs.
DEFAULT_OUTPUT_FOLDER = "ocula-out"
OUTPUT_MARKERS = ("ocula-report.json", ".ocula.lock")


@dataclass(frozen=True)
class InputItem:
    path: str  # the file (or the folder/pattern, for an error item)
    rel: str  # its place under the output folder ("a/b.jpg"); "/" separated
    kind: str  # "image" | "video" | "error"
    error: str | None = None


def _suffix(path: str | os.PathLike) -> str:
    name = os.path.basename(os.fspath(path))
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def is_video_path(path: str | os.PathLike) -> bool:
    return _suffix(path) in VIDEO_SUFFIXES


def media_kind(path: str | os.PathLike) -> str:
    """"video" by suffix, otherwise "image": an explicitly named file of unknown type is
    tried as an image and fails with the reader's own message if it is not one."""
    return "video" if is_video_path(path) else "image"


def expand_inputs(inputs: Iterable[str | os.PathLike], *,
                  exclude: Iterable[str | os.PathLike] = (),
                  recursive: bool = True) -> Iterator[InputItem]:
    """Yield every input file in a stable order (each folder's entries sorted by name).

    A folder mirrors its structure: `photos/a/b.jpg` given as `photos` has rel
    `a/b.jpg`. Folders listed in `exclude` (the job's output folder, when it sits
    inside an input folder) are skipped so outputs are never fed back as inputs;
    a folder named as an input itself is always read. Ocula's own output folders found
    inside an input folder (see `is_output_folder`) are skipped the same way, so opening
    a folder twice does not feed the first run's overlays into the second.
    Hidden files and folders (names starting with ".") inside folders are skipped:
    they include our own temporary `.part` files.
    """
    excluded = {_real(p) for p in exclude if not is_url(os.fspath(p))}
    for raw in inputs:
        text = os.fspath(raw)
        if is_url(text):  # an object store or other fsspec filesystem (engine.media.remote)
            for url, rel, error in list_url(text, recursive=recursive, is_media=_is_media,
                                            is_output=_is_output_name):
                yield InputItem(url, rel, "error" if error else media_kind(url), error)
            continue
        path = Path(text).expanduser()
        if any(ch in text for ch in _GLOB_CHARS) and not path.exists():
            yield from _expand_glob(text, excluded, recursive)
        elif path.is_dir():
            yield from _walk(path, path, excluded, recursive)
        elif path.exists():
            yield InputItem(str(path), path.name, media_kind(path))
        elif path.is_symlink():  # a dangling link or a link loop: say which
            yield InputItem(str(path), path.name, "error", _unreadable(path))
        else:
            yield InputItem(str(path), path.name, "error",
                            f"{path}: not found (no such file or folder).")


def is_output_folder(folder: str | os.PathLike) -> bool:
    """True for a folder Ocula wrote results into: the default `ocula-out`, or any folder
    holding a job report or a job lock. Such folders are skipped when a folder is walked."""
    folder = os.fspath(folder)
    if os.path.basename(os.path.normpath(folder)) == DEFAULT_OUTPUT_FOLDER:
        return True
    return any(os.path.lexists(os.path.join(folder, name)) for name in OUTPUT_MARKERS)


def _is_output_name(name: str) -> bool:
    """A folder name that marks Ocula's output inside an object store (no marker files
    are looked up there: listing them would cost a request per folder)."""
    return name == DEFAULT_OUTPUT_FOLDER


def _unreadable(path: Path) -> str:
    try:
        check_readable_file(path, what="an image or video")
    except InputError as exc:
        return str(exc)
    return f"{path}: cannot be read."


def _relative(path: str, root: str) -> str:
    rel = path[len(root):].lstrip("/\\") if path.startswith(root) else os.path.relpath(path, root)
    return rel.replace(os.sep, "/")


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def _expand_glob(pattern: str, excluded: set[str], recursive: bool) -> Iterator[InputItem]:
    matched = False
    # iglob streams matches directory by directory instead of building the whole list.
    for hit in glob.iglob(os.path.expanduser(pattern), recursive=recursive):
        if os.path.isdir(hit):
            matched = True
            yield from _walk(hit, hit, excluded, recursive)
        elif _is_media(hit):
            matched = True
            yield InputItem(hit, os.path.basename(hit), media_kind(hit))
    if not matched:
        yield InputItem(pattern, "glob", "error",
                        f"{pattern}: the pattern matched no image or video files.")


def _is_media(path: str | os.PathLike) -> bool:
    suffix = _suffix(path)
    return suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES


def _walk(root: str | os.PathLike, folder: str | os.PathLike, excluded: set[str],
          recursive: bool) -> Iterator[InputItem]:
    root, folder = os.fspath(root), os.fspath(folder)
    # A folder the user named is always read, even if it is also the output folder;
    # only output folders found *inside* it are skipped.
    if folder != root and (_real(folder) in excluded or is_output_folder(folder)):
        return
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:  # PermissionError, a folder removed meanwhile, I/O errors
        reason = exc.strerror or type(exc).__name__
        yield InputItem(folder, _relative(folder, root) if folder != root else ".",
                        "error", f"{folder}: cannot read this folder ({reason}); its files "
                        f"were skipped. Check its permissions.")
        return
    subfolders: list[str] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            subfolders.append(entry.path)
        elif _is_media(entry.name):
            yield InputItem(entry.path, _relative(entry.path, root), media_kind(entry.name))
    del entries  # only one folder's listing is held at a time
    if recursive:
        for sub in subfolders:
            yield from _walk(root, sub, excluded, recursive)
