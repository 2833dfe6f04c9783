"""The local hub fixture speaks what huggingface_hub expects (checked with the real client)."""
from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.hub_server import git_blob_sha1
from tests.fixtures.repos import random_bytes, write_files


def _raw(url: str, method: str = "GET", headers: dict | None = None):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture
def weights_repo(hub, tmp_path: Path) -> tuple[str, str, bytes]:
    from safetensors.numpy import save

    weights = save({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float16)})
    folder = write_files(tmp_path / "repo", {
        "config.json": '{"architectures": ["ViTModel"], "model_type": "vit"}',
        "model.safetensors": weights,
        "sub/notes.txt": "hello",
    })
    sha = hub.add_repo("org/weights", folder, pipeline_tag="image-feature-extraction",
                       library_name="transformers", license="apache-2.0", downloads=42,
                       tags=("vision",))
    return "org/weights", sha, weights


def test_endpoint_env_set_before_huggingface_hub_import(hub_server):
    from huggingface_hub import constants

    assert os.environ["HF_ENDPOINT"] == hub_server.url
    assert constants.ENDPOINT == hub_server.url


def test_model_info_matches_hub_shape(weights_repo):
    from huggingface_hub import HfApi

    repo, sha, weights = weights_repo
    info = HfApi().model_info(repo, files_metadata=True)
    assert info.sha == sha
    assert info.pipeline_tag == "image-feature-extraction"
    assert info.library_name == "transformers"
    assert info.card_data.license == "apache-2.0"
    assert "vision" in info.tags and info.downloads == 42 and info.gated is False
    assert info.config["architectures"] == ["ViTModel"]
    assert info.safetensors.total == 3 * 4 + 5
    assert info.safetensors.parameters == {"F32": 12, "F16": 5}
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {"config.json", "model.safetensors", "sub/notes.txt"}
    lfs = siblings["model.safetensors"].lfs
    assert lfs.sha256 == hashlib.sha256(weights).hexdigest() and lfs.size == len(weights)
    assert siblings["sub/notes.txt"].lfs is None
    assert siblings["sub/notes.txt"].blob_id == git_blob_sha1(b"hello")
    # like the real hub, sizes only come with files_metadata (?blobs=true)
    plain = HfApi().model_info(repo)
    assert all(s.size is None for s in plain.siblings)


def test_revisions_branches_and_tree(hub, tmp_path, weights_repo):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    repo, sha1, _ = weights_repo
    sha2 = hub.add_repo(repo, write_files(tmp_path / "v2", {"config.json": "{}"}))
    sha3 = hub.add_repo(repo, write_files(tmp_path / "v3", {"config.json": "[]"}), branch="dev")
    api = HfApi()
    assert len({sha1, sha2, sha3}) == 3
    assert api.model_info(repo).sha == sha2
    assert api.model_info(repo, revision="dev").sha == sha3
    assert api.model_info(repo, revision=sha1).sha == sha1
    tree = {f.path for f in api.list_repo_tree(repo, revision=sha1, recursive=True)}
    assert tree == {"config.json", "model.safetensors", "sub", "sub/notes.txt"}
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo, revision="nope")


def test_list_models_search_filters_and_sort(hub, tmp_path):
    from huggingface_hub import HfApi

    folder = write_files(tmp_path / "r", {"config.json": "{}"})
    hub.add_repo("search-org/detr-small", folder, pipeline_tag="object-detection",
                 library_name="transformers", downloads=10)
    hub.add_repo("search-org/detr-big", folder, pipeline_tag="object-detection",
                 library_name="transformers", downloads=99)
    hub.add_repo("search-org/detr-onnx", folder, pipeline_tag="object-detection",
                 library_name="onnx", downloads=50)
    hub.add_repo("search-org/captioner", folder, pipeline_tag="image-to-text",
                 library_name="transformers", downloads=1000)
    api = HfApi()
    ids = [m.id for m in api.list_models(search="search-org/detr", sort="downloads")]
    assert ids == ["search-org/detr-big", "search-org/detr-onnx", "search-org/detr-small"]
    ids = [m.id for m in api.list_models(search="search-org", pipeline_tag="object-detection",
                                         filter="transformers", limit=1)]
    assert ids == ["search-org/detr-big"]
    query = f"{hub.url}/api/models?search=search-org&library=onnx"
    status, _, body = _raw(query)
    assert status == 200 and b"detr-onnx" in body and b"detr-big" not in body


