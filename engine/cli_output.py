"""What the CLI's commands share for output: --json or text, and the user's settings."""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable


def emit(args: argparse.Namespace, payload: Any, text: str | Callable[[], str]) -> None:
    """Print JSON for scripts (--json) or human text."""
    if getattr(args, "json", False):
        print(json.dumps(jsonable(payload), indent=2))
    else:
        print(text() if callable(text) else text)


def jsonable(value: Any) -> Any:
    """Dataclasses, enums, paths and tuples as plain JSON values."""
    import dataclasses
    import enum
    from pathlib import PurePath

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def user_settings():
    """The user's saved settings: read here, by the front end, and passed down."""
    from engine.settings import Settings

    return Settings.load()
