"""`ocula models pull` shows byte progress, and after the process is killed mid-file the
next pull continues the partial file (an HTTP Range request), not from zero."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = "*/resolve/*/model.safetensors"
pytestmark = pytest.mark.slow  # a subprocess importing the CLI


def _vit_repo(folder: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=64, patch_size=16, hidden_size=192, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=384)
    ViTModel(config).save_pretrained(folder)  # ~1.8 M parameters: a 7 MB file
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def test_pull_shows_progress_and_resumes_after_kill(hub, tmp_path, capsys):
    repo = "tiny-org/vit-big"
    hub.add_repo(repo, _vit_repo(tmp_path / "vit"), pipeline_tag="image-feature-extraction",
                 library_name="transformers")
    weights = hub.file(repo, "model.safetensors", "main").data
    hub.throttle(WEIGHTS, bytes_per_s=1_500_000)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_CACHE=str(hub.cache_dir),
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", "models", "pull", repo],
                             env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    blobs = hub.cache_dir / ("models--" + repo.replace("/", "--")) / "blobs"
    deadline = time.monotonic() + 90
    partial_size = 0
    while partial_size < 1_000_000:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the pull never started downloading"
        partials = list(blobs.glob("*.incomplete")) if blobs.exists() else []
        partial_size = max((p.stat().st_size for p in partials), default=0)
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=10)
    progress = err.decode(errors="replace")
    assert "model.safetensors" in progress and "B/s" in progress  # a byte progress bar

    hub.unthrottle()
    assert main(["models", "pull", repo, "--quiet"]) == 0
    last = hub.requests(WEIGHTS, "GET")[-1]
    assert last.range is not None and last.range.startswith("bytes=")
    kept = int(last.range.split("=")[1].rstrip("-"))
    assert kept >= 1_000_000 and last.bytes_sent == len(weights) - kept
    assert main(["models", "info", repo, "--json"]) == 0
    assert '"installed": true' in capsys.readouterr().out
