"""What hardware and runtimes exist here, and what a model will really run on.

`discover()` takes stock (torch devices, ONNX Runtime providers, library versions);
`plan(card, device=..., precision=...)` turns a request ("auto", "cuda", "fp16") into
the Placement that will really run, with `fallback` saying why whenever it differs
from what was asked — never a silent switch to the CPU.

Cheap to import: torch and onnxruntime are imported inside `discover()`, so that
`ocula --help` does not pay for them.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import DeviceError, UsageError
from engine.vocabulary import PRECISION_CHOICES, split_device

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard


@dataclass(frozen=True)
class Placement:
    """What really runs a model: always shown to the user, never guessed.

    Decided by `plan()` below and carried by every Runner (engine.runtimes.base
    re-exports it): it lives here so that the runtimes import the device planner,
    never the other way round."""

    backend: str  # transformers | spandrel | onnx | facenet-pytorch
    device: str  # "cpu", "cuda:0", "mps"
    precision: str  # fp32 | fp16 | bf16
    provider: str | None = None  # ONNX Runtime execution provider actually in use
    fallback: str | None = None  # why this differs from what was asked (announced, never silent)

    def describe(self) -> str:
        where = self.provider or self.device
        text = f"{self.backend} on {where} ({self.precision})"
        if self.fallback:
            text += f" — fallback: {self.fallback}"
        return text



# ONNX Runtime execution providers by device family, best first. TensorRT is only used
# when asked for by name: it compiles an engine per input shape on first run (minutes).
ONNX_PROVIDER_FOR_DEVICE = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_ONNX_AUTO_ORDER = ("CUDAExecutionProvider", "DmlExecutionProvider")


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    total_bytes: int
    free_bytes: int | None  # None when the driver would not say
    capability: tuple[int, int]
    supports_bf16: bool

    @property
    def supports_fp16(self) -> bool:
        return self.capability >= (5, 3)  # native half arithmetic from Maxwell (sm_53) on


@dataclass(frozen=True)
class DeviceReport:
    """A snapshot of the machine as the engine sees it."""

    cpu_name: str
    cpu_cores: int  # logical cores
    cpu_cores_available: int  # usable by this process (affinity / cgroup)
    cuda: tuple[CudaDevice, ...] = ()
    mps: bool = False
    mps_bf16: bool = False
    onnx_providers: tuple[str, ...] = ()
    versions: dict[str, str | None] = field(default_factory=dict)
    torch_cuda_build: str | None = None  # CUDA version torch was built with (None: CPU build)
    problems: tuple[str, ...] = ()  # what could not be checked, in words

    @property
    def has_cuda(self) -> bool:
        return bool(self.cuda)

    def cuda_device(self, index: int) -> CudaDevice | None:
        return next((d for d in self.cuda if d.index == index), None)


# -- discovery ------------------------------------------------------------------------

_report_lock = threading.Lock()
_cached_report: DeviceReport | None = None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS / Windows have no affinity call
        return os.cpu_count() or 1


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def discover(*, refresh: bool = False) -> DeviceReport:
    """What this machine offers. Cached; `refresh=True` re-reads free memory and providers."""
    global _cached_report
    with _report_lock:
        if _cached_report is not None and not refresh:
            return _cached_report
        _cached_report = _discover()
        return _cached_report


def _discover() -> DeviceReport:
    problems: list[str] = []
    versions = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "transformers": _version("transformers"),
        "spandrel": _version("spandrel"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "huggingface_hub": _version("huggingface-hub") or _version("huggingface_hub"),
    }
    if "torch" in sys.modules or os.environ.get("OCULA_PROBE_TORCH") == "1":
        cuda, mps, mps_bf16, torch_cuda_build = _probe_torch(problems)
    else:
        # torch takes seconds to import: `ocula doctor` asks the NVIDIA driver (NVML)
        # directly and reads torch's build facts from its files instead.
        cuda, mps, mps_bf16, torch_cuda_build = _probe_without_torch(problems)
    providers: tuple[str, ...] = ()
    try:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    except ImportError:
        problems.append(
            "onnxruntime is not installed: ONNX models cannot run "
            "(pip install 'ocula[cpu]' or 'ocula[gpu]')"
        )
    return DeviceReport(
        cpu_name=_cpu_name(),
        cpu_cores=os.cpu_count() or 1,
        cpu_cores_available=_available_cores(),
        cuda=tuple(cuda),
        mps=mps,
        mps_bf16=mps_bf16,
        onnx_providers=providers,
        versions=versions,
        torch_cuda_build=torch_cuda_build,
        problems=tuple(problems),
    )



def _probe_torch(problems: list[str]) -> tuple[list[CudaDevice], bool, bool, str | None]:
    """CUDA and MPS as torch sees them (used once torch is loaded anyway)."""
    cuda: list[CudaDevice] = []
    mps = mps_bf16 = False
    torch_cuda_build = None
    try:
        import torch

        torch_cuda_build = torch.version.cuda
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                try:
                    free, total = torch.cuda.mem_get_info(index)
                except RuntimeError as exc:  # busy/exclusive GPU: still list it
                    free, total = None, props.total_memory
                    problems.append(f"cuda:{index}: free memory unknown ({exc})")
                capability = (props.major, props.minor)
                cuda.append(CudaDevice(index=index, name=props.name, total_bytes=int(total),
                                       free_bytes=None if free is None else int(free),
                                       capability=capability,
                                       supports_bf16=capability >= (8, 0)))
        mps_backend = getattr(torch.backends, "mps", None)
        mps = bool(mps_backend and mps_backend.is_available())
        if mps:
            # bf16 on MPS needs macOS 14+; torch refuses the dtype otherwise.
            try:
                torch.zeros(1, dtype=torch.bfloat16, device="mps")
                mps_bf16 = True
            except (RuntimeError, TypeError):
                mps_bf16 = False
    except ImportError as exc:
        problems.append(f"torch is not importable ({exc})")
    return cuda, mps, mps_bf16, torch_cuda_build


def _torch_cuda_build_from_files() -> str | None:
    """torch.version.cuda without importing torch (torch/version.py holds it as text)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return match.group(1) if match else None