def test_resolve_headers_range_and_no_xet(hub, weights_repo):
    repo, sha, weights = weights_repo
    status, headers, _ = _raw(hub.resolve_url(repo, "model.safetensors"), "HEAD")
    assert status == 200
    assert headers["X-Repo-Commit"] == sha
    assert headers["X-Linked-ETag"].strip('"') == hashlib.sha256(weights).hexdigest()
    assert int(headers["X-Linked-Size"]) == len(weights)
    assert not any(k.lower().startswith("x-xet") for k in headers) and "Link" not in headers
    status, headers, _ = _raw(hub.resolve_url(repo, "config.json"), "HEAD")
    assert headers["ETag"].strip('"') == git_blob_sha1(hub.file(repo, "config.json").data)
    assert "X-Linked-ETag" not in headers
    status, headers, body = _raw(hub.resolve_url(repo, "model.safetensors"),
                                 headers={"Range": "bytes=10-"})
    assert status == 206 and body == weights[10:]
    assert headers["Content-Range"] == f"bytes 10-{len(weights) - 1}/{len(weights)}"
    status, _, _ = _raw(hub.resolve_url(repo, "model.safetensors"),
                        headers={"Range": f"bytes={len(weights)}-"})
    assert status == 416
    assert hub.ranges("*/model.safetensors") == ["bytes=10-", f"bytes={len(weights)}-"]


def test_errors_map_to_huggingface_hub_types(hub, tmp_path, weights_repo):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    repo, _, _ = weights_repo
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("org/does-not-exist")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo, "missing.bin", cache_dir=tmp_path / "c")
    hub.add_repo("org/gated-raw", write_files(tmp_path / "g", {"a.txt": "x"}), gated=True,
                 token="hf_gate")
    assert HfApi().model_info("org/gated-raw").gated == "manual"  # metadata stays public
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated-raw", "a.txt", cache_dir=tmp_path / "c")
    status, headers, _ = _raw(hub.resolve_url("org/gated-raw", "a.txt"),
                              headers={"Authorization": "Bearer wrong"})
    assert status == 403 and headers["X-Error-Code"] == "GatedRepo"
    path = hf_hub_download("org/gated-raw", "a.txt", cache_dir=tmp_path / "c", token="hf_gate")
    assert Path(path).read_text() == "x"


def test_plain_snapshot_download_uses_http_not_xet(hub, tmp_path, weights_repo):
    from huggingface_hub import snapshot_download

    repo, sha, weights = weights_repo
    path = Path(snapshot_download(repo, cache_dir=tmp_path / "c"))
    assert path.name == sha
    assert (path / "model.safetensors").read_bytes() == weights
    assert hub.count("*/resolve/*/model.safetensors", "GET") == 1


def test_faults_fail_corrupt_drop_throttle_and_reset(hub, tmp_path):
    data = random_bytes(200_000, seed=3)
    hub.add_repo("org/faults", write_files(tmp_path / "f", {"w.bin": data}))
    url = hub.resolve_url("org/faults", "w.bin")
    hub.fail("*/w.bin", times=2, status=503)
    assert [_raw(url)[0] for _ in range(3)] == [503, 503, 200]
    hub.corrupt("*/w.bin", times=1)
    bad = _raw(url)[2]
    assert len(bad) == len(data) and bad != data
    assert _raw(url)[2] == data
    hub.drop_after("*/w.bin", offset=50_000, times=1)
    with pytest.raises(http.client.IncompleteRead):
        _raw(url)
    hub.throttle("*/w.bin", bytes_per_s=400_000)
    start = time.monotonic()
    assert _raw(url)[2] == data
    assert time.monotonic() - start > 0.35
    hub.reset()
    assert hub.log == [] and _raw(url)[2] == data
