"""`explain()` driven by the explain task's typed options (engine.options.ExplainOptions):
the one route the job handler (`ocula explain`) and the GUI's explain view share."""
from __future__ import annotations

from typing import Any

from engine.options import ExplainOptions, parse_options

# ExplainOptions fields that engine.explain.explain() takes as keywords; the rest
# (formats, batching, video) belong to the job around it.
EXPLAIN_KEYWORDS = ("method", "layer", "head", "head_fusion", "discard_ratio", "start_layer",
                    "target", "patch", "threshold", "keep_mass", "max_new_tokens", "prompt",
                    "detection_threshold", "discover_algorithm", "discover_tau", "lost_k",
                    "discover_features", "discover_foreground",
                    "suppress_artifacts", "artifact_k")


_CACHE: Any = None


def capture_cache() -> Any:
    """The process-wide CaptureCache of this route (the GUI's clicks on one image reuse its
    forward: a second patch or layer costs a numpy computation, not a model run)."""
    global _CACHE
    if _CACHE is None:
        from engine.explain.api import CaptureCache

        _CACHE = CaptureCache(size=4)
    return _CACHE


def explain_with_options(runner: Any, image: Any,
                         options: ExplainOptions | dict[str, Any], *, cache: Any = True) -> Any:
    """Attention maps of `image` (PIL) with `options` (typed, or a mapping to validate).
    `cache`: True = the shared `capture_cache()`, None/False = none, or a CaptureCache."""
    from engine.explain.api import explain

    options = parse_options("explain", options)
    if cache is True:
        cache = capture_cache()
    return explain(runner, image, cache=cache or None,
                   **{name: getattr(options, name) for name in EXPLAIN_KEYWORDS})
