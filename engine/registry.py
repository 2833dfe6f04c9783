"""One registry type for everything the engine looks up by name.

    LOADERS: Registry[str, Loader] = Registry("runtime loader", missing=UnsupportedModelError)
    LOADERS.register("onnx", load_onnx)      # a second "onnx" raises, naming both places

    @LOADERS.registering("spandrel")          # the decorator form
    def load_spandrel(card, path, placement, **options): ...

    LOADERS.register_lazy("transformers", "engine.runtimes.transformers_backend")
    LOADERS.get("onx")   # UnsupportedModelError: unknown runtime loader 'onx'. Did you mean 'onnx'?

Rules (after spandrel's ArchRegistry):

- Registering a key twice is an error (`DuplicateRegistrationError`) that names where the
  first and the second registration happened; replacing on purpose says so
  (`replace=True`, for tests and user overrides).
- Iteration is in registration order.
- A registry is filled explicitly: `populate` (a zero-argument callable, run once, on the
  first read) registers the built-in entries from one list, and `register_lazy(key,
  module)` names the module that provides a key without importing it until the key is
  asked for. Nothing depends on who imported what first.

A base module: it imports nothing from the engine but `engine.errors`.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from engine.errors import OculaError

__all__ = [
    "DuplicateRegistrationError",
    "NotRegisteredError",
    "Registry",
    "RegistryError",
]

K = TypeVar("K")
V = TypeVar("V")

# Population of every registry runs under one lock: a populate hook may fill several
# registries (a family and its model-type index), and one lock cannot deadlock.
_POPULATE_LOCK = threading.RLock()
_HERE = os.path.abspath(__file__)


class RegistryError(OculaError):
    """A registry was used wrongly: a key registered twice, or a key nobody registered."""


class DuplicateRegistrationError(RegistryError, ValueError):
    """The same key was registered twice; the message names both registrations."""

    def __init__(self, registry: str, key: Any, first: str, second: str):
        super().__init__(
            f"{registry} {key!r} is registered twice: first by {first}, again by {second}. "
            f"Give one of them another name, or pass replace=True to replace it on purpose."
        )
        self.registry = registry
        self.key = key
        self.first = first
        self.second = second


class NotRegisteredError(RegistryError, LookupError):
    """`Registry.get` of a key nobody registered (unless the registry names another error)."""


@dataclass(frozen=True)
class _Lazy:
    module: str
    attr: str | None
    where: str


def _caller(stacklevel: int) -> str:
    """'path/to/file.py:LINE' of the frame `stacklevel` frames above the registry's caller."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) == _HERE:
        frame = frame.f_back
    for _ in range(stacklevel - 1):
        if frame is None or frame.f_back is None:
            break
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    filename = frame.f_code.co_filename
    try:
        filename = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        pass
    return f"{filename}:{frame.f_lineno}"


def _describe(value: Any, where: str) -> str:
    """'module.qualname (where)' for functions and classes, "TypeName 'name' (where)" for
    objects with a name, else the value's repr or type."""
    qualname = getattr(value, "__qualname__", None)
    module = getattr(value, "__module__", None)
    if isinstance(qualname, str) and isinstance(module, str):
        return f"{module}.{qualname} ({where})"
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return f"{type(value).__name__} {name!r} ({where})"
    if isinstance(value, (str, int, float)):
        return f"{value!r} ({where})"
    return f"{type(value).__name__} ({where})"


