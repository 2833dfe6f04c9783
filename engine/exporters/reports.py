"""`result_to_dict`: the JSON form of a task result, used in per-frame files.

(The job report, `ocula-report.json` / `.html`, is written by engine.jobs.report: it
reads the job store, which the exporters below the jobs layer must not know about.)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np


def result_to_dict(result: Any) -> Any:
    """JSON-able form of a result dataclass. Arrays become their shape and dtype (masks
    and images belong in their own files, not in per-frame JSON)."""
    if result is None or isinstance(result, (str, int, float, bool)):
        return result
    if isinstance(result, np.ndarray):
        return {"array": list(result.shape), "dtype": str(result.dtype)}
    if isinstance(result, np.generic):
        return result.item()
    if isinstance(result, Path):
        return str(result)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        out: dict[str, Any] = {"type": type(result).__name__}
        for f in dataclasses.fields(result):
            out[f.name] = result_to_dict(getattr(result, f.name))
        return out
    if isinstance(result, dict):
        return {str(k): result_to_dict(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [result_to_dict(v) for v in result]
    return repr(result)
