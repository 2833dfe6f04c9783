"""engine.hub when things go wrong: cancel, resume, corruption, offline, auth, faults, disk."""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from engine.catalog.card import ModelCard
from engine.errors import Cancelled, DownloadError, IntegrityError, OfflineError
from engine.events import CancelToken
from engine.hub import (
    CacheNotWritableError,
    DiskFullError,
    GatedRepoAccessError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    OfflineMissingFilesError,
    UnsafeFilenameError,
    fetch,
    fetch_repo,
    is_installed,
    transfer,
)
from engine.settings import Settings
from tests.fixtures.repos import random_bytes, write_files

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = "*/resolve/*/model.safetensors"


def _card(repo: str, revision: str | None = None, files: tuple[str, ...] = ()) -> ModelCard:
    return ModelCard(id=f"hub:{repo}", name=repo, tasks=("features",), runtime="transformers",
                     repo=repo, revision=revision, files=files)


def _publish(hub, tmp_path: Path, repo: str, weights_size: int = 300_000,
             seed: int = 0) -> bytes:
    weights = random_bytes(weights_size, seed)
    hub.add_repo(repo, write_files(tmp_path / repo.replace("/", "_"), {
        "config.json": b'{"model_type": "vit"}',
        "README.md": b"# readme\n",
        "model.safetensors": weights,
    }))
    return weights


def _blobs(hub, repo: str) -> Path:
    return hub.cache_dir / ("models--" + repo.replace("/", "--")) / "blobs"


def _partial(hub, repo: str, data: bytes) -> Path:
    return _blobs(hub, repo) / (hashlib.sha256(data).hexdigest() + ".incomplete")


def _snapshot_files(hub, repo: str) -> list[str]:
    snaps = hub.cache_dir / ("models--" + repo.replace("/", "--")) / "snapshots"
    return sorted(p.name for p in snaps.rglob("*") if p.is_file()) if snaps.exists() else []


@pytest.fixture
def fast_retries(monkeypatch):
    """Shorter waits between our own retry attempts (the policy is unchanged: 4 attempts)."""
    monkeypatch.setattr(transfer, "RETRY_WAITS_S", (0.05, 0.05, 0.05))


# -- cancel and resume -------------------------------------------------------------------
def test_cancel_stops_promptly_keeps_partial_and_resume_continues(hub, tmp_path):
    weights = _publish(hub, tmp_path, "org/cancel", weights_size=2_000_000)
    hub.throttle(WEIGHTS, bytes_per_s=400_000)
    cancel = CancelToken()
    cancelled_at: list[float] = []

    def on_progress(p):
        if p.item == "model.safetensors" and p.done >= 300_000 and not cancelled_at:
            cancelled_at.append(time.monotonic())
            cancel.cancel()

    with pytest.raises(Cancelled):
        fetch(_card("org/cancel"), progress=on_progress, cancel=cancel)
    stopped = time.monotonic()
    assert stopped - cancelled_at[0] < 1.0
    assert not is_installed(_card("org/cancel"))
    assert _snapshot_files(hub, "org/cancel") == []
    partial = _partial(hub, "org/cancel", weights)
    time.sleep(0.3)  # the download thread stops at its next chunk
    kept = partial.stat().st_size
    assert 300_000 <= kept < len(weights)

    hub.unthrottle()
    path = fetch(_card("org/cancel"))
    assert (path / "model.safetensors").read_bytes() == weights
    gets = hub.requests(WEIGHTS, "GET")
    assert gets[-1].range == f"bytes={kept}-"
    assert gets[-1].bytes_sent == len(weights) - kept
    assert not partial.exists()


def test_dropped_connection_is_resumed_not_restarted(hub, tmp_path):
    weights = _publish(hub, tmp_path, "org/drop-once", weights_size=1_000_000)
    hub.drop_after(WEIGHTS, offset=400_000, times=1)
    path = fetch(_card("org/drop-once"))
    assert (path / "model.safetensors").read_bytes() == weights
    # http_get keeps whole chunks: it resumes from the last one written before the cut
    kept = 400_000 - 400_000 % transfer.CHUNK_BYTES
    assert hub.ranges(WEIGHTS) == [None, f"bytes={kept}-"]
    assert hub.bytes_sent(WEIGHTS) == len(weights) + (400_000 - kept)


