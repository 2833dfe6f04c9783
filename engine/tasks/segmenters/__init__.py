"""Segmenter families, one module each (after spandrel's architectures/<Name>/).

Each module states one `FAMILY = SegmenterFamily(...)` (engine.tasks.segment): the run
function, the model types / sidecar families / card variants it serves, and the modes
it offers. `FAMILY_MODULES` is the one list of them; `engine.tasks.segment.FAMILIES`
imports them on its first lookup, so importing this package imports none of them.
"""
from __future__ import annotations

FAMILY_MODULES: tuple[str, ...] = (
    "engine.tasks.segmenters.semantic",  # SegFormer, BEiT, DPT, UperNet…
    "engine.tasks.segmenters.semantic_logits",  # ONNX semantic logits described by a sidecar
    "engine.tasks.segmenters.universal",  # Mask2Former / MaskFormer: panoptic, instance, semantic
    "engine.tasks.segmenters.sam",  # SAM / SlimSAM: promptable
    "engine.tasks.segmenters.matting",  # BiRefNet-style alpha mattes (ONNX)
)
