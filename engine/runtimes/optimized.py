"""The verified ONNX exports made by `ocula models optimize`: where they live, and a
Runner over one.

`engine.export_onnx` writes them (it runs torch models and the tasks to verify an
export); `engine.runtimes.load_runner` only needs to find and open one for the CPU fast
path, so that part lives here, in the runtimes layer, and the runtimes never import the
exporter (which imports the tasks, which import the runtimes).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from engine import paths
from engine.vocabulary import VARIANT_PRECISIONS

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard
    from engine.runtimes.base import Runner

MANIFEST = "optimized.json"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("._") or "model"


def optimized_dir(card: ModelCard) -> Path:
    return paths.app_home() / "optimized" / _safe(card.id) / _safe(card.revision or "local")


def find_optimized(card: ModelCard) -> Path | None:
    """The verified export of `card` (file or folder, as `optimize` returned it), or None."""
    folder = optimized_dir(card)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    target = folder / data.get("path", "model.onnx")
    return target if target.exists() else None


def onnx_runner_for_export(card: ModelCard, path: Path) -> Runner:
    """An OnnxRunner over an `optimize` result (file or folder), on the CPU in fp32."""
    from engine.runtimes.base import Placement
    from engine.runtimes.onnx_backend import load_onnx

    onnx_card = dataclasses.replace(card, runtime="onnx", local_path=str(path), sidecar={})
    return load_onnx(onnx_card, path, Placement("onnx", "cpu", "fp32",
                                                provider="CPUExecutionProvider"))


# -- precision variants (int8, fp16) --------------------------------------------------------
#
# `ocula models optimize ID --precision int8|fp16` writes one folder per precision under
# optimized_dir(card)/variants/<precision>/ with a `variant.json` manifest: how it was made
# (recipe), its measured quality against the fp32 source (engine.quality figures), whether
# it is recommended, and its latency next to fp32's. A variant Ocula made holds its graphs
# and the source's small side files (config, processor), laid out as the source was, so the
# card's own sidecar reads it. A variant published on the hub (`onnx/model_quantized.onnx`)
# stays in the model's snapshot: its manifest only records the measurement
# ("source": "published"). Re-exporting the fp32 model (`optimize --force`) removes the
# folder, so no variant outlives the export it was made from.

VARIANT_MANIFEST = "variant.json"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One precision variant of a model, as its manifest describes it."""

    precision: str  # int8 | fp16
    folder: Path  # where the manifest is
    source: str  # "ocula" (made by optimize) | "published" (the hub's file, in the snapshot)
    recipe: str
    recommended: bool
    verdict: str  # the sentence saying why it is (not) recommended, with the figures
    quality: tuple[dict, ...] = ()  # engine.quality.QualityFigure.to_dict() of each figure
    latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # fp32, variant
    graphs: dict[str, str] = dataclasses.field(default_factory=dict)  # session key -> file
    manifest: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def speedup(self) -> float | None:
        fp32, mine = self.latency_ms.get("fp32"), self.latency_ms.get("variant")
        return fp32 / mine if fp32 and mine else None

    def summary(self) -> str:
        """One line for `ocula doctor`, `ocula models info` and the GUI."""
        speed = f", {self.speedup:.2f}x fp32's speed on this CPU" if self.speedup else ""
        origin = "published on the hub" if self.source == "published" else self.recipe
        return f"{self.precision} ({origin}{speed}): {self.verdict}"


def variant_dir(card: ModelCard, precision: str) -> Path:
    return optimized_dir(card) / "variants" / _safe(precision)


def source_stamp(card: ModelCard) -> str | None:
    """Size and modification time of an imported model's file: a variant made before the
    file was replaced (re-imported under the same id) is not used. Hub models are pinned
    by their revision instead (None)."""
    if not card.local_path:
        return None
    try:
        info = Path(card.local_path).expanduser().stat()
    except OSError:
        return "missing"
    return f"{info.st_size}:{info.st_mtime_ns}"


def find_variant(card: ModelCard, precision: str) -> Variant | None:
    """The measured `precision` variant of `card`, or None (none made, or its files gone)."""
    folder = variant_dir(card, precision)
    try:
        data = json.loads((folder / VARIANT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (data.get("revision") != card.revision or data.get("card") != card.id
            or data.get("source_stamp") != source_stamp(card)):
        return None
    variant = Variant(
        precision=str(data.get("precision", precision)), folder=folder,
        source=str(data.get("source", "ocula")), recipe=str(data.get("recipe", "")),
        recommended=bool(data.get("recommended")), verdict=str(data.get("verdict", "")),
        quality=tuple(data.get("quality", ())),
        latency_ms={k: float(v) for k, v in (data.get("latency_ms") or {}).items()},
        graphs=dict(data.get("graphs") or {}), manifest=data)
    if variant.source == "ocula" and not all((folder / rel).is_file()
                                             for rel in variant.graphs.values()):
        return None
    return variant


def list_variants(card: ModelCard) -> list[Variant]:
    return [v for v in (find_variant(card, p) for p in VARIANT_PRECISIONS) if v is not None]


def recommended_variant(card: ModelCard) -> Variant | None:
    """What precision "auto" runs on the CPU: the fastest recommended variant (its quality
    figures passed) that was measured faster than fp32 on this machine; None = fp32."""
    chosen = [v for v in list_variants(card)
              if v.recommended and (v.speedup is None or v.speedup > 1.0)]
    return min(chosen, key=lambda v: v.latency_ms.get("variant", float("inf")), default=None)


def variant_card(card: ModelCard, variant: Variant) -> ModelCard:
    """The card that opens an Ocula-made variant folder with the onnx runtime."""
    sidecar = card.sidecar if card.runtime == "onnx" else {}
    return dataclasses.replace(card, runtime="onnx", local_path=str(variant.folder),
                               sidecar=dict(sidecar or {}))


def onnx_runner_for_variant(card: ModelCard, variant: Variant, *,
                            snapshot: Path | None = None) -> Runner:
    """An OnnxRunner over a variant on the CPU. A published variant is opened from the
    model's `snapshot` (the onnx loader picks the file by precision)."""
    from engine.runtimes.base import Placement
    from engine.runtimes.onnx_backend import load_onnx

    if variant.source == "published":
        if snapshot is None:
            raise ValueError("a published variant is opened from the model's snapshot")
        runner = load_onnx(card, snapshot, Placement("onnx", "cpu", variant.precision,
                                                     provider="CPUExecutionProvider"))
    else:  # its graphs carry plain names and fp32 inputs/outputs (fp16 keeps fp32 I/O)
        runner = load_onnx(variant_card(card, variant), variant.folder,
                           Placement("onnx", "cpu", "fp32", provider="CPUExecutionProvider"))
    runner.placement = dataclasses.replace(runner.placement, precision=variant.precision)
    return runner
