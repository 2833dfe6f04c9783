"""Small torch helpers shared by the transformers and spandrel backends (imports torch)."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from engine.runtimes.base import Outputs, to_outputs

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (what the runner cache budgets)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Arrays/tensors to `device`; floating ones also to `dtype` (ids and masks keep theirs)."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device=device)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in value)
    ):
        return type(value)(to_device(v, device, dtype) for v in value)
    return value  # flags such as output_attentions=True pass through unchanged


def to_cpu(value: Any) -> Any:
    """Tensors back to the CPU; half precision widened to fp32 so post-processing works anywhere."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in _HALF_DTYPES:
            value = value.float()
        return value.cpu()
    if isinstance(value, Mapping):
        return Outputs({k: to_cpu(v) for k, v in value.items() if v is not None})
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def outputs_on_cpu(raw: Any) -> Outputs:
    return Outputs({k: to_cpu(v) for k, v in to_outputs(raw).items()})


def free_device_memory(device: str) -> None:
    # On the CPU, dropping the last reference frees a model's tensors already; a full
    # gc.collect() over torch's object graph would stall other threads (the GUI) for ~1 s.
    if device == "cpu":
        return
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device == "mps" and hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()
