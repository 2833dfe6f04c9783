"""ModelCard: everything known about a model before it is loaded.

Like spandrel's model descriptors, callers ask the card (task, runtime, attention
support, memory) instead of guessing from a repo name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from engine.vocabulary import MODEL_TASKS, PRECISIONS  # noqa: F401  PRECISIONS: re-exported

TASKS = MODEL_TASKS  # what a model can do (engine.vocabulary)
RUNTIMES = ("transformers", "spandrel", "onnx", "facenet-pytorch")


class AttentionSupport(str, Enum):
    """What attention-map methods a model can offer (the GUI greys out the rest)."""

    FULL = "full"  # global self-attention: raw, rollout, relevance, similarity
    CROSS = "cross"  # FULL plus per-token cross-attention (captioners, DETR decoders)
    WINDOWED = "windowed"  # Swin-style windows: per-window maps stitched onto the image
    GRADCAM = "gradcam"  # no attention (convolutional/MLP): Grad-CAM fallback
    NONE = "none"


class Source(str, Enum):
    CATALOG = "catalog"  # curated entry in resources/catalog.toml
    HUB = "hub"  # any hub repo, inferred from its metadata
    LOCAL = "local"  # imported folder, checkpoint or ONNX file
    PACKAGE = "package"  # weights ship inside an installed Python package (card.package)


@dataclass(frozen=True)
class ModelCard:
    id: str  # stable id used by CLI/GUI, e.g. "rtdetr-r18" or "hub:owner/name"
    name: str  # display name
    tasks: tuple[str, ...]  # subset of TASKS; first is the primary task
    runtime: str  # one of RUNTIMES
    repo: str | None = None  # hub repo id (None for purely local models)
    revision: str | None = None  # pinned commit sha / branch
    files: tuple[str, ...] = ()  # allow-patterns to fetch; empty = whole repo
    download_bytes: int | None = None
    params: int | None = None
    license: str = "unknown"
    commercial_use: bool | None = None  # None = unknown, check the license
    memory_mb: dict[str, int] = field(default_factory=dict)  # precision -> estimate
    attention: AttentionSupport = AttentionSupport.NONE
    seed: str = ""  # the seed system / paper this model stands for
    architecture: str | None = None  # transformers class or spandrel arch name
    variant: str | None = None  # task detail: semantic|panoptic|instance|promptable|matting|open-vocab
    trust_remote_code: bool = False  # the repo needs it (refused unless allowed)
    gated: bool = False
    source: Source = Source.CATALOG
    local_path: str | None = None  # imported models: file or folder on disk
    sidecar: dict[str, Any] = field(default_factory=dict)  # ONNX/IO details (size, range, layout, scale, labels)
    description: str = ""
    # Weights that ship inside a Python package instead of a hub repo: the distribution's
    # pip name (e.g. "facenet-pytorch"). `files` are then paths inside the installed package
    # (as its RECORD lists them, e.g. "facenet_pytorch/data/pnet.pt"); nothing is downloaded.
    package: str | None = None
    install: str | None = None  # the command that installs `package` (shown when it is missing)

    @property
    def primary_task(self) -> str:
        return self.tasks[0]

    def supports(self, task: str) -> bool:
        return task in self.tasks

    def memory_estimate_mb(self, precision: str = "fp32") -> int | None:
        if precision in self.memory_mb:
            return self.memory_mb[precision]
        if self.params:
            bytes_per = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}.get(precision, 4)
            # weights plus ~50% for activations at typical input sizes
            return int(self.params * bytes_per * 1.5 / 2**20) + 1
        return None


def can_explain(card: ModelCard) -> bool:
    """Whether attention maps can be made for `card`: torch models that report attention
    (or Grad-CAM), and ONNX vision backbones, whose Softmax nodes engine.explain exposes
    as outputs (an ONNX card's `attention` is "none": the graph returns no attention)."""
    if card.attention != AttentionSupport.NONE:
        return True
    return card.runtime == "onnx" and "features" in card.tasks

