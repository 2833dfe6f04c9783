"""Model families of one task (detection, segmentation), one module per family.

A family module states as data what it serves and what it can do, and is named in its
package's one list of family modules (like spandrel's main_registry):

    # engine/tasks/detectors/yolo.py
    FAMILY = DetectorFamily("yolo", run, sidecar_families=("yolo",), summary="…")

    # engine/tasks/detectors/__init__.py
    FAMILY_MODULES = ("engine.tasks.detectors.detr_like", …, "engine.tasks.detectors.yolo")

The task's `FamilyTable` imports those modules on its first lookup (when `detect()` or
`segment()` first runs), registers each `FAMILY` by name and indexes it by transformers
`model_type`, sidecar `family` and card variant. Two families claiming the same name,
model type, sidecar family or variant is an error naming both (engine.registry).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from engine.errors import UnsupportedModelError
from engine.registry import Registry

if TYPE_CHECKING:
    from engine.runtimes.base import Runner


@dataclass(frozen=True)
class TaskFamily:
    """What every family states: its name, its run function, and which models it serves."""

    name: str
    run: Callable[..., list[Any]]  # (runner, images, options) -> one result per image
    model_types: tuple[str, ...] = ()  # transformers `config.model_type` (or sidecar model_type)
    sidecar_families: tuple[str, ...] = ()  # sidecar `family` values that name this family
    card_variants: tuple[str, ...] = ()  # card variants that name it (segment: "matting")
    summary: str = ""  # one line: which models, how they are decoded


F = TypeVar("F", bound=TaskFamily)


class FamilyTable(Generic[F]):
    """The families of one task, filled from `modules` on first use."""

    def __init__(self, what: str, modules: Sequence[str]) -> None:
        self.what = what  # "detector", "segmenter"
        self.modules = tuple(modules)
        self.by_name: Registry[str, F] = Registry(
            f"{what} family", missing=UnsupportedModelError, populate=self._populate)
        load = self.by_name.load
        self.by_model_type: Registry[str, str] = Registry(
            f"{what} model type", missing=UnsupportedModelError, populate=load)
        self.by_sidecar: Registry[str, str] = Registry(
            f"{what} sidecar family", missing=UnsupportedModelError, populate=load)
        self.by_variant: Registry[str, str] = Registry(
            f"{what} card variant", missing=UnsupportedModelError, populate=load)

    def _populate(self) -> None:
        for name in self.modules:
            module = importlib.import_module(name)
            family = getattr(module, "FAMILY", None)
            if family is None:
                raise TypeError(f"family module {name} states no FAMILY")
            self.register(family, where=f"{name}.FAMILY")

    def register(self, family: F, *, replace: bool = False, stacklevel: int = 1,
                 where: str | None = None) -> F:
        """Add a family (a plug-in's, or a test's) after the built-in ones; a name or index
        already taken raises DuplicateRegistrationError naming both families."""
        self.by_name.load()
        level = stacklevel + 1
        indexes = ((self.by_model_type, family.model_types),
                   (self.by_sidecar, family.sidecar_families),
                   (self.by_variant, family.card_variants))
        if not replace:  # check every index first: a refused family leaves nothing behind
            for index, keys in indexes:
                for key in keys:
                    if key in index:
                        index.register(key, family.name, stacklevel=level, where=where)
        self.by_name.register(family.name, family, replace=replace, stacklevel=level, where=where)
        for index, keys in indexes:
            for key in keys:
                index.register(key, family.name, replace=replace, stacklevel=level, where=where)
        return family

    def unregister(self, name: str) -> F | None:
        family = self.by_name.unregister(name)
        for index in (self.by_model_type, self.by_sidecar, self.by_variant):
            for key, value in index.items():
                if value == name:
                    index.unregister(key)
        return family

    def __iter__(self):
        return iter(self.by_name.values())

    def get(self, name: str) -> F:
        return self.by_name.get(name)

    def for_runner(self, runner: Runner, model_type: Callable[[Runner], str | None],
                   hint: str = "") -> F:
        """The family for a loaded model: the sidecar's `family`, else the card's variant,
        else the model type (read only when needed: `model_type(runner)`)."""
        card = runner.card
        sidecar = getattr(card, "sidecar", {}) or {}
        named = sidecar.get("family")
        if named is not None:
            name = self.by_sidecar.find(named)
            if name is None:
                raise UnsupportedModelError(
                    f"Model '{card.id}': {self.by_sidecar.unknown_message(named)}")
            return self.by_name.get(name)
        variant = getattr(card, "variant", None)
        name = self.by_variant.find(variant) if variant else None
        if name is None:
            kind = model_type(runner)
            name = self.by_model_type.find(kind or "")
            if name is None:
                raise UnsupportedModelError(
                    f"Model '{card.id}' (model type {kind or 'unknown'}) is not a {self.what} "
                    f"Ocula knows. Known model types: {', '.join(sorted(self.by_model_type))}"
                    + (f"; {hint}" if hint else "."))
        return self.by_name.get(name)
