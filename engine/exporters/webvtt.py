"""WebVTT captions (W3C WebVTT): one cue per captioned keyframe or scene."""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.media.image import atomic_write_bytes


@dataclass
class Cue:
    start_s: float
    end_s: float
    text: str
    identifier: str = ""


def format_timestamp(seconds: float) -> str:
    """HH:MM:SS.mmm (hours always present, so any length of video reads the same)."""
    millis = max(0, int(round(seconds * 1000)))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def escape_text(text: str) -> str:
    """Cue text: markup characters escaped, no blank lines (a blank line ends a cue),
    and no "-->" (it would read as a timing line)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    lines = [line.strip() for line in text.replace("\r", "").split("\n")]
    return "\n".join(line for line in lines if line) or " "


def render_webvtt(cues: Iterable[Cue]) -> str:
    parts = ["WEBVTT", ""]
    for cue in cues:
        end = max(cue.end_s, cue.start_s + 0.001)  # a cue must end after it starts
        if cue.identifier:
            ident = cue.identifier.replace("-->", "→").replace("\n", " ")
            parts.append(ident)
        parts.append(f"{format_timestamp(cue.start_s)} --> {format_timestamp(end)}")
        parts.append(escape_text(cue.text))
        parts.append("")
    return "\n".join(parts) + "\n"


def write_webvtt(path: str | os.PathLike, cues: Iterable[Cue]) -> Path:
    path = Path(path)
    atomic_write_bytes(path, render_webvtt(cues).encode("utf-8"))
    return path


def cues_from_times(items: list[tuple[float, str]], end_s: float) -> list[Cue]:
    """Cues from (start time, text) pairs: each lasts until the next one (or `end_s`)."""
    ordered = sorted(items, key=lambda t: t[0])
    cues = []
    for n, (start, text) in enumerate(ordered):
        stop = ordered[n + 1][0] if n + 1 < len(ordered) else max(end_s, start + 0.001)
        cues.append(Cue(start, stop, text))
    return cues