_CHILD = """
import sys
from engine.hub import fetch_repo
fetch_repo(sys.argv[1])
"""


@pytest.mark.slow  # starts a Python subprocess
def test_killed_download_resumes_in_a_new_process(hub, tmp_path):
    weights = _publish(hub, tmp_path, "org/killed", weights_size=3_000_000)
    hub.throttle(WEIGHTS, bytes_per_s=1_000_000)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_CACHE=str(hub.cache_dir))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, "org/killed"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = _partial(hub, "org/killed", weights)
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= 500_000):
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child never started downloading"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stderr.close()
    kept = partial.stat().st_size
    assert 500_000 <= kept < len(weights)
    assert not is_installed(_card("org/killed"))

    hub.unthrottle()
    path = fetch(_card("org/killed"))
    assert (path / "model.safetensors").read_bytes() == weights
    last = hub.requests(WEIGHTS, "GET")[-1]
    assert last.range == f"bytes={kept}-" and last.bytes_sent == len(weights) - kept


# -- integrity and safety ---------------------------------------------------------------
def test_corrupted_weights_are_rejected_and_deleted(hub, tmp_path):
    weights = _publish(hub, tmp_path, "org/corrupt")
    hub.corrupt(WEIGHTS)
    with pytest.raises(IntegrityError, match=r"org/corrupt/model\.safetensors.*sha256") as err:
        fetch(_card("org/corrupt"))
    assert "deleted" in str(err.value)
    blobs = {p.name for p in _blobs(hub, "org/corrupt").iterdir()}
    assert not any(name.startswith(hashlib.sha256(weights).hexdigest()) for name in blobs)
    assert _snapshot_files(hub, "org/corrupt") == []
    assert not is_installed(_card("org/corrupt"))
    hub.reset()
    assert (fetch(_card("org/corrupt")) / "model.safetensors").read_bytes() == weights


def test_corrupted_small_file_fails_its_git_sha1(hub, tmp_path):
    _publish(hub, tmp_path, "org/corrupt-config")
    hub.corrupt("*/resolve/*/config.json")
    with pytest.raises(IntegrityError, match=r"config\.json.*git blob sha1"):
        fetch(_card("org/corrupt-config"))
    assert _snapshot_files(hub, "org/corrupt-config") == []


def test_corrupt_partial_from_an_earlier_run_is_redownloaded(hub, tmp_path):
    weights = _publish(hub, tmp_path, "org/bad-partial")
    partial = _partial(hub, "org/bad-partial", weights)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 1000)  # wrong bytes left behind by something else
    path = fetch(_card("org/bad-partial"))
    assert (path / "model.safetensors").read_bytes() == weights
    assert hub.ranges(WEIGHTS) == ["bytes=1000-", None]


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/tmp/evil.txt", "sub/../../evil.txt",
                                      "C:\\evil.txt"])
def test_path_traversal_names_are_refused_before_writing(hub, tmp_path, bad_name):
    hub.add_repo("org/evil", write_files(tmp_path / "evil", {"config.json": "{}"}),
                 extra_files={bad_name: b"pwned"})
    with pytest.raises(UnsafeFilenameError, match="Refusing") as err:
        fetch(_card("org/evil"))
    assert repr(bad_name) in str(err.value)
    assert hub.count("*/resolve/*") == 0
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert not Path("/tmp/evil.txt").exists()


