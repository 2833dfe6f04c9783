"""facenet-pytorch backend: MTCNN, the face detector whose weights ship inside the wheel.

MTCNN is its own pipeline (an image pyramid through P-Net, then R-Net and O-Net on the
candidates, NMS between stages), not one graph over named tensors, so the runner wraps
facenet-pytorch's `MTCNN` object: `forward({"image": PIL or HWC uint8 array})` returns
`boxes` [N, 4] (x0, y0, x1, y1, original pixels) and `scores` [N] as float32 numpy
arrays; N may be 0. `engine.tasks.detect` (family "mtcnn") turns them into Detections.

The snapshot is the folder inside the installed package that holds pnet.pt, rnet.pt and
onet.pt (engine.catalog.packaged.locate; nothing is downloaded). Those pickles are
scanned and loaded weights-only (engine.runtimes.pickle_safety) before facenet-pytorch's own
constructor reads its copies, so no pickle is ever loaded unscanned. MTCNN runs in fp32
only; any other precision is a fallback, announced like every other backend's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.errors import MissingPackageError, UnsupportedModelError
from engine.events import CancelToken, Progress, ProgressCallback
from engine.runtimes.base import Outputs, Placement, Runner, finish_load, register_loader
from engine.runtimes.pickle_safety import safe_torch_load, scan_pickle_checkpoint
from engine.runtimes.torch_utils import free_device_memory, module_bytes

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard

PACKAGE = "facenet-pytorch"
INSTALL = "pip install --no-deps facenet-pytorch==2.6.0 requests"
NETS = ("pnet", "rnet", "onet")  # MTCNN's three stages, one weight file each
# where the wheel keeps them (used for cards that do not list their files themselves)
PACKAGE_FILES = tuple(f"facenet_pytorch/data/{net}.pt" for net in NETS)


class MtcnnRunner(Runner):
    """facenet-pytorch's MTCNN on a device. forward: {"image": PIL} -> boxes, scores (numpy)."""

    def __init__(self, card: ModelCard, placement: Placement, detector: Any) -> None:
        super().__init__(card, placement, memory_bytes=module_bytes(detector))
        self.detector = detector

    def forward(self, inputs: Mapping[str, Any]) -> Outputs:
        if self.detector is None:
            raise RuntimeError(f"Model '{self.card.id}' was released; load it again.")
        image = inputs["image"]
        with self.lock, torch.inference_mode():
            boxes, probs = self.detector.detect(image)
        if boxes is None:  # facenet returns None, not an empty array, when it finds nothing
            return Outputs(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32))
        return Outputs(boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                       scores=np.asarray(probs, dtype=np.float32).reshape(-1))

    def release(self) -> None:
        self.detector = None
        free_device_memory(self.placement.device)


def _mtcnn_class(card: ModelCard) -> Any:
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise MissingPackageError(
            f"Model '{card.id}' runs on the {card.package or PACKAGE} package, which is not "
            f"importable here ({exc}). Install it with: {card.install or INSTALL}"
        ) from exc
    return MTCNN


def _package_copies(card: ModelCard) -> list[Path]:
    """The weight files facenet-pytorch's constructor itself reads (to scan them first)."""
    from engine.catalog import packaged

    probe = card if card.package else dataclasses.replace(card, package=PACKAGE,
                                                          files=PACKAGE_FILES)
    return list(packaged.inspect(probe).files)


def _fp32(placement: Placement) -> Placement:
    if placement.precision == "fp32":
        return placement
    why = f"MTCNN (facenet-pytorch) runs in fp32 only, not {placement.precision}; running fp32"
    fallback = "; ".join(f for f in (placement.fallback, why) if f)
    return dataclasses.replace(placement, precision="fp32", fallback=fallback)


@register_loader("facenet-pytorch")
def load_facenet(
    card: ModelCard,
    snapshot: Path,
    placement: Placement,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **_: Any,
) -> MtcnnRunner:
    arch = card.architecture or "MTCNN"
    family = (card.sidecar or {}).get("family", "mtcnn")
    if arch != "MTCNN" or family != "mtcnn":
        raise UnsupportedModelError(
            f"Model '{card.id}': the facenet-pytorch runtime runs MTCNN face detection only "
            f"(architecture {arch!r}, family {family!r})."
        )
    MTCNN = _mtcnn_class(card)
    folder = Path(snapshot)
    folder = folder if folder.is_dir() else folder.parent
    paths = {net: folder / f"{net}.pt" for net in NETS}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise MissingPackageError(
            f"Model '{card.id}': {', '.join(missing)} not found in {folder}. Reinstall "
            f"facenet-pytorch: {card.install or INSTALL}"
        )
    if cancel is not None:
        cancel.raise_if_cancelled()
    if progress is not None:
        progress(Progress(stage="load", done=0, total=1, item=card.id,
                          message=f"loading {card.name}"))
    states = {net: safe_torch_load(path) for net, path in paths.items()}
    for path in _package_copies(card):
        if path not in paths.values():
            scan_pickle_checkpoint(path)
    placement = _fp32(placement)
    sidecar = card.sidecar or {}
    detector = MTCNN(
        keep_all=True,
        device=None,  # built on the CPU; moved below
        min_face_size=int(sidecar.get("min_face_size", 20)),
        thresholds=[float(t) for t in sidecar.get("stage_thresholds", (0.6, 0.7, 0.7))],
    )
    for net, state in states.items():
        getattr(detector, net).load_state_dict(state)
    device = torch.device(placement.device)
    detector.to(device)
    detector.device = device  # facenet moves image tensors to `detector.device`
    detector.eval()
    runner = MtcnnRunner(card, placement, detector)
    return finish_load(runner, item=card.id, progress=progress, cancel=cancel)


def load_mtcnn(card: ModelCard, *, device: str = "cpu", precision: str = "fp32",
               snapshot: Path | None = None, **options: Any) -> MtcnnRunner:
    """MTCNN for `card` on `device`, weights from the installed package (or `snapshot`):
    a shortcut around `engine.runtimes.load_runner` for cards that are not in the catalog."""
    from engine import devices
    from engine.catalog import packaged

    if snapshot is None:
        probe = card if card.package else dataclasses.replace(card, package=PACKAGE,
                                                              files=PACKAGE_FILES)
        snapshot = packaged.locate(probe)
    placement = devices.plan(card, device=device, precision=precision)
    return load_facenet(card, Path(snapshot), placement, **options)
