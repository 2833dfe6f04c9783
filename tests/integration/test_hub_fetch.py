"""engine.hub against the local hub: downloads, progress, revisions, cache, mirrors, tokens."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.catalog.card import ModelCard
from engine.hub import (
    cache_dir,
    clear_token,
    delete,
    disk_usage,
    fetch,
    fetch_repo,
    installed_repos,
    is_installed,
    save_token,
    stored_token,
)
from engine.settings import Settings
from tests.fixtures.hub_server import HubServer
from tests.fixtures.repos import random_bytes, tiny_vit_classifier, write_files


def _card(repo: str, revision: str | None = None, files: tuple[str, ...] = ()) -> ModelCard:
    return ModelCard(id=f"hub:{repo}", name=repo, tasks=("features",), runtime="transformers",
                     repo=repo, revision=revision, files=files)


def _repo_files(seed: int = 0, weights: int = 300_000) -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "vit"}',
        "README.md": b"# readme\n",
        "model.safetensors": random_bytes(weights, seed),
    }


def test_cache_dir_follows_settings_then_env(hub, tmp_path, monkeypatch):
    assert cache_dir() == hub.cache_dir
    assert cache_dir(Settings(cache_dir=str(tmp_path / "elsewhere"))) == tmp_path / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / "hub"


def test_download_reports_byte_progress_per_file_and_overall(hub, tmp_path):
    files = _repo_files()
    sha = hub.add_repo("org/progress", write_files(tmp_path / "r", files))
    hub.throttle("*/model.safetensors", bytes_per_s=1_000_000)  # ~0.3 s: several reports
    events = []
    path = fetch(_card("org/progress"), progress=events.append)
    assert path == hub.cache_dir / "models--org--progress" / "snapshots" / sha
    for name, data in files.items():
        assert (path / name).read_bytes() == data
        per_file = [e for e in events if e.item == name]
        assert per_file[-1].done == per_file[-1].total == len(data)
        assert all(e.stage == "download" and e.unit == "bytes" for e in per_file)
    overall = [e for e in events if e.item == ""]
    total = sum(len(d) for d in files.values())
    assert overall[-1].done == overall[-1].total == total
    assert [e.done for e in overall] == sorted(e.done for e in overall)  # never goes back
    assert len([e for e in events if e.item == "model.safetensors"]) >= 4  # gradual, not one jump
    assert is_installed(_card("org/progress"))
    # every file travelled over plain HTTP GET exactly once
    assert hub.count("*/resolve/*", "GET") == 3


def test_second_fetch_uses_the_cache(hub, tmp_path):
    hub.add_repo("org/cached", write_files(tmp_path / "r", _repo_files()))
    first = fetch_repo("org/cached")
    hub.reset()
    assert fetch_repo("org/cached") == first
    assert hub.count("*/resolve/*") == 0  # only the revision check
    assert hub.count("/api/models/org/cached/revision/main") == 1


def test_allow_patterns_fetch_only_matching_files(hub, tmp_path):
    hub.add_repo("org/patterns", write_files(tmp_path / "r", _repo_files()))
    card = _card("org/patterns", files=("*.json", "*.safetensors"))
    path = fetch(card)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert is_installed(card)
    assert not is_installed(_card("org/patterns"))  # the whole repo is not


def test_pinned_revision_and_branches(hub, tmp_path):
    v1 = hub.add_repo("org/pinned", write_files(tmp_path / "v1", _repo_files(seed=1)))
    v2 = hub.add_repo("org/pinned", write_files(tmp_path / "v2", _repo_files(seed=2)))
    hub.add_repo("org/pinned", write_files(tmp_path / "v1", {}), branch="v1.0")  # tag -> v1
    old = fetch(_card("org/pinned", revision=v1))
    assert old.name == v1
    assert (old / "model.safetensors").read_bytes() == random_bytes(300_000, 1)
    assert fetch(_card("org/pinned")).name == v2
    assert fetch(_card("org/pinned", revision="v1.0")).name == v1
    assert (hub.cache_dir / "models--org--pinned" / "refs" / "v1.0").read_text() == v1


@pytest.mark.slow  # imports torch + transformers
def test_tiny_model_round_trip_loads_with_transformers(hub, tmp_path):
    import torch
    from transformers import ViTForImageClassification

    folder = tiny_vit_classifier(tmp_path / "vit")
    hub.add_repo("org/tiny-vit", folder, pipeline_tag="image-classification",
                 library_name="transformers")
    card = _card("org/tiny-vit", files=("*.json", "*.safetensors"))
    path = fetch(card)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in path.iterdir()}
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = ViTForImageClassification.from_pretrained(folder).eval()(pixels).logits
        got = ViTForImageClassification.from_pretrained(path).eval()(pixels).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_disk_usage_delete_and_installed_repos(hub, tmp_path):
    v1_files = _repo_files(seed=1, weights=100_000)
    v2_files = dict(v1_files, **{"model.safetensors": random_bytes(150_000, 2)})
    v1 = hub.add_repo("org/usage", write_files(tmp_path / "v1", v1_files))
    v2 = hub.add_repo("org/usage", write_files(tmp_path / "v2", v2_files))
    card1, card2 = _card("org/usage", revision=v1), _card("org/usage", revision=v2)
    fetch(card1)
    fetch(card2)
    assert disk_usage(card1) == sum(len(d) for d in v1_files.values())
    assert disk_usage(card2) == sum(len(d) for d in v2_files.values())
    repos = {r.repo: r for r in installed_repos()}
    shared = len(v1_files["config.json"]) + len(v1_files["README.md"])
    assert repos["org/usage"].size == shared + 100_000 + 150_000
    assert {r.commit for r in repos["org/usage"].revisions} == {v1, v2}
    # v1's weights go; config and README stay, v2 still uses them. Freed bytes also
    # count the small bookkeeping files (cached tree listing, refs).
    assert 100_000 <= delete(card1) < 100_000 + 4096
    assert not is_installed(card1) and is_installed(card2)
    assert not list((hub.cache_dir / "models--org--usage" / "blobs").glob(
        hub.file("org/usage", "model.safetensors", v1).sha256))
    assert shared + 150_000 <= delete(card2) < shared + 150_000 + 4096
    assert not (hub.cache_dir / "models--org--usage").exists()
    assert delete(card2) == 0
    assert "org/usage" not in {r.repo for r in installed_repos()}


def test_settings_cache_dir_moves_downloads(hub, tmp_path):
    hub.add_repo("org/moved", write_files(tmp_path / "r", _repo_files()))
    settings = Settings(cache_dir=str(tmp_path / "big-disk"))
    path = fetch(_card("org/moved"), settings=settings)
    assert path.is_relative_to(tmp_path / "big-disk")
    assert is_installed(_card("org/moved"), settings)
    assert not is_installed(_card("org/moved"))  # default cache untouched
    assert not (hub.cache_dir / "models--org--moved").exists()


def test_mirror_through_hf_endpoint(hub, tmp_path, monkeypatch):
    mirror = HubServer().start()
    try:
        files = _repo_files(seed=7)
        mirror.add_repo("org/mirrored", write_files(tmp_path / "r", files))
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        path = fetch(_card("org/mirrored"))
        assert (path / "model.safetensors").read_bytes() == files["model.safetensors"]
        assert mirror.count("*/resolve/*", "GET") == 3
        assert hub.count("*mirrored*") == 0
    finally:
        mirror.stop()


def test_local_path_card_never_touches_the_network(hub, tmp_path):
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"onnx")
    card = ModelCard(id="local:x", name="x", tasks=("detect",), runtime="onnx",
                     local_path=str(weights))
    assert fetch(card) == weights
    assert is_installed(card) and disk_usage(card) == 4
    assert hub.log == []


def test_gated_repo_with_token_and_login(hub, tmp_path, monkeypatch):
    hub.add_repo("org/gated-ok", write_files(tmp_path / "r", _repo_files()), gated=True,
                 token="hf_good_token")
    assert fetch(_card("org/gated-ok"), token="hf_good_token").is_dir()
    assert all(r.token == "hf_good_token" for r in hub.requests("*/resolve/*"))
    monkeypatch.setenv("HF_TOKEN", "hf_good_token")
    assert stored_token() == "hf_good_token"
    path = fetch(_card("org/gated-ok"), settings=Settings(cache_dir=str(tmp_path / "c2")))
    assert (path / "README.md").read_bytes() == b"# readme\n"


def test_save_and_clear_token_use_huggingface_hub_storage(hub):
    from huggingface_hub import constants

    from engine.errors import OculaError

    hub.add_token("hf_login_token", user="alice")
    try:
        with pytest.raises(OculaError, match="rejected"):
            save_token("hf_not_a_token")
        assert save_token("hf_login_token") == "alice"
        assert stored_token() == "hf_login_token"
        assert Path(constants.HF_TOKEN_PATH).read_text().strip() == "hf_login_token"
    finally:
        clear_token()
    assert stored_token() is None


def test_fetched_files_match_hub_checksums(hub, tmp_path):
    files = _repo_files(seed=11)
    hub.add_repo("org/checksums", write_files(tmp_path / "r", files))
    path = fetch_repo("org/checksums")
    for name, data in files.items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == hashlib.sha256(
            data).hexdigest()
    # blobs are named by the hub's ETag: sha256 for LFS files, git sha1 for small ones
    blobs = {p.name for p in (hub.cache_dir / "models--org--checksums" / "blobs").iterdir()}
    assert hub.file("org/checksums", "model.safetensors").sha256 in blobs
    assert hub.file("org/checksums", "config.json").blob_id in blobs
