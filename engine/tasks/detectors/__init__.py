"""Detector families, one module each (after spandrel's architectures/<Name>/).

Each module states one `FAMILY = DetectorFamily(...)` (engine.tasks.detect): the run
function, the transformers model types or sidecar families it serves, and its
capabilities (open_vocabulary). `FAMILY_MODULES` is the one list of them;
`engine.tasks.detect.FAMILIES` imports them on its first lookup, so importing this
package imports none of them. A family added twice, or two families claiming one model
type, is an error naming both.
"""
from __future__ import annotations

FAMILY_MODULES: tuple[str, ...] = (
    "engine.tasks.detectors.detr_like",  # DETR, RT-DETR, YOLOS, D-FINE…: processor post-processing
    "engine.tasks.detectors.owl",  # OWL-ViT / OWLv2: open vocabulary
    "engine.tasks.detectors.grounding_dino",  # Grounding DINO: open vocabulary
    "engine.tasks.detectors.florence",  # Florence-2's <OD> / <OPEN_VOCABULARY_DETECTION>
    "engine.tasks.detectors.yolo",  # YOLO-style ONNX exports (sidecar family "yolo")
    "engine.tasks.detectors.mtcnn",  # MTCNN faces (facenet-pytorch, sidecar family "mtcnn")
    "engine.tasks.detectors.mtcnn_onnx",  # the same cascade on ONNX graphs (no torch)
)
