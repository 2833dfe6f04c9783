"""MTCNN faces on ONNX Runtime (sidecar output "mtcnn": graphs pnet, rnet, onet), no torch.

The cascade is engine.tasks.detectors.mtcnn_cascade (a numpy port of facenet-pytorch's);
the graphs are facenet-pytorch's P/R/O-Nets exported by packaging/make_first_run_models.py.
Stage settings come from the sidecar (min_face_size, stage_thresholds), as for the torch
family, whose thresholding and finish this shares.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.results import Detections
from engine.tasks.detect import DetectOptions, DetectorFamily
from engine.tasks.detectors.mtcnn import finish_faces
from engine.tasks.detectors.mtcnn_cascade import CascadeOptions, detect_faces

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner


def _net(runner: Runner, role: str):
    names = runner.output_names(role)
    inputs = runner.input_names(role)

    def call(batch: np.ndarray) -> list[np.ndarray]:
        out = runner.run_arrays(role, {inputs[0]: batch})
        return [out[n] for n in names]
    return call


def run(runner: Runner, images: list[Image.Image], opts: DetectOptions) -> list[Detections]:
    sidecar = getattr(runner.card, "sidecar", {}) or {}
    cascade = CascadeOptions(
        min_face_size=int(sidecar.get("min_face_size", 20)),
        thresholds=tuple(float(t) for t in sidecar.get("stage_thresholds", (0.6, 0.7, 0.7))))
    pnet, rnet, onet = (_net(runner, role) for role in ("pnet", "rnet", "onet"))
    return finish_faces(runner, images, opts,
                        lambda img: detect_faces(np.asarray(img.convert("RGB")), pnet, rnet,
                                                 onet, cascade))


FAMILY = DetectorFamily(
    "mtcnn-onnx",
    run,
    sidecar_families=("mtcnn-onnx",),
    summary="MTCNN faces on ONNX Runtime: facenet-pytorch's cascade in numpy, no torch",
)
