"""`ocula models optimize` makes a verified ONNX export, and later CPU runs use it (the
fast path announces itself) with the same restoration as the torch model."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.catalog.catalog import load_catalog
from engine.cli import main
from engine.media.image import read_image
from engine.runtimes import load_runner
from engine.settings import Settings
from engine.tasks.restore import restore


def test_optimize_then_cpu_runs_use_the_verified_onnx(tmp_path, capsys):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(1)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    checkpoint = tmp_path / "compact-x2.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    assert main(["models", "import", str(checkpoint), "--json"]) == 0
    model_id = json.loads(capsys.readouterr().out)["id"]
    card = load_catalog().resolve(model_id)

    torch_runner = load_runner(card, device="cpu", precision="fp32")
    assert torch_runner.module is not None  # no export yet: torch

    assert main(["models", "optimize", model_id, "--json"]) == 0
    onnx_path = json.loads(capsys.readouterr().out)["onnx"]
    assert onnx_path.endswith(".onnx")

    fast = load_runner(card, device="cpu", precision="fp32")
    assert fast.module is None and any("fast path" in n for n in fast.notes)
    off = Settings(use_onnx_fast_path=False)
    assert load_runner(card, device="cpu", precision="fp32", settings=off).module is not None
    assert load_runner(card, device="cpu", precision="fp32", attention=True).module is not None

    photo = tmp_path / "p.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(photo)
    image = read_image(photo)
    a = restore(torch_runner, image, tile_size=None).image.astype(int)
    b = restore(fast, image, tile_size=None).image.astype(int)
    assert a.shape == b.shape == (80, 112, 3)
    assert np.abs(a - b).max() <= 1  # the same picture, to 8-bit rounding
