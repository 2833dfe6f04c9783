"""Quantized (int8) and half-precision (fp16) ONNX variants of an fp32 graph.

    recipe = recipe_for(card, model_type="vit", graph=path)    # which style fits this model
    make_graph_variant(path, out, recipe, calibration=feeds)   # write the variant graph

Five recipes, chosen per model family from one table (FAMILY_RECIPES), not by a chain
of conditions:

* `dynamic-int8` (transformers: ViT/DeiT/DINOv2 encoders, DETR/YOLOS/Swin2SR
  transformer parts, captioner encoders): onnxruntime's quantize_dynamic on MatMul
  weights (int8, per output channel), activations quantized per call (its integer-op
  registry has no Gemm: a linear layer exported as Gemm stays fp32 here). No
  calibration needed. Measured on the AMD EPYC (AVX-512 VNNI) this was written on, ViT-B/16
  224, 2 threads: QInt8 weights 107 ms (Pearson 0.99970 to fp32) against QUInt8's 135 ms
  (0.99972), so weights are signed int8; per-channel costs no time and gains accuracy.
* `static-qdq-int8` (conv nets: YOLO-style detectors, spandrel upscalers, ResNet/ConvNeXt
  backbones): quantize_static in QDQ format, uint8 activations / int8 per-channel weights,
  activation ranges calibrated (MinMax) on feeds recorded while the fp32 graph ran the
  real task on the calibration images (`record_feeds`).
* `captioner-int8` (encoder + decoder captioners): `dynamic-int8` on the image encoder,
  `weight-only-int8` on the text decoder graphs: 8-bit weights in blocks of 32 through
  onnxruntime's MatMulNBits (engine.runtimes.weight_only; see the recipe's comment).
* `static-conv-int8` (SegFormer): the static recipe on the convolutions only; the
  MatMuls stay fp32 (measured: see the recipe's comment).
* `fp16`: onnxruntime's float16 conversion (onnxruntime.transformers.float16), inputs
  and outputs kept fp32 (keep_io_types), so the task code feeds and reads the same
  arrays. ONNX Runtime's CPU provider has few fp16 kernels and runs most ops through Cast nodes: on the CPU it is
  usually slower than fp32 (measured per model by `ocula models optimize`; see the manifest).

A model family the table does not know is classified by its graph: where more weight
feeds Conv than MatMul/Gemm, static; otherwise dynamic.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import OculaError, UnsupportedModelError
from engine.registry import Registry
from engine.runtimes.weight_only import graphs_of, quantize_weights

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard
    from engine.runtimes.onnx_backend import OnnxRunner

log = logging.getLogger("ocula.runtimes")

# ONNX operators that only a quantized graph holds (QDQ pairs, dynamic quantization, QOperator)
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm",
    "QAttention", "QLinearAdd", "QLinearMul", "MatMulNBits",
})
MAX_CALIBRATION_FEEDS = 64  # enough for MinMax ranges; bounded so memory stays small


class QuantizationError(OculaError):
    """onnxruntime could not quantize or convert this graph."""


@dataclass(frozen=True)
class QuantRecipe:
    """How one kind of model is turned into a variant of a precision."""

    name: str
    precision: str  # int8 | fp16
    method: str  # dynamic | static | weight-only | fp16 | parts
    summary: str
    per_channel: bool = True
    op_types: tuple[str, ...] = ()  # operators to quantize; () = onnxruntime's defaults
    # method "parts": (graph-key prefix, recipe name) pairs, the first match converts a
    # graph; a graph no prefix matches stays fp32
    parts: tuple[tuple[str, str], ...] = ()

    @property
    def needs_calibration(self) -> bool:
        return self.method == "static" or any(RECIPES.get(name).needs_calibration
                                              for _, name in self.parts)

    def part_for(self, graph_key: str) -> QuantRecipe | None:
        """The recipe that converts the graph `graph_key`, or None: it stays fp32."""
        if self.method != "parts":
            return self
        for prefix, name in self.parts:
            if graph_key.startswith(prefix):
                return RECIPES.get(name)
        return None


RECIPES: Registry[str, QuantRecipe] = Registry("quantization recipe", missing=UnsupportedModelError)
for _recipe in (
    QuantRecipe("dynamic-int8", "int8", "dynamic",
                "dynamic int8: MatMul weights int8 per channel, activations per call",
                op_types=("MatMul",)),
    QuantRecipe("static-qdq-int8", "int8", "static",
                "static QDQ int8: uint8 activations calibrated on images, int8 weights per "
                "channel", op_types=("Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "Clip",
                                     "Sigmoid", "Concat", "MaxPool", "AveragePool", "Resize")),
    # SegFormer (issue 13): its MatMuls are small (sequence-reduced attention) and gain
    # nothing from dynamic int8 on AVX2, while the convolutions (patch embeddings, the
    # decode head's 1x1 fuse over 4x256 channels at 128x128) carry most of the time; static
    # QDQ of the convolutions alone: SegFormer-B0 512 forward 208 -> 169 ms (Zen 3), where
    # adding the MatMuls made it slower (194 ms) and dynamic MatMuls alone did not help (211).
    QuantRecipe("static-conv-int8", "int8", "static",
                "static QDQ int8 of the convolutions: uint8 activations calibrated on images, "
                "int8 weights per channel; MatMuls stay fp32", op_types=("Conv",)),
    # Text decoders (issue 13): a cached step is one token times every weight matrix, as
    # fast as the weights can be read. quantize_dynamic skipped GPT-2's weights (its Conv1D
    # layers export as Gemm, outside the integer-op registry), so "int8 of both graphs"
    # had saved only the encoder's 69 ms. 8-bit blocks of 32 through MatMulNBits: ViT-GPT2's
    # cached step 18.0 -> 10.6 ms (Zen 3); see engine.runtimes.weight_only.
    QuantRecipe("weight-only-int8", "int8", "weight-only",
                "int8 weights in blocks of 32 (onnxruntime MatMulNBits), activations int8 "
                "per block at run time"),
    QuantRecipe("captioner-int8", "int8", "parts",
                "dynamic int8 of the image encoder (MatMul weights int8 per channel); "
                "8-bit weights in blocks of 32 in the text decoder (MatMulNBits)",
                parts=(("encoder", "dynamic-int8"), ("decoder", "weight-only-int8"))),
    QuantRecipe("fp16", "fp16", "fp16", "fp16 weights and compute, fp32 inputs and outputs"),
):
    RECIPES.register(_recipe.name, _recipe, where="engine.runtimes.quantize")

# model family -> int8 recipe. Keys: a transformers model_type, "sidecar:<family>",
# "output:<sidecar output layout>" or "runtime:<runtime>"; the first key of a card found wins.
FAMILY_RECIPES: Registry[str, str] = Registry("quantization family", missing=UnsupportedModelError)
_DYNAMIC = ("vit", "deit", "dinov2", "dinov2_with_registers", "beit", "swin", "swinv2", "yolos",
            "detr", "conditional_detr", "deformable_detr", "rt_detr", "rt_detr_v2", "d_fine",
            "mask2former", "swin2sr", "blip",
            "git", "owlv2", "owlvit", "sam", "clip", "siglip",
            "output:hidden_states", "output:detr", "output:rtdetr")
_STATIC = ("resnet", "convnext", "convnextv2", "mobilenet_v2", "mobilenet_v1", "efficientnet",
           "regnet", "sidecar:yolo", "output:yolov8", "output:yolov5", "output:image",
           "runtime:spandrel")
_STATIC_CONV = ("segformer",)
_CAPTIONERS = ("vision-encoder-decoder", "output:seq2seq", "gpt2")
for _keys, _name in ((_DYNAMIC, "dynamic-int8"), (_STATIC, "static-qdq-int8"),
                     (_STATIC_CONV, "static-conv-int8"), (_CAPTIONERS, "captioner-int8")):
    for _key in _keys:
        FAMILY_RECIPES.register(_key, _name, where="engine.runtimes.quantize")


def family_keys(card: ModelCard, model_type: str | None = None) -> list[str]:
    """The keys FAMILY_RECIPES is searched with for `card`, most specific first."""
    sidecar = card.sidecar or {}
    keys = []
    if sidecar.get("family"):
        keys.append(f"sidecar:{sidecar['family']}")
    for name in (model_type, sidecar.get("model_type")):
        if name:
            keys.append(str(name))
    if sidecar.get("output"):
        keys.append(f"output:{sidecar['output']}")
    keys.append(f"runtime:{card.runtime}")
    return keys


def recipe_for(card: ModelCard, precision: str, *, model_type: str | None = None,
               graph: Path | None = None) -> tuple[QuantRecipe, str]:
    """(recipe, why) for a `precision` variant of `card`."""
    if precision == "fp16":
        return RECIPES.get("fp16"), "fp16 conversion"
    if precision != "int8":
        raise UnsupportedModelError(f"No variant recipe for precision {precision!r}; "
                                    f"variants are int8 or fp16.")
    for key in family_keys(card, model_type):
        name = FAMILY_RECIPES.find(key)
        if name is not None:
            return RECIPES.get(name), f"model family {key}"
    if graph is None:
        raise UnsupportedModelError(
            f"Model '{card.id}': its family ({', '.join(family_keys(card, model_type))}) is not "
            f"in the quantization table and there is no graph to classify.")
    conv, matmul = weight_census(graph)
    name = "static-qdq-int8" if conv > matmul else "dynamic-int8"
    return RECIPES.get(name), (f"unknown family; its graph has {conv:,} Conv and {matmul:,} "
                               f"MatMul/Gemm weights")


def weight_census(path: Path) -> tuple[int, int]:
    """(Conv weight elements, MatMul/Gemm weight elements) of an ONNX graph (subgraphs too)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    sizes: dict[str, int] = {}
    conv = matmul = 0
    for graph in graphs_of(model.graph):
        for init in graph.initializer:
            sizes[init.name] = int(np.prod(init.dims)) if init.dims else 1
        for node in graph.node:
            weight = sum(sizes.get(name, 0) for name in node.input[1:2])
            if node.op_type in ("Conv", "ConvTranspose"):
                conv += weight
            elif node.op_type in ("MatMul", "Gemm"):
                matmul += weight
    return conv, matmul


