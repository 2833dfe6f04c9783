"""File checks against hub metadata: sha256 for LFS files, git blob sha1 for the rest."""
from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from engine.errors import IntegrityError
from engine.hub.integrity import Expected, file_digests, verify


def test_git_sha1_matches_git_itself(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello world\n")
    _, sha1 = file_digests(path, sha256=False, git_sha1=True)
    if shutil.which("git"):
        want = subprocess.run(["git", "hash-object", str(path)], capture_output=True,
                              text=True, check=True).stdout.strip()
    else:  # the documented value for this content
        want = "3b18e512dba79e4c8300dd08aeb37f8e728b8dad"
    assert sha1 == want


def test_expected_prefers_lfs_sha256_then_etag_then_blob_id():
    sha = "ab" * 32
    assert Expected.from_hub(size=3, lfs_sha256=sha.upper(), blob_id="c" * 40, etag=None) == \
        Expected(3, sha256=sha)
    assert Expected.from_hub(size=3, lfs_sha256=None, blob_id=None, etag=sha).sha256 == sha
    assert Expected.from_hub(size=3, lfs_sha256=None, blob_id="c" * 40, etag="d" * 40) == \
        Expected(3, git_sha1="c" * 40)
    assert Expected.from_hub(size=3, lfs_sha256=None, blob_id=None, etag="d" * 40) == \
        Expected(3, git_sha1="d" * 40)
    assert Expected.from_hub(size=3, lfs_sha256=None, blob_id=None, etag="W/x") == Expected(3)


def test_verify_checks_size_and_digest(tmp_path):
    path = tmp_path / "w.bin"
    data = bytes(range(256)) * 10
    path.write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    verify(path, Expected(len(data), sha256=good), label="org/x/w.bin")
    with pytest.raises(IntegrityError, match="org/x/w.bin: downloaded 2560 bytes .* 2561"):
        verify(path, Expected(len(data) + 1, sha256=good), label="org/x/w.bin")
    with pytest.raises(IntegrityError, match="org/x/w.bin: sha256"):
        verify(path, Expected(len(data), sha256="0" * 64), label="org/x/w.bin")
    with pytest.raises(IntegrityError, match="git blob sha1"):
        verify(path, Expected(len(data), git_sha1="0" * 40), label="org/x/w.bin")
