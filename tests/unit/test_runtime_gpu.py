"""CUDA paths of the three backends. Skipped (with the reason) on machines without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.catalog.card import ModelCard, Source
from engine.devices import discover
from engine.runtimes import RunnerCache, load_runner
from tests.tolerances import fp32_rtol

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (torch.cuda.is_available() is False)",
    ),
]


def card(path: Path, runtime: str, tasks=("features",)) -> ModelCard:
    return ModelCard(
        id=f"local:{path.name}-{runtime}",
        name=path.name,
        tasks=tasks,
        runtime=runtime,
        source=Source.LOCAL,
        local_path=str(path),
    )


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    from tests.fixtures.repos import tiny_vit_classifier

    return tiny_vit_classifier(tmp_path_factory.mktemp("vit"))


def test_discover_lists_the_gpu():
    report = discover(refresh=True)
    assert report.has_cuda and report.cuda[0].total_bytes > 0
    assert report.cuda[0].name == torch.cuda.get_device_name(0)
    assert (
        report.cuda[0].free_bytes is None or report.cuda[0].free_bytes <= report.cuda[0].total_bytes
    )


def test_transformers_auto_runs_fp16_on_cuda_and_matches_cpu(vit_folder):
    gpu = load_runner(card(vit_folder, "transformers"))
    assert gpu.placement.device == "cuda:0" and gpu.placement.precision == "fp16"
    assert gpu.placement.fallback is None
    assert next(gpu.module.parameters()).dtype == torch.float16
    cpu = load_runner(card(vit_folder, "transformers"), device="cpu")
    x = torch.rand(2, 3, 32, 32)
    out = gpu.forward({"pixel_values": x})
    assert out.logits.device.type == "cpu" and out.logits.dtype == torch.float32
    torch.testing.assert_close(
        out.logits, cpu.forward({"pixel_values": x}).logits, atol=2e-2, rtol=2e-2
    )
    eager = load_runner(card(vit_folder, "transformers"), attention=True)
    maps = eager.forward({"pixel_values": x, "output_attentions": True}).attentions
    assert maps[0].device.type == "cpu" and maps[0].shape[-1] == 17


def test_release_returns_cuda_memory(vit_folder):
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    cache = RunnerCache(1024)
    runner = cache.get_or_load(card(vit_folder, "transformers"), device="cuda", precision="fp32")
    assert torch.cuda.memory_allocated() > before
    cache.release()
    del runner
    assert torch.cuda.memory_allocated() <= before


def test_spandrel_fp16_on_cuda(tmp_path):
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    module = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    path = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path)
    runner = load_runner(card(path, "spandrel", ("restore",)), device="cuda")
    assert runner.placement.device == "cuda:0" and runner.placement.precision == "fp16"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        expected = module(x).clamp(0, 1)
    out = runner.forward({"pixel_values": x}).reconstruction
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, expected, atol=1e-2, rtol=0)


def test_onnx_on_cuda_or_fallback_announced(tmp_path):
    import onnxruntime

    module = torch.nn.Conv2d(3, 4, 3)
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        module,
        (torch.rand(1, 3, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["pixel_values"],
        output_names=["logits"],
    )
    runner = load_runner(card(path, "onnx"), device="cuda")
    actual = runner.sessions["model"].get_providers()[0]
    assert runner.placement.provider == actual
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        if actual != "CUDAExecutionProvider":
            assert "runs on CPUExecutionProvider" in runner.placement.fallback
        else:
            assert runner.placement.device == "cuda:0" and runner.placement.fallback is None
    else:
        assert "no CUDAExecutionProvider" in runner.placement.fallback
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        # ONNX Runtime's CUDA EP runs fp32 convolutions in TF32 by default (its use_tf32 option,
        # on Ampere and later): inputs keep 10 mantissa bits, so each product is off by up to
        # 2·2**-10 of its size (truncation), against fp32 on the CPU: the conv's terms, summed
        # as sizes, times that, plus the 27-term fp32 reduction (tests/tolerances.py).
        terms = torch.nn.functional.conv2d(x.abs(), module.weight.abs(), module.bias.abs())
        atol = float(terms.max()) * (2 * 2.0**-10 + fp32_rtol(27))
        torch.testing.assert_close(
            runner.forward({"pixel_values": x}).logits, module(x), atol=atol, rtol=0
        )