def op_census(path: Path) -> Counter:
    """How many nodes of each operator type the graph holds, subgraphs included."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for graph in graphs_of(model.graph) for node in graph.node)


def quantized_ops(path: Path) -> dict[str, int]:
    """The quantization operators in a graph (empty for a float graph)."""
    return {op: n for op, n in sorted(op_census(path).items()) if op in QUANTIZED_OPS}


# -- writing variants --------------------------------------------------------------------------


def make_graph_variant(source: Path, target: Path, recipe: QuantRecipe, *,
                       calibration: Sequence[Mapping[str, np.ndarray]] = ()) -> Path:
    """Write `recipe`'s variant of the fp32 graph `source` to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if recipe.method == "fp16":
            _to_fp16(source, target)
        elif recipe.method == "dynamic":
            _dynamic(source, target, recipe)
        elif recipe.method == "weight-only":
            with _quiet():
                quantize_weights(source, target)
        elif recipe.method == "static":
            if not calibration:
                raise QuantizationError(f"{source.name}: static quantization needs calibration "
                                        f"inputs, and none were recorded.")
            _static(source, target, recipe, calibration)
        else:
            raise UnsupportedModelError(f"unknown variant method {recipe.method!r}")
    except OculaError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"{source.name}: {recipe.summary} failed ({first}).") from exc
    _keep_metadata(source, target)
    return target