class Registry(Generic[K, V]):
    """Keys to values, in registration order, that refuse to be overwritten silently.

    `name` says what the values are ("runtime loader", "detector family"); it starts every
    message. `missing` is the exception `get` raises for an unknown key (called with one
    message argument); `hint` is appended to that message (the next step for the user).
    `populate` fills the registry on its first read (explicit built-ins, not import order).
    """

    def __init__(
        self,
        name: str,
        *,
        missing: Callable[[str], Exception] = NotRegisteredError,
        hint: str = "",
        populate: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self._missing = missing
        self._hint = hint
        self._populate = populate
        self._populated = populate is None
        self._populating = False
        # one ordered table: a value, or a _Lazy promise that keeps its key's place
        self._entries: dict[K, V | _Lazy] = {}
        self._where: dict[K, str] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<Registry {self.name}: {len(self._entries)} entries>"

    def _first(self, key: K) -> str:
        """Who holds `key` now, for a duplicate's message."""
        entry = self._entries[key]
        if isinstance(entry, _Lazy):
            promised = entry.module + (f":{entry.attr}" if entry.attr else "")
            return f"{promised} (promised at {entry.where})"
        return _describe(entry, self._where[key])

    # -- filling ---------------------------------------------------------------------------

    def register(self, key: K, value: V, *, replace: bool = False, stacklevel: int = 1,
                 where: str | None = None) -> V:
        """Add `key`; a key already registered raises DuplicateRegistrationError unless
        `replace`. A key promised with `register_lazy` takes a value from its own module
        only. Messages name the caller's file:line: `stacklevel` > 1 blames a caller
        further up (for thin wrappers), `where` names the place outright."""
        where = where or _caller(stacklevel)
        with self._lock:
            if key in self._entries and not replace:
                entry = self._entries[key]
                own = (isinstance(entry, _Lazy)
                       and getattr(value, "__module__", None) == entry.module)
                if not own:
                    raise DuplicateRegistrationError(self.name, key, self._first(key),
                                                     _describe(value, where))
            self._entries[key] = value
            self._where[key] = where
        return value

    def registering(self, key: K, *, replace: bool = False) -> Callable[[V], V]:
        """Decorator form of `register`: `@REGISTRY.registering("name")`."""

        def deco(value: V) -> V:
            return self.register(key, value, replace=replace)

        return deco

    def register_lazy(self, key: K, module: str, attr: str | None = None, *,
                      stacklevel: int = 1) -> None:
        """Promise `key` without importing anything: the first `get(key)` imports `module`,
        and registers `module.attr` (or expects the module to register `key` itself)."""
        where = _caller(stacklevel)
        with self._lock:
            if key in self._entries:
                raise DuplicateRegistrationError(self.name, key, self._first(key),
                                                 f"{module} ({where})")
            self._entries[key] = _Lazy(module, attr, where)
            self._where[key] = where

    def unregister(self, key: K) -> V | None:
        """Remove `key` (a promise too); returns the value that was there, or None."""
        with self._lock:
            self._where.pop(key, None)
            entry = self._entries.pop(key, None)
        return None if isinstance(entry, _Lazy) else entry

    def load(self) -> Registry[K, V]:
        """Run the `populate` hook now (once; later calls do nothing). Reads call it."""
        if self._populated:
            return self
        with _POPULATE_LOCK:
            if self._populated or self._populating:  # done meanwhile, or a re-entrant read
                return self
            self._populating = True
            try:
                assert self._populate is not None
                self._populate()
                self._populated = True
            finally:
                self._populating = False
        return self

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: K) -> V:
        """The value for `key`; an unknown key raises `missing` listing the known keys and
        the nearest names."""
        value = self.find(key, _MISSING)
        if value is _MISSING:
            raise self._missing(self.unknown_message(key))
        return value  # type: ignore[return-value]

    def find(self, key: K, default: Any = None) -> V | Any:
        """The value for `key`, or `default` (importing a promised key's module)."""
        self.load()
        with self._lock:
            entry = self._entries.get(key, _MISSING)
        if entry is _MISSING:
            return default
        if not isinstance(entry, _Lazy):
            return entry
        loaded = importlib.import_module(entry.module)
        with self._lock:
            now = self._entries.get(key, _MISSING)
            if now is not entry:  # the module registered it (or someone replaced it)
                return default if now is _MISSING or isinstance(now, _Lazy) else now
            if entry.attr is None:
                raise RegistryError(
                    f"{self.name} {key!r}: module {entry.module} was expected to register it "
                    f"(promised at {entry.where}) but did not.")
            value = getattr(loaded, entry.attr)
            self._entries[key] = value
            self._where[key] = f"{entry.module}:{entry.attr} (promised at {entry.where})"
            return value

    def unknown_message(self, key: Any) -> str:
        known = [str(k) for k in self.keys()]
        text = f"unknown {self.name} {key!r}."
        close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
        if close:
            text += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        text += f" Known: {', '.join(known) if known else 'none'}."
        if self._hint:
            text += " " + self._hint
        return text

    def where(self, key: K) -> str:
        """Where `key` was registered (file:line), for messages and debugging."""
        self.load()
        with self._lock:
            if key in self._entries:
                entry = self._entries[key]
                if isinstance(entry, _Lazy):
                    return f"{entry.module} (not imported yet; promised at {entry.where})"
                return self._where[key]
        raise self._missing(self.unknown_message(key))

    def keys(self) -> list[K]:
        """Registered and promised keys, in registration order."""
        self.load()
        with self._lock:
            return list(self._entries)

    def values(self) -> list[V]:
        """Registered values (promised modules are not imported), in registration order."""
        return [value for _, value in self.items()]

    def items(self) -> list[tuple[K, V]]:
        self.load()
        with self._lock:
            return [(k, v) for k, v in self._entries.items() if not isinstance(v, _Lazy)]

    def __contains__(self, key: object) -> bool:
        self.load()
        with self._lock:
            return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __getitem__(self, key: K) -> V:
        return self.get(key)

    # -- tests -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything registered now, for `restore` (tests that register their own)."""
        self.load()
        with self._lock:
            return {"entries": dict(self._entries), "where": dict(self._where)}

    def restore(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            self._entries = dict(snapshot["entries"])
            self._where = dict(snapshot["where"])

    @contextmanager
    def scope(self) -> Iterator[Registry[K, V]]:
        """`with REGISTRY.scope(): ...` undoes every registration made inside."""
        saved = self.snapshot()
        try:
            yield self
        finally:
            self.restore(saved)


_MISSING = object()
