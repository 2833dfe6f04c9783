"""Catalog entries whose weights ship inside a Python package (`package = ...`): validation,
installed state, fetch and delete. A fake package on sys.path stands in for facenet-pytorch,
so these run without it."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from engine.catalog import packaged
from engine.catalog.card import Source
from engine.catalog.entries import card_from_entry, entry_from_card
from engine.errors import CatalogError, MissingPackageError, UsageError

MODULE = "ocula_fake_weights_pkg"
FILES = [f"{MODULE}/data/pnet.pt", f"{MODULE}/data/rnet.pt"]
INSTALL = "pip install --no-deps ocula-fake-weights==1.0"


def entry(**changes):
    base = {
        "id": "fake-faces", "name": "Fake faces", "package": "ocula-fake-weights",
        "install": INSTALL, "tasks": ["detect"], "runtime": "facenet-pytorch", "files": FILES,
        "download_bytes": 30, "params": 10, "license": "mit", "commercial_use": True,
        "attention": "none", "seed": "Zhang et al. 2016", "description": "",
        "sidecar": {"family": "mtcnn"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable package holding two weight files (10 and 20 bytes)."""
    root = tmp_path / "site"
    data = root / MODULE / "data"
    data.mkdir(parents=True)
    (root / MODULE / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (data / "pnet.pt").write_bytes(b"p" * 10)
    (data / "rnet.pt").write_bytes(b"r" * 20)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return root


def test_a_package_entry_builds_a_package_card_and_round_trips() -> None:
    card = card_from_entry(entry(), origin="catalog.toml", index=0)
    assert card.source is Source.PACKAGE and card.repo is None and card.revision is None
    assert card.package == "ocula-fake-weights" and card.install == INSTALL
    assert card_from_entry(entry_from_card(card), origin="t", index=0) == card


@pytest.mark.parametrize("changes, message", [
    ({"repo": "owner/x", "revision": "main"},
     "field 'repo' is set, but the entry's weights ship in package"),
    ({"files": ["pnet.pt"]}, "field 'files' lists 'pnet.pt'; a package entry lists paths inside"),
    ({"files": [f"{MODULE}/../evil.pt"]}, "field 'files' lists"),
    ({"files": [f"{MODULE}/a.pt", "other_mod/b.pt"]}, "field 'files' spans modules"),
    ({"package": "not a name"}, "field 'package' is 'not a name'"),
    ({"package": None}, "field 'install' is only for entries whose weights ship in a 'package'"),
    ({"package": None, "install": None}, "field 'repo' is missing"),
])
def test_malformed_package_entries_name_the_field(changes, message) -> None:
    with pytest.raises(CatalogError, match="entry 'fake-faces'") as err:
        card_from_entry(entry(**changes), origin="catalog.toml", index=0)
    assert message in str(err.value)


def test_imported_models_cannot_claim_a_package() -> None:
    with pytest.raises(CatalogError, match="field 'package' is only for curated"):
        card_from_entry(entry(id="local:x", local_path="/x"), origin="imports.toml", index=0,
                        local=True)


def test_installed_exactly_when_importable_and_every_file_exists(site: Path) -> None:
    from engine.hub import disk_usage, is_installed

    card = card_from_entry(entry(), origin="catalog.toml", index=0)
    assert is_installed(card) and disk_usage(card) == 30
    assert packaged.locate(card) == site / MODULE / "data"
    assert MODULE not in sys.modules  # located, never imported (facenet-pytorch imports torch)

    (site / MODULE / "data" / "rnet.pt").unlink()
    assert not is_installed(card) and disk_usage(card) == 0
    with pytest.raises(MissingPackageError) as err:
        packaged.locate(card)
    assert f"lacks {MODULE}/data/rnet.pt" in str(err.value) and INSTALL in str(err.value)


def test_a_missing_package_is_not_installed_and_says_how_to_install(tmp_path: Path) -> None:
    from engine.hub import fetch, is_installed

    card = card_from_entry(entry(files=["ocula_no_such_module_xyz/data/a.pt"]),
                           origin="catalog.toml", index=0)
    assert not is_installed(card)
    with pytest.raises(MissingPackageError) as err:
        fetch(card)
    text = str(err.value)
    assert "ships inside the ocula-fake-weights package" in text and "not installed" in text
    assert text.endswith(INSTALL)


def test_fetch_returns_the_package_folder_and_delete_refuses(site: Path, monkeypatch) -> None:
    from engine.hub import delete, fetch

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no hub call
    card = card_from_entry(entry(), origin="catalog.toml", index=0)
    assert fetch(card) == site / MODULE / "data"
    with pytest.raises(UsageError, match="ship inside the ocula-fake-weights package, so "
                                         "there is nothing to delete"):
        delete(card)
    assert (site / MODULE / "data" / "pnet.pt").is_file()