def _keep_metadata(source: Path, target: Path) -> None:
    """The source graph's metadata_props (ocula.scale, Ultralytics names…) on the variant:
    the tasks read them from the graph, and the quantizers do not always carry them over."""
    import onnx

    wanted = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    if not wanted:
        return
    model = onnx.load(str(target))
    present = {p.key for p in model.metadata_props}
    missing = {k: v for k, v in wanted.items() if k not in present}
    if missing:
        for key, value in missing.items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.save(model, str(target))


def _quiet() -> contextlib.AbstractContextManager:
    """onnxruntime.quantization logs advice on the root logger at WARNING; keep it out."""
    root = logging.getLogger()
    level = root.level

    @contextlib.contextmanager
    def quiet() -> Iterator[None]:
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)

    return quiet()


def _dynamic(source: Path, target: Path, recipe: QuantRecipe) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         per_channel=recipe.per_channel,
                         op_types_to_quantize=list(recipe.op_types) or None)


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over recorded feeds (duck-typed: the
    reader only needs get_next/rewind)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]) -> None:
        self.feeds = [{n: np.asarray(f[n]) for n in names} for f in feeds]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def _static(source: Path, target: Path, recipe: QuantRecipe,
            calibration: Sequence[Mapping[str, np.ndarray]]) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = [i.name for i in onnx.load(str(source), load_external_data=False).graph.input]
    reader = type("RecordedFeeds", (_Feeds, CalibrationDataReader), {})(calibration, names)
    prepared = target.with_name(target.stem + ".prepared.onnx")
    with _quiet():
        try:  # shape inference + graph fusions first, as onnxruntime advises
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            model_input = prepared
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation only
            log.info("%s: quantization pre-processing skipped (%s)", source.name, exc)
            model_input = source
        try:
            quantize_static(str(model_input), str(target), reader,
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=recipe.per_channel,
                            calibrate_method=CalibrationMethod.MinMax,
                            op_types_to_quantize=list(recipe.op_types) or None)
        finally:
            prepared.unlink(missing_ok=True)
            for extra in target.parent.glob("augmented_model*.onnx"):
                extra.unlink(missing_ok=True)


