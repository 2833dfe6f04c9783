"""Repo file names and ETags are untrusted input: only plain relative names pass."""
from __future__ import annotations

import pytest

from engine.hub.http_errors import UnsafeFilenameError
from engine.hub.safe_paths import check_blob_name, check_repo_filename


@pytest.mark.parametrize("name", [
    "config.json", "model.safetensors", "onnx/model_fp16.onnx", "a/b/c/d.txt", "..hidden",
    "weights..bin",
])
def test_plain_relative_names_pass(name, tmp_path):
    check_repo_filename("org/x", name, tmp_path / "snap")


@pytest.mark.parametrize("name", [
    "../x", "a/../../x", "/etc/passwd", "C:\\x", "C:x", "a\\..\\x", "", "a//b", "./a", "a/.",
    "a/\x00b", "\\\\host\\share\\x", "a/..",
])
def test_escaping_or_odd_names_are_refused(name, tmp_path):
    with pytest.raises(UnsafeFilenameError, match="Refusing to download 'org/x'"):
        check_repo_filename("org/x", name, tmp_path / "snap")


def test_blob_names_must_be_bare_hashes():
    check_blob_name("org/x", "f", "a" * 64)
    check_blob_name("org/x", "f", "0123456789abcdef0123456789abcdef01234567")
    for etag in ("../a", "a/b", "", "..", "x" * 200, "a\\b"):
        with pytest.raises(UnsafeFilenameError, match="ETag"):
            check_blob_name("org/x", "f", etag)