def _probe_without_torch(problems: list[str]) -> tuple[list[CudaDevice], bool, bool, str | None]:
    """Fast discovery for `ocula doctor`: NVML for NVIDIA GPUs, platform facts for MPS."""
    torch_cuda_build = _torch_cuda_build_from_files()
    cuda: list[CudaDevice] = []
    if torch_cuda_build:
        try:
            cuda = _nvml_devices()
        except OSError:
            pass  # no NVIDIA driver on this machine: no CUDA device to list
    mac_arm = sys.platform == "darwin" and platform.machine() == "arm64"
    return cuda, mac_arm, False, torch_cuda_build


def _nvml_devices() -> list[CudaDevice]:
    """NVIDIA GPUs through the driver's NVML library (ctypes; no extra package)."""
    import ctypes

    names = ("nvml.dll",) if sys.platform == "win32" else ("libnvidia-ml.so.1", "libnvidia-ml.so")
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise OSError("libnvidia-ml")

    class Memory(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                    ("used", ctypes.c_ulonglong)]

    if lib.nvmlInit_v2() != 0:
        return []
    devices: list[CudaDevice] = []
    try:
        count = ctypes.c_uint(0)
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return []
        visible = _visible_indices(count.value)
        for cuda_index, nvml_index in enumerate(visible):
            handle = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByIndex_v2(nvml_index, ctypes.byref(handle)) != 0:
                continue
            name = ctypes.create_string_buffer(96)
            lib.nvmlDeviceGetName(handle, name, 96)
            memory = Memory()
            lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory))
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            lib.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major),
                                                   ctypes.byref(minor))
            capability = (major.value, minor.value)
            devices.append(CudaDevice(index=cuda_index, name=name.value.decode(errors="replace"),
                                      total_bytes=int(memory.total), free_bytes=int(memory.free),
                                      capability=capability, supports_bf16=capability >= (8, 0)))
    finally:
        lib.nvmlShutdown()
    return devices


