"""Pickle checkpoints (.bin, .pth, .pt, .ckpt) are loaded as weights, never as code.

Two layers: `scan_pickle_checkpoint` reads the pickle opcodes (without unpickling) and
refuses any global outside torch's tensor-rebuilding machinery, naming it in the error;
`safe_torch_load` then loads with `torch.load(weights_only=True)`, torch's own
restricted unpickler. safetensors files need neither: they hold no code by design.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from engine.errors import UnsafeCheckpointError, UnsupportedModelError

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")

# Globals a plain state dict needs. Anything else (os.system, builtins.eval, argparse
# objects, model classes) means the file is more than weights: refuse it.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes
}
_SAFE_TORCH_PREFIXES = ("torch._utils._rebuild_", "torch._tensor._rebuild_")
_SAFE_TORCH_NAMES = {
    "Size",
    "device",
    "dtype",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "uint8",
    "bool",
    "float64",
    "int8",
    "int16",
    "complex64",
}
# Inside the pickle only storage type names appear for torch; code-bearing torch
# callables (torch.jit, torch._C, torch.load itself…) are not storages or rebuilders.
_TORCH_STORAGE_SUFFIX = "Storage"


def is_safe_global(module: str, name: str) -> bool:
    if (module, name) in _SAFE_GLOBALS:
        return True
    dotted = f"{module}.{name}"
    if dotted.startswith(_SAFE_TORCH_PREFIXES):
        return True
    if module == "torch" and (name.endswith(_TORCH_STORAGE_SUFFIX) or name in _SAFE_TORCH_NAMES):
        return True
    return module == "torch.serialization" and name == "_get_layout"


def _pickle_globals(stream: IO[bytes], max_pickles: int = 1) -> Iterator[tuple[str, str]]:
    """Every (module, name) a pickle stream would import, tracking STACK_GLOBAL's operands."""
    for _ in range(max_pickles):
        position = stream.tell()
        if not stream.read(1):
            return  # clean end of the stream
        stream.seek(position)
        strings: list[Any] = []  # recent pushes, enough to resolve STACK_GLOBAL
        memo: dict[int, Any] = {}
        for opcode, arg, _pos in pickletools.genops(stream):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                yield module, attr
            elif name == "STACK_GLOBAL":
                if len(strings) < 2 or not all(isinstance(s, str) for s in strings[-2:]):
                    yield "<unresolved>", "<STACK_GLOBAL with computed operands>"
                else:
                    yield strings[-2], strings[-1]
            elif name in (
                "SHORT_BINUNICODE",
                "BINUNICODE",
                "BINUNICODE8",
                "UNICODE",
                "SHORT_BINSTRING",
                "BINSTRING",
                "STRING",
            ):
                strings.append(arg)
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = strings[-1] if strings else None
            elif name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(int(arg)))
            elif name == "STOP":
                break
            else:
                # any other push breaks the "two strings on top" pattern STACK_GLOBAL needs
                if opcode.stack_after and name not in ("PROTO", "FRAME"):
                    strings.append(None)


def scan_pickle_checkpoint(path: Path) -> None:
    """Refuse `path` (UnsafeCheckpointError) if its pickle would import anything but tensors."""
    path = Path(path)
    bad: set[str] = set()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                payloads = [
                    (n, io.BytesIO(archive.read(n)), 1)
                    for n in archive.namelist()
                    if n.endswith(".pkl")
                ]  # data.pkl: small, tensors live elsewhere
        else:
            # legacy torch.save: magic, protocol and sys-info pickles, then the data pickle
            # (streamed: old ESRGAN-era checkpoints can be large)
            payloads = [(path.name, open(path, "rb"), 4)]  # noqa: SIM115 - closed below
    except (OSError, zipfile.BadZipFile) as exc:
        raise UnsafeCheckpointError(
            f"Checkpoint {path} could not be read ({exc}); "
            f"re-download it or use a .safetensors file."
        ) from exc
    for member, stream, count in payloads:
        try:
            with stream:
                for module, name in _pickle_globals(stream, count):
                    if not is_safe_global(module, name):
                        bad.add(f"{module}.{name}")
        except (ValueError, pickle.UnpicklingError, IndexError, EOFError) as exc:
            # Every pickle up to the data one must parse, or we cannot vouch for the file.
            raise UnsafeCheckpointError(
                f"Checkpoint {path} ({member}) is not a well-formed pickle ({exc}); "
                f"Ocula will not load it. Use a .safetensors file instead."
            ) from exc
    if bad:
        raise UnsafeCheckpointError(
            f"Checkpoint {path} is not plain weights: its pickle would import "
            f"{', '.join(sorted(bad))}, which could run code on this computer. Ocula refused "
            f"to load it. Use the model's .safetensors file, or convert the checkpoint on a "
            f"machine you do not mind exposing."
        )


def safe_torch_load(path: Path, *, map_location: Any = "cpu") -> Any:
    """Scan, then `torch.load(weights_only=True)`; any refusal becomes UnsafeCheckpointError."""
    import torch

    scan_pickle_checkpoint(path)
    try:
        return torch.load(
            path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"Checkpoint {path} was refused by torch's weights-only loader ({exc}). "
            f"Ocula loads pickles as weights only. Use a .safetensors file instead."
        ) from exc
    except RuntimeError as exc:  # torch's reader on a truncated or corrupt archive
        raise UnsupportedModelError(
            f"Checkpoint {path} could not be read ({exc}). The file is probably incomplete or "
            f"corrupt: download it again."
        ) from exc
