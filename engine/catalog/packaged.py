"""Models whose weights ship inside an installed Python package, not a hub repo.

A card with `package = "facenet-pytorch"` lists in `files` the weight files' paths inside
the installed package, as the wheel's RECORD names them ("facenet_pytorch/data/pnet.pt").
Such a model is installed exactly when the package is importable and every one of those
files exists; "downloading" it means installing the package (`card.install`), and it is
removed by uninstalling the package, never by deleting files from under pip.

Cheap: nothing here imports the package (which would import torch). `find_spec` locates
the top-level module without running it; a PyInstaller bundle answers it the same way,
with the package's data files collected next to its modules (packaging/ocula.spec).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from engine.catalog.card import ModelCard
from engine.errors import CatalogError, MissingPackageError


@dataclass(frozen=True)
class PackageState:
    """What is installed of a package-shipped card's files."""

    package: str  # pip distribution name
    module: str  # top-level import name the files live under
    version: str | None  # installed distribution version (None: unknown / not installed)
    root: Path | None  # the import root (site-packages) the files are relative to
    files: tuple[Path, ...]  # the card's files as absolute paths (when the module is found)
    missing: tuple[str, ...]  # card files that do not exist (all of them without the module)

    @property
    def installed(self) -> bool:
        return self.root is not None and bool(self.files) and not self.missing

    @property
    def folder(self) -> Path | None:
        """The deepest folder holding every weight file (what loaders get as the snapshot)."""
        if not self.files:
            return None
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.is_file())


def module_of(card: ModelCard) -> str:
    """The top-level module the card's files live under (their first path component)."""
    if not card.files:
        raise CatalogError(
            f"Model '{card.id}' ships in package {card.package!r} but lists no files.")
    return PurePosixPath(card.files[0]).parts[0]


def _import_root(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # ValueError: a half-imported module without a spec
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or ())
    if locations:
        return Path(locations[0]).parent
    return Path(spec.origin).parent if spec.origin else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def inspect(card: ModelCard) -> PackageState:
    """Where the card's package and files are on this machine (no import, no network)."""
    if not card.package:
        raise CatalogError(f"Model '{card.id}' does not ship inside a Python package.")
    module = module_of(card)
    root = _import_root(module)
    if root is None:
        return PackageState(card.package, module, None, None, (), tuple(card.files))
    paths = tuple(root.joinpath(*PurePosixPath(f).parts) for f in card.files)
    missing = tuple(f for f, p in zip(card.files, paths) if not p.is_file())
    return PackageState(card.package, module, _version(card.package), root, paths, missing)


def install_hint(card: ModelCard) -> str:
    return card.install or f"pip install {card.package}"


def is_installed(card: ModelCard) -> bool:
    return inspect(card).installed


def disk_usage(card: ModelCard) -> int:
    state = inspect(card)
    return state.size if state.installed else 0


def describe(card: ModelCard) -> str:
    """One line for info/doctor: where the weights come from and whether they are here."""
    state = inspect(card)
    if state.installed:
        version = f" {state.version}" if state.version else ""
        return (f"ship with the {card.package}{version} package ({state.folder}); "
                f"nothing to download")
    if state.root is None:
        return f"ship with the {card.package} package, which is not installed: {install_hint(card)}"
    return (f"ship with the {card.package} package, but it lacks {', '.join(state.missing)}: "
            f"reinstall it ({install_hint(card)})")


def locate(card: ModelCard) -> Path:
    """The folder holding the card's weight files; MissingPackageError (with the pip
    command) when the package or one of its files is not installed. Never downloads."""
    state = inspect(card)
    if state.root is None:
        raise MissingPackageError(
            f"Model '{card.id}' ships inside the {card.package} package (its weights are not "
            f"on the hub), and {card.package} is not installed. Install it with: "
            f"{install_hint(card)}"
        )
    if state.missing:
        raise MissingPackageError(
            f"Model '{card.id}': the installed {card.package} package (at {state.root}) lacks "
            f"{', '.join(state.missing)}. Reinstall it: {install_hint(card)}"
        )
    folder = state.folder
    assert folder is not None
    return folder