# -- offline ----------------------------------------------------------------------------
def test_offline_mode_uses_cache_and_names_missing_files(hub, tmp_path, monkeypatch):
    _publish(hub, tmp_path, "org/offline")
    fetch(_card("org/offline", files=("*.json", "*.safetensors")))
    hub.reset()
    offline = Settings(offline=True)
    path = fetch(_card("org/offline", files=("*.json", "*.safetensors")), settings=offline)
    assert (path / "model.safetensors").is_file()
    with pytest.raises(OfflineMissingFilesError) as err:
        fetch(_card("org/offline"), settings=offline)
    assert err.value.missing == ["README.md"]
    assert "README.md" in str(err.value) and "offline" in str(err.value).lower()
    assert isinstance(err.value, OfflineError)
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert isinstance(err.value.__cause__, LocalEntryNotFoundError)
    with pytest.raises(OfflineMissingFilesError) as err:
        fetch(_card("org/never-fetched", files=("model.onnx",)), settings=offline)
    assert err.value.missing == ["model.onnx"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the environment switch works too
    with pytest.raises(OfflineMissingFilesError):
        fetch(_card("org/offline"))
    assert hub.log == []  # not one request while offline


def test_unreachable_hub_falls_back_to_a_complete_cache(hub, tmp_path, monkeypatch):
    _publish(hub, tmp_path, "org/unreachable")
    path = fetch(_card("org/unreachable"))
    with socket_closed_port() as dead:
        monkeypatch.setenv("HF_ENDPOINT", dead)
        assert fetch(_card("org/unreachable")) == path
        with pytest.raises(DownloadError, match="Cannot reach") as err:
            fetch(_card("org/unreachable-never"))
    import httpx2

    assert isinstance(err.value.__cause__, httpx2.ConnectError)


@contextlib.contextmanager
def socket_closed_port():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connections are refused
    yield f"http://127.0.0.1:{port}"


# -- auth and not found -------------------------------------------------------------------
def test_gated_repo_without_token_gives_clear_message(hub, tmp_path):
    from huggingface_hub.errors import GatedRepoError

    _publish(hub, tmp_path, "org/gated")
    hub.add_repo("org/gated", tmp_path / "org_gated", gated=True, token="hf_right")
    with pytest.raises(GatedRepoAccessError, match="is gated: accept its terms") as err:
        fetch(_card("org/gated"))
    assert "ocula models login" in str(err.value) and "HF_TOKEN" in str(err.value)
    assert isinstance(err.value.__cause__, GatedRepoError)
    with pytest.raises(GatedRepoAccessError, match="has no access"):
        fetch(_card("org/gated"), token="hf_wrong")
    assert not is_installed(_card("org/gated"))
    assert (fetch(_card("org/gated"), token="hf_right") / "model.safetensors").is_file()


def test_repo_not_found(hub):
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(HubRepoNotFoundError, match="'org/nope' was not found") as err:
        fetch(_card("org/nope"))
    assert isinstance(err.value.__cause__, RepositoryNotFoundError)


def test_revision_not_found(hub, tmp_path):
    from huggingface_hub.errors import RevisionNotFoundError

    _publish(hub, tmp_path, "org/revs")
    with pytest.raises(HubRevisionNotFoundError, match="'v9.9' of 'org/revs'") as err:
        fetch(_card("org/revs", revision="v9.9"))
    assert isinstance(err.value.__cause__, RevisionNotFoundError)


# -- server errors and dropped connections ---------------------------------------------------
def test_server_errors_are_retried_then_succeed(hub, tmp_path, fast_retries):
    weights = _publish(hub, tmp_path, "org/flaky")
    hub.fail("/api/models/org/flaky/revision/*", times=1)
    hub.fail(WEIGHTS, times=2, method="HEAD")
    hub.fail(WEIGHTS, times=1, status=503, method="GET")
    path = fetch(_card("org/flaky"))
    assert (path / "model.safetensors").read_bytes() == weights
    statuses = [r.status for r in hub.requests(WEIGHTS)[:5]]
    assert statuses == [500, 500, 200, 503, 200]


def test_persistent_server_error_names_the_file(hub, tmp_path, fast_retries):
    from huggingface_hub.errors import HfHubHTTPError

    _publish(hub, tmp_path, "org/broken")
    hub.fail(WEIGHTS, times=None, status=502, method="GET")
    with pytest.raises(DownloadError, match=r"HTTP 502 for org/broken/model\.safetensors "
                                            r"after 4 attempts") as err:
        fetch(_card("org/broken"))
    assert isinstance(err.value.__cause__, HfHubHTTPError)
    assert hub.count(WEIGHTS, "GET") == 4
    assert not is_installed(_card("org/broken"))


@pytest.mark.slow  # huggingface_hub's http_get waits 1 s before each of its 5 resumes
def test_connection_dropping_for_good_is_reported_with_the_file(hub, tmp_path):
    _publish(hub, tmp_path, "org/dropping", weights_size=600_000)
    hub.drop_after(WEIGHTS, offset=250_000, times=None)
    with pytest.raises(DownloadError, match=r"connection dropped while downloading "
                                            r"org/dropping/model\.safetensors") as err:
        fetch(_card("org/dropping"))
    assert "resume" in str(err.value)
    kept = 250_000 - 250_000 % transfer.CHUNK_BYTES
    assert kept > 0
    assert hub.ranges(WEIGHTS) == [None] + [f"bytes={kept}-"] * 5  # resumed, never restarted
    weights = hub.file("org/dropping", "model.safetensors").data
    assert _partial(hub, "org/dropping", weights).stat().st_size == kept
    assert not is_installed(_card("org/dropping"))
    hub.reset()
    assert (fetch(_card("org/dropping")) / "model.safetensors").read_bytes() == weights
    assert hub.ranges(WEIGHTS) == [f"bytes={kept}-"]


# -- disk -------------------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_disk_full_gives_clear_error_and_nothing_installed(hub, tmp_path):
    weights = _publish(hub, tmp_path, "org/full")
    partial = _partial(hub, "org/full", weights)
    partial.parent.mkdir(parents=True)
    # The kernel answers every write to /dev/full with ENOSPC: a real "disk full" for
    # exactly this file, without touching huggingface_hub.
    partial.symlink_to("/dev/full")
    with pytest.raises(DiskFullError, match="Not enough disk space") as err:
        fetch(_card("org/full"))
    assert "model.safetensors" in str(err.value) and str(hub.cache_dir) in str(err.value)
    assert isinstance(err.value.__cause__, OSError)
    assert not is_installed(_card("org/full"))
    assert "model.safetensors" not in _snapshot_files(hub, "org/full")
    partial.unlink()
    assert (fetch(_card("org/full")) / "model.safetensors").read_bytes() == weights


@contextlib.contextmanager
def _unprivileged():
    """Root ignores file permissions: act as `nobody` for the block when running as root."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_read_only_cache_folder_gives_clear_error(hub, tmp_path, monkeypatch):
    _publish(hub, tmp_path, "org/readonly")
    cache = Path(tempfile.mkdtemp(prefix="ocula-ro-cache-"))
    try:
        cache.chmod(0o555)
        monkeypatch.setenv("HF_TOKEN", "hf_anonymous")  # the token file is root-only
        with _unprivileged(), pytest.raises(CacheNotWritableError, match="not writable") as err:
            fetch(_card("org/readonly"), settings=Settings(cache_dir=str(cache)))
        assert str(cache) in str(err.value) and "cache_dir" in str(err.value)
        assert list(cache.iterdir()) == []
    finally:
        cache.chmod(0o755)
        cache.rmdir()


def test_cache_path_blocked_by_a_file(hub, tmp_path):
    _publish(hub, tmp_path, "org/blocked")
    (tmp_path / "not-a-folder").write_text("x")
    bad = Settings(cache_dir=str(tmp_path / "not-a-folder" / "cache"))
    with pytest.raises(CacheNotWritableError, match="not-a-folder"):
        fetch(_card("org/blocked"), settings=bad)


def test_cancel_before_start_and_between_files(hub, tmp_path):
    _publish(hub, tmp_path, "org/cancel-early")
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        fetch(_card("org/cancel-early"), cancel=cancel)
    assert hub.log == []
    cancel = CancelToken()
    done_files: list[str] = []

    def stop_after_first_file(p):
        if p.item and p.total and p.done == p.total and p.item not in done_files:
            done_files.append(p.item)
            cancel.cancel()

    with pytest.raises(Cancelled):
        fetch(_card("org/cancel-early"), progress=stop_after_first_file, cancel=cancel)
    assert len(done_files) == 1 and not is_installed(_card("org/cancel-early"))
    # ... and a later run completes it
    thread_errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(thread_errors, "org/cancel-early"))
    worker.start()
    worker.join(30)
    assert thread_errors == [] and is_installed(_card("org/cancel-early"))


def _capture(errors: list[BaseException], repo: str) -> None:
    try:
        fetch_repo(repo)
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
