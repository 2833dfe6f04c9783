"""Messages, not tracebacks (issue 16): an output folder that cannot be written, and hub
models used offline from the cache."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from tests.fixtures.tiny_detectors import build_detr, noise_image

VIT = "tiny-org/vit-out"
DETR = "tiny-org/detr-offline"


@pytest.fixture
def vit(hub, tmp_path_factory):
    from tests.fixtures.repos import tiny_vit_classifier

    hub.add_repo(VIT, tiny_vit_classifier(tmp_path_factory.mktemp("vit")),
                 pipeline_tag="image-classification", library_name="transformers",
                 license="apache-2.0")
    return hub


@contextlib.contextmanager
def read_only_folder(tmp_path: Path):
    """A folder nothing can be written to: a read-only tmpfs for root (who ignores
    permissions), else a folder without write permission."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                               str(folder)], check=False, capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"root cannot mount a read-only tmpfs here: {done.stderr.strip()!r}")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=False, capture_output=True)
    else:
        folder.chmod(0o500)
        try:
            yield folder
        finally:
            folder.chmod(0o700)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_explain_out_on_a_file_or_a_read_only_folder_is_one_line(vit, tmp_path, capsys):
    image = tmp_path / "photo.png"
    noise_image(40, 30, seed=3).save(image)
    existing = tmp_path / "taken"
    existing.write_text("a file, not a folder")
    explain = ["explain", str(image), "--model", VIT, "--quiet", "--out"]
    assert main([*explain, str(existing)]) == 1
    assert "cannot create the output folder" in one_line_error(capsys)
    assert main([*explain, str(existing / "maps")]) == 1  # a folder under a file
    assert str(existing / "maps") in one_line_error(capsys)
    assert existing.read_text() == "a file, not a folder"
    with read_only_folder(tmp_path) as folder:
        assert main([*explain, str(folder)]) == 1
        assert str(folder) in one_line_error(capsys)
        assert main([*explain, str(folder / "maps")]) == 1
        assert "cannot create the output folder" in one_line_error(capsys)
        assert main([*explain, str(tmp_path / "maps"), "--save-recipe",
                     str(folder / "job.toml")]) == 1
        assert "the recipe cannot be saved" in one_line_error(capsys)


@pytest.fixture
def offline_detr(hub, tmp_path, tmp_path_factory, monkeypatch, capsys):
    """A hub detector pulled into the cache, then offline mode switched on (the variable,
    and huggingface_hub's constant that it read at import)."""
    from huggingface_hub import constants

    sha = hub.add_repo(DETR, build_detr(tmp_path_factory.mktemp("detr")),
                       pipeline_tag="object-detection", library_name="transformers",
                       license="apache-2.0")
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    assert main(["models", "pull", DETR, "--quiet"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.reset()
    return sha


def test_a_hub_repo_runs_offline_from_the_cache(offline_detr, hub, tmp_path, capsys):
    sha = offline_detr
    image = tmp_path / "photo.png"
    noise_image(64, 48, seed=1).save(image)
    out = tmp_path / "o"
    code = main(["detect", str(image), "--model", DETR, "--out", str(out), "--threshold", "0",
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"cached revision {sha[:12]} of {DETR}" in captured.err  # which revision
    summary = json.loads(captured.out)
    assert (summary["done"], summary["failed"]) == (1, 0)
    assert hub.log == []  # not one request

    assert main(["models", "info", DETR, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["revision"] == sha and info["installed"] is True
    assert info["tasks"] == ["detect"] and info["params"]  # from config.json and the header
    assert main(["models", "info", f"{DETR}@{sha}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["revision"] == sha

    assert main(["models", "info", f"{DETR}@v9"]) == 1  # a revision the cache lacks
    err = one_line_error(capsys)
    assert "'v9' is not in the model cache" in err and sha[:12] in err
    assert main(["models", "info", "tiny-org/never-pulled"]) == 1
    assert "not in the model cache" in one_line_error(capsys)
    assert hub.log == []


def test_offline_in_a_fresh_process_with_hf_hub_offline(offline_detr, tmp_path):
    """HF_HUB_OFFLINE=1 as the user sets it: read by huggingface_hub at its import."""
    image = tmp_path / "photo.png"
    noise_image(32, 32, seed=2).save(image)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")  # no hub
    done = subprocess.run([sys.executable, "-m", "engine.cli", "detect", str(image), "--model",
                           DETR, "--out", str(tmp_path / "o"), "--quiet"],
                          cwd=Path(__file__).resolve().parents[2], env=env,
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "cached revision" in done.stderr and "Traceback" not in done.stderr
