"""Caption outputs: one `.txt` sidecar per image plus one JSONL for the batch.

Sidecars follow the dataset-builder convention (kohya-ss, OneTrainer, HF
`imagefolder`): `photo.jpg` -> `photo.txt` in the output folder, holding the caption
text and nothing else. Sub-folders of the input are mirrored when `relative_to` is
given. When two images share a stem (`a.jpg` and `a.png`) the second sidecar keeps
the full name (`a.png.txt`) instead of silently replacing the first.

The JSONL has one object per image (`file_name`, `text`, `prompt`, `image`, `width`,
`height`, `token_ids`, `model`), in input order. Every file is written atomically
(temporary file + rename): an interrupted batch never leaves half a caption.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.media.image import atomic_write_bytes
from engine.paths import make_temp_file
from engine.results import Caption

JSONL_NAME = "captions.jsonl"


class SidecarNamer:
    """Chooses sidecar paths for a batch, never giving two images the same file."""

    def __init__(self, out_dir: str | os.PathLike, *, relative_to: str | os.PathLike | None = None,
                 suffix: str = ".txt") -> None:
        self.out_dir = Path(out_dir)
        self.relative_to = Path(relative_to) if relative_to is not None else None
        self.suffix = suffix
        self._used: dict[Path, Path] = {}  # sidecar -> image that owns it

    def path_for(self, image_path: str | os.PathLike) -> Path:
        image_path = Path(image_path)
        folder = self.out_dir
        if self.relative_to is not None:
            try:
                folder = self.out_dir / image_path.parent.relative_to(self.relative_to)
            except ValueError:
                pass  # not under the input root: flat in the output folder
        candidate = folder / (image_path.stem + self.suffix)
        owner = self._used.get(candidate)
        if owner is not None and owner != image_path:
            candidate = folder / (image_path.name + self.suffix)
        self._used[candidate] = image_path
        return candidate


def write_caption_txt(caption: Caption, image_path: str | os.PathLike,
                      out_dir: str | os.PathLike | None = None, *,
                      namer: SidecarNamer | None = None) -> Path:
    """Write `caption.text` (UTF-8, one line, trailing newline) as the image's sidecar."""
    if namer is None:
        namer = SidecarNamer(out_dir if out_dir is not None else Path(image_path).parent)
    target = namer.path_for(image_path)
    if target.resolve() == Path(image_path).resolve():
        raise ValueError(f"{target}: the caption file would replace the image itself.")
    text = " ".join(caption.text.split())  # one line: trainers read the whole file as the caption
    atomic_write_bytes(target, (text + "\n").encode("utf-8"))
    return target


def caption_record(caption: Caption, image_path: str | os.PathLike | None, *,
                   model: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    path = Path(image_path) if image_path is not None else None
    record: dict[str, Any] = {
        "file_name": path.name if path else None,
        "text": caption.text,
        "prompt": caption.prompt,
        "image": str(path) if path else None,
        "width": caption.image_size[0],
        "height": caption.image_size[1],
        "token_ids": list(caption.token_ids),
    }
    if model is not None:
        record["model"] = model
    if extra:
        record.update(extra)
    return record


def write_captions_jsonl(items: Iterable[tuple[str | os.PathLike | None, Caption]],
                         path: str | os.PathLike, *, model: str | None = None) -> Path:
    """All captions of a batch as JSON Lines, written atomically in one go."""
    lines = [json.dumps(caption_record(caption, image, model=model), ensure_ascii=False)
             for image, caption in items]
    target = Path(path)
    atomic_write_bytes(target, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    return target


class JsonlWriter:
    """Append records as they come; the file appears (atomically) only on `close()`.

    For long batches: memory stays flat and a crash leaves no truncated JSONL behind
    (the `.part` file is removed by `abort()`, or left for inspection if the process dies).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = make_temp_file(self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def write_caption(self, caption: Caption, image_path: str | os.PathLike | None, *,
                      model: str | None = None) -> None:
        self.write(caption_record(caption, image_path, model=model))

    def close(self) -> Path:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