def _visible_indices(count: int) -> list[int]:
    """Honour CUDA_VISIBLE_DEVICES (numeric form) the way the CUDA runtime would."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return list(range(count))
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) >= count:
            break  # CUDA stops at the first invalid entry
        out.append(int(part))
    return out


def describe_report(report: DeviceReport) -> str:
    """Human-readable report for `ocula doctor`."""
    gib = 2**30
    lines = [
        (
            f"CPU: {report.cpu_name} — {report.cpu_cores} logical cores "
            f"({report.cpu_cores_available} available to Ocula)"
        )
    ]
    if report.cuda:
        for dev in report.cuda:
            free = "?" if dev.free_bytes is None else f"{dev.free_bytes / gib:.1f}"
            precisions = (
                "fp32"
                + (", fp16" if dev.supports_fp16 else "")
                + (", bf16" if dev.supports_bf16 else "")
            )
            lines.append(
                f"CUDA {dev.index}: {dev.name} — {free} of {dev.total_bytes / gib:.1f} GiB "
                f"free, compute {dev.capability[0]}.{dev.capability[1]} ({precisions})"
            )
    else:
        import importlib.util

        build = (
            f"torch built with CUDA {report.torch_cuda_build}, but no device found"
            if report.torch_cuda_build
            else "torch is a CPU-only build" if importlib.util.find_spec("torch") is not None
            else "Lite build: no torch; ONNX Runtime's providers are below"
        )
        lines.append(f"CUDA: none ({build})")
    lines.append(
        "MPS (Apple GPU): "
        + (
            ("available" + (" (fp16, bf16)" if report.mps_bf16 else " (fp16)"))
            if report.mps
            else "not available"
        )
    )
    lines.append("ONNX Runtime providers: " + (", ".join(report.onnx_providers) or "none"))
    lines.append(
        "Versions: " + ", ".join(f"{k} {v or 'missing'}" for k, v in report.versions.items())
    )
    lines.extend(f"Problem: {p}" for p in report.problems)
    return "\n".join(lines)


# -- planning -------------------------------------------------------------------------


def _normalise_device(device: str) -> tuple[str, int | None]:
    """'cuda:1' -> ('cuda', 1); 'auto' -> ('auto', None). Unknown names raise DeviceError.
    The words are engine.vocabulary's, so the doctor, jobs and the GUI accept the same."""
    try:
        return split_device(device)
    except UsageError as exc:
        raise DeviceError(str(exc)) from None


def _model_precisions(card: ModelCard) -> tuple[str, ...] | None:
    """Precisions the card says the model runs in (sidecar 'precisions'); None = not stated."""
    stated = card.sidecar.get("precisions") if card.sidecar else None
    return tuple(stated) if stated else None


def device_precisions(device: str, report: DeviceReport | None = None) -> tuple[str, ...]:
    """Precisions a torch device runs well: fp16 is refused on CPU (unsupported or very slow)."""
    report = report or discover()
    family, index = _normalise_device(device)
    if family == "cuda":
        dev = report.cuda_device(index or 0)
        if dev is None:
            return ("fp32",)
        return (
            ("fp32",)
            + (("fp16",) if dev.supports_fp16 else ())
            + (("bf16",) if dev.supports_bf16 else ())
        )
    if family == "mps":
        return ("fp32", "fp16") + (("bf16",) if report.mps_bf16 else ())
    return ("fp32", "bf16")  # CPU: bf16 kernels exist for the common layers; fp16 mostly not


def plan(
    card: ModelCard,
    *,
    device: str = "auto",
    precision: str = "auto",
    report: DeviceReport | None = None,
) -> Placement:
    """The placement that will really run `card`, with `fallback` set when it differs."""
    report = report or discover()
    precision = (precision or "auto").lower()
    if precision not in PRECISION_CHOICES:
        raise DeviceError(
            f"Precision '{precision}' is not understood for model '{card.id}'. "
            f"Use one of: {', '.join(PRECISION_CHOICES)}."
        )
    if card.runtime == "onnx":
        return _plan_onnx(card, device, precision, report)
    return _plan_torch(card, device, precision, report)


def _plan_torch(card: ModelCard, device: str, precision: str, report: DeviceReport) -> Placement:
    family, index = _normalise_device(device)
    reasons: list[str] = []
    if family == "auto":
        target = "cpu"
        if report.cuda:
            target = _auto_cuda_target(card, report, reasons)
        elif report.mps:
            target = "mps"
    elif family == "cuda":
        if not report.cuda:
            build = (
                f"torch {report.versions.get('torch')} is a CPU-only build"
                if not report.torch_cuda_build
                else "the driver reports none"
            )
            reasons.append(f"{device} requested but no CUDA device found ({build}); running on cpu")
            target = "cpu"
        elif report.cuda_device(index or 0) is None:
            reasons.append(
                f"{device} requested but only {len(report.cuda)} CUDA device(s) exist; "
                f"running on cuda:0"
            )
            target = "cuda:0"
        else:
            target = f"cuda:{index or 0}"
    elif family == "mps":
        target = "mps" if report.mps else "cpu"
        if not report.mps:
            reasons.append("mps requested but no Apple GPU (MPS) is available; running on cpu")
    elif family == "cpu":
        target = "cpu"
    else:
        raise DeviceError(
            f"Device '{device}' is an ONNX Runtime provider; model '{card.id}' runs "
            f"on {card.runtime} (torch). Use auto, cpu, cuda or mps."
        )
    chosen = _choose_precision(card, target, precision, report, reasons)
    return Placement(
        backend=card.runtime, device=target, precision=chosen, fallback="; ".join(reasons) or None
    )


