"""Video through the built-in task handlers and real (tiny) models: `ocula run` on a clip
keeps every frame, the timing and the audio, for detection and for a spandrel upscaler."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.cli import main
from tests.fixtures.media import make_video
from tests.fixtures.tiny_detectors import build_detr
from tests.integration.test_video_pipeline import decoded, packets

pytestmark = pytest.mark.slow


def test_detect_video_with_tiny_detr_keeps_frames_and_audio(hub, tmp_path, capsys):
    hub.add_repo("tiny-org/detr-video", build_detr(tmp_path / "detr"),
                 pipeline_tag="object-detection", library_name="transformers")
    video = make_video(tmp_path / "clip.mp4", seconds=1.0, size=(160, 120), subtitles=False)
    out = tmp_path / "out"
    code = main(["run", "detect", str(video.path), "--model", "tiny-org/detr-video",
                 "--out", str(out), "--threshold", "0.0", "--json"])
    assert code == 0, capsys.readouterr().err
    result = out / "clip.overlay.mp4"
    in_pts, _, in_tb = decoded(video.path)
    out_pts, frames, out_tb = decoded(result)
    assert len(frames) == video.frames
    assert [p * out_tb for p in out_pts] == [p * in_tb for p in in_pts]
    assert packets(result, "audio") == packets(video.path, "audio") != []
    rows = [json.loads(line) for line in (out / "clip.frames.jsonl").read_text().splitlines()]
    assert len(rows) == video.frames and all(r["result"]["boxes"] for r in rows)


def test_restore_video_with_imported_spandrel_checkpoint(tmp_path, capsys):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    checkpoint = tmp_path / "tiny-compact-x2.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    assert main(["models", "import", str(checkpoint), "--json"]) == 0
    model_id = json.loads(capsys.readouterr().out)["id"]

    video = make_video(tmp_path / "clip.mp4", seconds=0.6, size=(96, 64), subtitles=False)
    out = tmp_path / "out"
    code = main(["run", "restore", str(video.path), "--model", model_id, "--out", str(out),
                 "--json"])
    assert code == 0, capsys.readouterr().err
    result = out / "clip.restored.mp4"
    _, frames, _ = decoded(result)
    assert len(frames) == video.frames
    assert frames[0].shape[:2] == (128, 192)  # x2
    assert packets(result, "audio") == packets(video.path, "audio") != []
    with av.open(str(result)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert np.isfinite(frames[-1]).all()
