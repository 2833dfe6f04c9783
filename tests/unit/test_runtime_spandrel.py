"""spandrel backend: tiny checkpoints built from spandrel's own architecture classes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import spandrel
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from engine.catalog.card import ModelCard, Source
from engine.errors import UnsafeCheckpointError, UnsupportedModelError
from engine.runtimes import load_runner
from engine.runtimes.spandrel_backend import SpandrelRunner


def restore_card(path: Path, **extra) -> ModelCard:
    return ModelCard(
        id=f"local:{path.name}",
        name=path.name,
        tasks=("restore",),
        runtime="spandrel",
        source=Source.LOCAL,
        local_path=str(path),
        **extra,
    )


def tiny_compact(scale: int = 2) -> Compact:
    torch.manual_seed(0)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale).eval()


def tiny_esrgan() -> ESRGAN:
    torch.manual_seed(0)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2).eval()


def image(h=12, w=10, seed=2) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_compact_checkpoint_matches_the_module_built(tmp_path, suffix):
    module = tiny_compact()
    path = tmp_path / f"compact{suffix}"
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    runner = load_runner(restore_card(path), device="cpu")
    assert isinstance(runner, SpandrelRunner)
    assert runner.architecture == "RealESRGAN Compact" and runner.scale == 2
    assert runner.supports_half and runner.supports_bfloat16
    assert runner.size_requirements.multiple_of == 1 and runner.size_requirements.minimum == 0
    assert runner.size_requirements.square is False
    assert runner.tiling == spandrel.ModelTiling.SUPPORTED
    assert runner.placement.device == "cpu" and runner.placement.precision == "fp32"
    x = image()
    out = runner.forward({"pixel_values": x.numpy()})
    with torch.no_grad():
        expected = module(x).clamp(0, 1)  # spandrel guarantees the [0, 1] range
    assert out.reconstruction.shape == (1, 3, 24, 20)
    torch.testing.assert_close(out.reconstruction, expected, rtol=0, atol=0)
    assert isinstance(runner.module, Compact)
    assert runner.memory_bytes == sum(p.numel() * 4 for p in module.parameters())


def test_esrgan_wrapped_pth_in_a_folder(tmp_path):
    module = tiny_esrgan()
    torch.save({"params_ema": module.state_dict()}, tmp_path / "RRDB_x2.pth")  # BasicSR layout
    runner = load_runner(restore_card(tmp_path), device="cpu")
    assert runner.architecture == "ESRGAN" and runner.scale == 2
    x = image(8, 8)
    with torch.no_grad():
        expected = module(x).clamp(0, 1)
    torch.testing.assert_close(
        runner.forward({"pixel_values": x}).reconstruction, expected, rtol=0, atol=0
    )


def test_precision_fp16_on_cpu_falls_back_bf16_runs(tmp_path):
    module = tiny_compact()
    path = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path)
    fp16 = load_runner(restore_card(path), device="cpu", precision="fp16")
    assert fp16.placement.precision == "fp32" and "fp16 on cpu" in fp16.placement.fallback
    bf16 = load_runner(restore_card(path), device="cpu", precision="bf16")
    assert (
        bf16.placement.precision == "bf16"
        and next(bf16.module.parameters()).dtype == torch.bfloat16
    )
    out = bf16.forward({"pixel_values": image()}).reconstruction
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, fp16.forward({"pixel_values": image()}).reconstruction, atol=0.05, rtol=0
    )


def test_malicious_pth_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({**tiny_compact().state_dict(), "x": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_runner(restore_card(path), device="cpu")
    assert not marker.exists()


def test_unknown_architecture_and_empty_folder(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UnsupportedModelError, match="does not recognise"):
        load_runner(restore_card(path), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsupportedModelError, match="no checkpoint"):
        load_runner(restore_card(empty), device="cpu")


def test_release(tmp_path):
    path = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_compact().state_dict().items()}, path)
    runner = load_runner(restore_card(path), device="cpu")
    runner.release()
    assert runner.module is None
    with pytest.raises(RuntimeError, match="released"):
        runner.forward({"pixel_values": image()})