def _to_fp16(source: Path, target: Path) -> None:
    # onnxruntime's own converter (onnxruntime.transformers.float16), not onnxconverter-
    # common's: the same conversion, but the latter scans the whole graph for every blocked
    # node (quadratic): DETR-R50 (2,341 nodes) took over 18 minutes there, 3.1 s here.
    from onnxruntime.transformers import float16

    import onnx
    import onnxruntime as ort

    # Cast nodes to float32 are rewritten to float16 by default, which breaks graphs whose
    # later nodes need float32 (index arithmetic in exported post-processing); such graphs
    # are converted again with Cast kept as it is.
    for blocked in ((), ("Cast",)):
        model = onnx.load(str(source))
        with _quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "values out of fp16 range were clamped"
            half = float16.convert_float_to_float16(
                model, keep_io_types=True,
                op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *blocked])
        onnx.save(half, str(target))
        try:
            ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            return
        except Exception as exc:  # noqa: BLE001 - onnxruntime's load errors have no common type
            error = exc
    raise QuantizationError(f"{source.name}: the fp16 conversion does not load in ONNX "
                            f"Runtime ({str(error).splitlines()[0][:300]}).")


# -- calibration inputs: what the fp32 graph was really fed -------------------------------------


class _RecordingSession:
    """An InferenceSession stand-in that keeps a copy of every feed, then runs the real one."""

    def __init__(self, session: Any, store: list[dict[str, np.ndarray]], limit: int) -> None:
        self._session, self._store, self._limit = session, store, limit

    def run(self, output_names: Any, feed: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        if len(self._store) < self._limit:
            self._store.append({k: np.array(v, copy=True) for k, v in feed.items()})
        return self._session.run(output_names, feed, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@contextlib.contextmanager
def record_feeds(runner: OnnxRunner, *,
                 limit: int = MAX_CALIBRATION_FEEDS) -> Iterator[dict[str, list[dict]]]:
    """While the block runs, every graph feed of `runner` is recorded, per session name
    (aliases share their session's list). The sessions are put back afterwards."""
    originals = dict(runner.sessions)
    recorded: dict[str, list[dict]] = {}
    proxies: dict[int, _RecordingSession] = {}
    for name, session in originals.items():
        proxy = proxies.get(id(session))
        if proxy is None:
            store = recorded.setdefault(name, [])
            proxy = proxies[id(session)] = _RecordingSession(session, store, limit)
        else:
            recorded[name] = proxy._store
        runner.sessions[name] = proxy  # type: ignore[assignment]
    try:
        yield recorded
    finally:
        runner.sessions.clear()
        runner.sessions.update(originals)
