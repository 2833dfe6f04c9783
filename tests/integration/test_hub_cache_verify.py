"""Cached model files are verified on every pull and checked on every load (issue 16):
flipped bytes or a truncated blob are refused when loading and repaired by a pull."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.catalog.card import ModelCard
from engine.errors import IntegrityError
from engine.hub import cache_state, fetch
from engine.runtimes.loading import resolve_snapshot
from tests.fixtures.repos import random_bytes, write_files

WEIGHTS = random_bytes(300_000, 7)


def _card(repo: str) -> ModelCard:
    return ModelCard(id=f"hub:{repo}", name=repo, tasks=("features",), runtime="transformers",
                     repo=repo)


def _pulled(hub, tmp_path, repo: str) -> tuple[ModelCard, Path]:
    hub.add_repo(repo, write_files(tmp_path / "r", {"config.json": b'{"model_type": "vit"}',
                                                    "model.safetensors": WEIGHTS}))
    card = _card(repo)
    snapshot = fetch(card)
    return card, (snapshot / "model.safetensors").resolve()


def _flip(blob: Path, keep_mtime: bool) -> None:
    st = blob.stat()
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    if keep_mtime:  # a change that size and mtime cannot see: only the pull's sha256 does
        os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_blob_is_refused_on_load_and_repaired_by_pull(hub, tmp_path, damage):
    card, blob = _pulled(hub, tmp_path, f"org/damaged-{damage}")
    assert cache_state(card) == {"config.json": "verified", "model.safetensors": "verified"}
    if damage == "flip":
        _flip(blob, keep_mtime=False)
    else:
        blob.write_bytes(WEIGHTS[:1000])
    assert cache_state(card)["model.safetensors"] == "changed"

    with pytest.raises(IntegrityError, match=r"re-run `ocula models pull hub:org/damaged-"):
        resolve_snapshot(card)  # a run refuses before any weight is read

    notes: list[str] = []
    snapshot = fetch(card, on_notice=notes.append)  # `ocula models pull`
    assert (snapshot / "model.safetensors").read_bytes() == WEIGHTS
    assert len(notes) == 1 and "model.safetensors" in notes[0] and "repaired" in notes[0]
    assert cache_state(card)["model.safetensors"] == "verified"
    assert resolve_snapshot(card) == snapshot  # and runs load again


def test_pull_rehashes_what_size_and_mtime_cannot_see(hub, tmp_path):
    card, blob = _pulled(hub, tmp_path, "org/sneaky")
    _flip(blob, keep_mtime=True)
    notes: list[str] = []
    fetch(card, on_notice=notes.append)
    assert blob.read_bytes() == WEIGHTS and notes and "sha256" in notes[0]


def test_an_unchanged_blob_is_not_rehashed_on_load(hub, tmp_path, monkeypatch):
    card, _ = _pulled(hub, tmp_path, "org/stamped")
    import engine.hub.integrity as integrity

    def no_hashing(*args, **kwargs):
        raise AssertionError("an unchanged, verified blob was hashed again on load")

    monkeypatch.setattr(integrity, "file_digests", no_hashing)
    resolve_snapshot(card)


def test_an_offline_load_still_refuses_a_changed_blob(hub, tmp_path, monkeypatch):
    card, blob = _pulled(hub, tmp_path, "org/offline")
    blob.write_bytes(WEIGHTS[:10])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from engine.settings import Settings

    with pytest.raises(IntegrityError, match="re-run `ocula models pull hub:org/offline`"):
        resolve_snapshot(card, settings=Settings(offline=True))


def test_cache_state_names_missing_files(hub, tmp_path):
    card, blob = _pulled(hub, tmp_path, "org/missing")
    snapshot = fetch(card)
    (snapshot / "model.safetensors").unlink()
    assert cache_state(card)["model.safetensors"] == "missing"
