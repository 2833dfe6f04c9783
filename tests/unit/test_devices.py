"""engine.devices: discovery on this machine and placement planning for given reports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine import devices
from engine.catalog.card import ModelCard
from engine.devices import CudaDevice, DeviceReport, describe_plan, describe_report, discover, plan
from engine.errors import DeviceError

GIB = 2**30


def card(runtime="transformers", **extra) -> ModelCard:
    return ModelCard(id="m", name="M", tasks=("detect",), runtime=runtime, **extra)


def report(
    *,
    cuda=(),
    mps=False,
    mps_bf16=False,
    providers=("CPUExecutionProvider",),
    torch_cuda_build=None,
) -> DeviceReport:
    return DeviceReport(
        cpu_name="cpu",
        cpu_cores=8,
        cpu_cores_available=8,
        cuda=tuple(cuda),
        mps=mps,
        mps_bf16=mps_bf16,
        onnx_providers=tuple(providers),
        versions={"torch": "2.x"},
        torch_cuda_build=torch_cuda_build,
    )


def gpu(index=0, capability=(8, 6), free=20 * GIB, name="RTX") -> CudaDevice:
    return CudaDevice(
        index=index,
        name=name,
        total_bytes=24 * GIB,
        free_bytes=free,
        capability=capability,
        supports_bf16=capability >= (8, 0),
    )


# -- this machine ------------------------------------------------------------------------


def test_discover_this_machine():
    import onnxruntime
    import torch

    found = discover(refresh=True)
    assert discover() is found  # cached
    assert found.cpu_cores >= found.cpu_cores_available >= 1
    assert found.has_cuda == torch.cuda.is_available()
    assert len(found.cuda) == torch.cuda.device_count()
    assert found.mps == (torch.backends.mps.is_available())
    assert set(found.onnx_providers) == set(onnxruntime.get_available_providers())
    assert torch.__version__.startswith(found.versions["torch"].split("+")[0])
    assert found.versions["onnxruntime"] == onnxruntime.__version__
    text = describe_report(found)
    assert "CPU:" in text and "ONNX Runtime providers:" in text and "CPUExecutionProvider" in text
    assert ("CUDA 0:" in text) == found.has_cuda


def test_real_cuda_request_on_this_machine_is_announced():
    found = discover()
    if found.has_cuda:
        pytest.skip("this machine has CUDA")
    placement = plan(card(), device="cuda", precision="fp16")
    assert placement.device == "cpu" and placement.precision == "fp32"
    assert "cuda requested but no CUDA device found" in placement.fallback
    assert "fp16 on cpu" in placement.fallback
    assert "fallback:" in placement.describe()


def test_importing_devices_and_runtimes_does_not_import_torch():
    code = (
        "import sys, engine.devices, engine.runtimes, engine.runtimes.runner_cache; "
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'spandrel') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- planning torch backends ---------------------------------------------------------------


def test_auto_prefers_cuda_fp16_then_mps_then_cpu():
    assert plan(card(), report=report(cuda=[gpu()])).device == "cuda:0"
    assert plan(card(), report=report(cuda=[gpu()])).precision == "fp16"
    on_mps = plan(card(), report=report(mps=True))
    assert (on_mps.device, on_mps.precision, on_mps.fallback) == ("mps", "fp32", None)
    on_cpu = plan(card(), report=report())
    assert (on_cpu.device, on_cpu.precision, on_cpu.fallback) == ("cpu", "fp32", None)


def test_cuda_requests_without_cuda_or_with_wrong_index():
    placement = plan(card(), device="cuda", report=report(torch_cuda_build=None))
    assert placement.device == "cpu" and "CPU-only build" in placement.fallback
    placement = plan(card(), device="GPU", report=report(torch_cuda_build="12.4"))  # alias
    assert placement.device == "cpu" and "driver reports none" in placement.fallback
    placement = plan(card(), device="cuda:3", report=report(cuda=[gpu()]))
    assert placement.device == "cuda:0" and "only 1 CUDA device" in placement.fallback
    placement = plan(card(), device="cuda:1", report=report(cuda=[gpu(0), gpu(1, name="B")]))
    assert placement.device == "cuda:1" and placement.fallback is None
    placement = plan(card(), device="mps", report=report())
    assert placement.device == "cpu" and "mps requested" in placement.fallback


def test_precision_support_per_device_and_model():
    old = gpu(capability=(7, 5))  # Turing: fp16 yes, bf16 no
    placement = plan(card(), device="cuda", precision="bf16", report=report(cuda=[old]))
    assert placement.precision == "fp32" and "no bf16 support" in placement.fallback
    ampere = report(cuda=[gpu()])
    assert plan(card(), device="cuda", precision="bf16", report=ampere).precision == "bf16"
    assert plan(card(), device="cpu", precision="bf16", report=ampere).precision == "bf16"
    fp32_only = card(sidecar={"precisions": ["fp32"]})
    auto = plan(fp32_only, report=ampere)
    assert (auto.precision, auto.fallback) == ("fp32", None)  # auto chooses, nothing to announce
    asked = plan(fp32_only, precision="fp16", report=ampere)
    assert asked.precision == "fp32" and "does not support fp16" in asked.fallback
    bf16_model = card(sidecar={"precisions": ["fp32", "bf16"]})
    assert plan(bf16_model, report=ampere).precision == "bf16"
    mps = plan(card(), device="mps", precision="bf16", report=report(mps=True, mps_bf16=False))
    assert mps.precision == "fp32" and "mps has no bf16" in mps.fallback
    assert devices.device_precisions("cpu", ampere) == ("fp32", "bf16")


def test_auto_keeps_big_models_off_a_full_gpu():
    big = card(params=3_000_000_000)  # ~8.4 GB in fp16 by the card's estimate
    placement = plan(big, report=report(cuda=[gpu(free=2 * GIB)]))
    assert placement.device == "cpu" and "MB free; running on cpu" in placement.fallback
    assert plan(big, report=report(cuda=[gpu(free=20 * GIB)])).device == "cuda:0"
    # an explicit request is honoured: the user asked for the GPU
    assert plan(big, device="cuda", report=report(cuda=[gpu(free=2 * GIB)])).device == "cuda:0"


def test_bad_requests_raise_device_errors():
    with pytest.raises(DeviceError, match="not understood"):
        plan(card(), device="tpu", report=report())
    with pytest.raises(DeviceError, match="GPU number"):
        plan(card(), device="cuda:x", report=report())
    with pytest.raises(DeviceError, match="Precision"):
        plan(card(), precision="int4", report=report())
    with pytest.raises(DeviceError, match="ONNX Runtime provider"):
        plan(card(), device="tensorrt", report=report())


# -- planning ONNX ---------------------------------------------------------------------------


def test_onnx_provider_choice_and_fallbacks():
    cpu_only = report()
    placement = plan(card("onnx"), device="cuda", report=cpu_only)
    assert placement.provider == "CPUExecutionProvider" and placement.device == "cpu"
    assert (
        "no CUDAExecutionProvider" in placement.fallback and "onnxruntime-gpu" in placement.fallback
    )
    with_cuda = report(
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    )
    auto = plan(card("onnx"), report=with_cuda)
    assert (auto.provider, auto.device, auto.fallback) == ("CUDAExecutionProvider", "cuda:0", None)
    trt = plan(card("onnx"), device="tensorrt", report=with_cuda)
    assert trt.provider == "TensorrtExecutionProvider"
    dml = plan(
        card("onnx"), report=report(providers=("DmlExecutionProvider", "CPUExecutionProvider"))
    )
    assert dml.provider == "DmlExecutionProvider" and dml.device == "directml:0"
    coreml = plan(
        card("onnx"),
        device="mps",
        report=report(providers=("CoreMLExecutionProvider", "CPUExecutionProvider")),
    )
    assert coreml.provider == "CoreMLExecutionProvider"
    bf16 = plan(card("onnx"), precision="bf16", report=cpu_only)
    assert bf16.precision == "fp32" and "bf16 is not offered" in bf16.fallback
    with pytest.raises(DeviceError, match="onnxruntime is not installed"):
        plan(card("onnx"), report=report(providers=()))


def test_describe_plan_for_doctor():
    big = card(params=100_000_000)
    ampere = report(cuda=[gpu()])
    text = describe_plan(big, plan(big, report=ampere), ampere)
    assert (
        "runs on: cuda:0 in fp16" in text and "MB free on RTX" in text and "fallback: none" in text
    )
    text = describe_plan(big, plan(big, device="cuda", report=report()), report())
    assert "fallback: cuda requested but no CUDA device found" in text
