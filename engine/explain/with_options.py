"""`explain()` driven by the explain task's typed options (engine.options.ExplainOptions):
the one route the job handler (`ocula explain`) and the GUI's explain view share."""
from __future__ import annotations

from typing import Any

from engine.options import ExplainOptions, parse_options

# ExplainOptions fields that engine.explain.explain() takes as keywords; the rest
# (formats, batching, video) belong to the job around it.
EXPLAIN_KEYWORDS = ("method", "layer", "head", "head_fusion", "discard_ratio", "start_layer",
                    "target", "patch", "threshold", "keep_mass", "max_new_tokens", "prompt",
                    "detection_threshold")


def explain_with_options(runner: Any, image: Any,
                         options: ExplainOptions | dict[str, Any]) -> Any:
    """Attention maps of `image` (PIL) with `options` (typed, or a mapping to validate)."""
    from engine.explain.api import explain

    options = parse_options("explain", options)
    return explain(runner, image, **{name: getattr(options, name) for name in EXPLAIN_KEYWORDS})