def _auto_cuda_target(card: ModelCard, report: DeviceReport, reasons: list[str]) -> str:
    """'auto' prefers the GPU, unless the card's memory estimate cannot fit in its free memory."""
    dev = report.cuda[0]
    need_mb = card.memory_estimate_mb("fp16") or card.memory_estimate_mb("fp32")
    if need_mb and dev.free_bytes is not None and need_mb * 2**20 > dev.free_bytes:
        reasons.append(
            f"model needs about {need_mb} MB but {dev.name} has "
            f"{dev.free_bytes // 2**20} MB free; running on cpu"
        )
        return "cpu"
    return f"cuda:{dev.index}"


def _choose_precision(
    card: ModelCard, target: str, precision: str, report: DeviceReport, reasons: list[str]
) -> str:
    on_device = device_precisions(target, report)
    model_ok = _model_precisions(card)
    allowed = [p for p in on_device if model_ok is None or p in model_ok] or ["fp32"]
    if precision == "auto":
        # Half precision only where it is a clear win: CUDA. CPU and MPS stay fp32.
        if target.startswith("cuda"):
            for candidate in ("fp16", "bf16"):
                if candidate in allowed:
                    return candidate
        return "fp32"
    if precision in allowed:
        return precision
    if model_ok is not None and precision not in model_ok:
        why = f"model '{card.id}' does not support {precision}"
    elif target == "cpu" and precision == "fp16":
        why = "fp16 on cpu is unsupported or very slow for most layers"
    else:
        why = f"{target} has no {precision} support"
    reasons.append(f"{why}; running in fp32")
    return "fp32"


def _plan_onnx(card: ModelCard, device: str, precision: str, report: DeviceReport) -> Placement:
    family, index = _normalise_device(device)
    available = report.onnx_providers
    reasons: list[str] = []
    if not available:
        raise DeviceError(
            f"Model '{card.id}' is an ONNX model but onnxruntime is not installed. "
            f"Install it with `pip install 'ocula[cpu]'` (or 'ocula[gpu]' for CUDA)."
        )
    if family == "mps":
        family = "coreml"  # ONNX Runtime reaches the Apple GPU/ANE through CoreML
    if family == "auto":
        provider = next((p for p in _ONNX_AUTO_ORDER if p in available), "CPUExecutionProvider")
    else:
        wanted = ONNX_PROVIDER_FOR_DEVICE[family]
        if wanted in available:
            provider = wanted
        else:
            provider = "CPUExecutionProvider"
            hint = (
                " (install onnxruntime-gpu: pip install 'ocula[gpu]')"
                if family in ("cuda", "tensorrt")
                else ""
            )
            reasons.append(
                f"{device} requested but onnxruntime offers no {wanted}{hint}; "
                f"running on CPUExecutionProvider"
            )
    target = {
        "CUDAExecutionProvider": f"cuda:{index or 0}",
        "TensorrtExecutionProvider": f"cuda:{index or 0}",
        "DmlExecutionProvider": f"directml:{index or 0}",
        "CoreMLExecutionProvider": "coreml",
    }.get(provider, "cpu")
    # The graph fixes the precision; the loader refines this once it has read the file(s).
    chosen = "fp32" if precision == "auto" else precision
    if chosen == "bf16":
        reasons.append(
            "ONNX models run in the precision they were exported in; bf16 is not "
            "offered; running in fp32"
        )
        chosen = "fp32"
    return Placement(
        backend="onnx",
        device=target,
        precision=chosen,
        provider=provider,
        fallback="; ".join(reasons) or None,
    )


def describe_plan(card: ModelCard, placement: Placement, report: DeviceReport | None = None) -> str:
    """What `ocula doctor --model ID` prints: where the model would run, and why."""
    from engine.catalog.requirements import full_build_message, missing_packages

    lines = [f"{card.id} ({card.name}): {card.runtime} backend"]
    if missing_packages(card):
        lines.append(f"  cannot run here: {full_build_message(card)}")
        return "\n".join(lines)
    lines.append(f"  runs on: {placement.provider or placement.device} in {placement.precision}")
    need_mb = card.memory_estimate_mb(placement.precision)
    if need_mb:
        where = f"about {need_mb} MB"
        if report is not None and placement.device.startswith("cuda"):
            dev = report.cuda_device(int(placement.device.partition(":")[2] or 0))
            if dev is not None and dev.free_bytes is not None:
                where += f" of {dev.free_bytes // 2**20} MB free on {dev.name}"
        lines.append(f"  memory: {where}")
    if card.package:  # weights that ship inside a Python package: say whether it is here
        from engine.catalog import packaged

        lines.append(f"  weights: {packaged.describe(card)}")
    lines.append(
        f"  fallback: {placement.fallback}"
        if placement.fallback
        else "  fallback: none (runs as requested)"
    )
    return "\n".join(lines)
