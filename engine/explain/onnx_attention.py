"""Attention maps from ONNX models: expose the attention Softmax outputs as graph outputs.

An ONNX graph keeps no `output_attentions` switch, but every attention block has a
Softmax whose output multiplies the values. Graph surgery (the `onnx` package) adds
those Softmax outputs to the graph's outputs, with their inferred shapes, and
onnxruntime then returns them next to the model's own outputs. The patch size is read
from the patch-embedding Conv, so the token layout comes from the graph, not from a
square-root guess.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.explain.geometry import Geometry, stretch_geometry
from engine.explain.maps import TokenLayout
from engine.cpu import onnx_cpu_threads

if TYPE_CHECKING:
    import onnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PASS_THROUGH_AFTER = {"Cast", "Dropout", "Identity"}
_PASS_THROUGH_BEFORE = {"Add", "Mul", "Div", "Sub", "Where", "Cast", "Reshape"}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _producers(graph: onnx.GraphProto) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _feeds_matmul(name: str, consumers: dict[str, list[Any]], hops: int = 3) -> bool:
    for node in consumers.get(name, []):
        if node.op_type == "MatMul" and node.input[0] == name:
            return True
        if node.op_type in _PASS_THROUGH_AFTER and hops > 0 and _feeds_matmul(node.output[0], consumers, hops - 1):
            return True
    return False


def _from_matmul(name: str, producers: dict[str, Any], hops: int = 4) -> bool:
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type == "MatMul":
        return True
    if node.op_type in _PASS_THROUGH_BEFORE and hops > 0:
        return any(_from_matmul(i, producers, hops - 1) for i in node.input if i)
    return False


def attention_softmax_nodes(model: onnx.ModelProto) -> list[Any]:
    """Softmax nodes of attention blocks: fed by a Q·Kᵀ MatMul (through scale/mask ops)
    and multiplying the values in a MatMul. Graph order = layer order."""
    graph = model.graph
    consumers, producers = _consumers(graph), _producers(graph)
    return [
        node for node in graph.node
        if node.op_type == "Softmax"
        and _feeds_matmul(node.output[0], consumers)
        and _from_matmul(node.input[0], producers)
    ]


def _walk_to_matmul(name: str, producers: dict[str, Any], through: set[str], hops: int = 6) -> Any:
    """The MatMul that `name` comes from through `through` ops (first input each hop), or None."""
    for _ in range(hops):
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "MatMul":
            return node
        if node.op_type not in through or not node.input:
            return None
        # follow the input that is computed (a bias or scale comes from an initializer/Constant)
        computed = [i for i in node.input if i and i in producers and producers[i].op_type != "Constant"]
        if not computed:
            return None
        name = computed[0]
    return None


@dataclass(frozen=True)
class TokenTensors:
    """Graph tensors that carry tokens, found from the attention Softmax nodes."""

    keys: str | None  # the last attention block's keys (heads, d, N) or (heads, N, d), as in Q·Kᵀ
    layer_inputs: tuple[str, ...]  # per layer: the (normed) tokens its query projection reads, (1, N, D)
    final_candidates: tuple[str, ...]  # rank-3 (…, D) tensors after the last attention block


def token_tensors(model: onnx.ModelProto, softmax_nodes: Sequence[Any]) -> TokenTensors:
    """Where a ViT graph keeps its tokens: the keys and layer inputs of each attention block
    (walked back from its Softmax: Q·Kᵀ MatMul, then the query projection's MatMul), and the
    tensors of the hidden size after the last block (the final norm's output among them)."""
    from onnx import shape_inference

    graph = model.graph
    producers = _producers(graph)
    initializers = {t.name for t in graph.initializer}
    keys = None
    layer_inputs: list[str] = []
    through = {"Add", "Mul", "Div", "Sub", "Where", "Cast", "Reshape", "Transpose"}
    for index, node in enumerate(softmax_nodes):
        scores = _walk_to_matmul(node.input[0], producers, _PASS_THROUGH_BEFORE)
        if scores is None or len(scores.input) < 2:
            continue
        if index == len(softmax_nodes) - 1:
            keys = scores.input[1]
        projection = _walk_to_matmul(scores.input[0], producers, through)
        if projection is not None and projection.input[1] in initializers:
            layer_inputs.append(projection.input[0])
    if len(layer_inputs) != len(softmax_nodes):
        layer_inputs = []
    finals: list[str] = []
    if layer_inputs:
        try:
            inferred = shape_inference.infer_shapes(model)
            shapes = {vi.name: vi.type.tensor_type.shape for vi in inferred.graph.value_info}
        except Exception:  # noqa: BLE001 - without shapes there is no final-token guess
            shapes = {}
        hidden = shapes.get(layer_inputs[-1])
        width = hidden.dim[-1].dim_value if hidden is not None and len(hidden.dim) == 3 else 0
        last = {n.output[0]: i for i, n in enumerate(graph.node) if n.output}.get(softmax_nodes[-1].output[0], 0)
        for node in list(graph.node)[last + 1:]:
            for out in node.output:
                shape = shapes.get(out)
                if shape is not None and len(shape.dim) == 3 and width and shape.dim[-1].dim_value == width:
                    finals.append(out)
    return TokenTensors(keys, tuple(layer_inputs), tuple(finals[-4:]))


def expose_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` whose outputs also include every attention Softmax output."""
    import onnx
    from onnx import TensorProto, helper, shape_inference

    nodes = attention_softmax_nodes(model)
    if not nodes:
        raise ValueError("no attention Softmax found in the ONNX graph (is this a transformer?)")
    names = [node.output[0] for node in nodes]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    try:
        inferred = shape_inference.infer_shapes(exposed)
        known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    except Exception:  # noqa: BLE001 - inference is a nicety; outputs work without shapes
        known = {}
    existing = {out.name for out in exposed.graph.output}
    for name in names:
        if name in existing:
            continue
        info = known.get(name)
        if info is None:
            info = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "heads", "queries", "keys"])
        exposed.graph.output.append(info)
    return exposed, names


def patch_embedding_conv(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(height, width) stride of the first Conv whose kernel equals its stride (patchify)."""
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
        kernel, strides = attrs.get("kernel_shape"), attrs.get("strides")
        if kernel and strides and kernel == strides and max(kernel) > 1:
            return int(strides[0]), int(strides[-1])
    return None


@dataclass
class OnnxAttentionModel:
    """An ONNX vision transformer with its attention Softmax outputs exposed."""

    session: Any  # onnxruntime.InferenceSession over the exposed graph
    attention_outputs: list[str]
    input_name: str
    patch_size: tuple[int, int]
    image_size: tuple[int, int] | None  # (height, width) the graph expects; None = any
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    prefix_tokens: tuple[str, ...] | None = None  # e.g. ("cls",) or ("cls", "registers", …); None = infer
    name: str = "onnx"
    notes: list[str] = field(default_factory=list)
    explain_methods: tuple[str, ...] = ("raw", "rollout", "dino")
    processor: Any = None  # a transformers image processor; when set, preprocessing goes through it
    tokens: TokenTensors | None = None  # where the graph keeps keys and per-layer tokens

    @classmethod
    def from_model(cls, model: onnx.ModelProto, *, name: str = "onnx", input_name: str | None = None,
                   image_size: Sequence[int] | None = None, patch_size: Sequence[int] | int | None = None,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   prefix_tokens: Sequence[str] | None = None, providers: Sequence[str] | None = None
                   ) -> OnnxAttentionModel:
        import onnx
        import onnxruntime as ort

        exposed, names = expose_attention(model)
        tokens = token_tensors(model, attention_softmax_nodes(model))
        extra = [n for n in (tokens.keys, *tokens.layer_inputs, *tokens.final_candidates) if n]
        existing = {out.name for out in exposed.graph.output}
        for extra_name in dict.fromkeys(extra):
            if extra_name not in existing:
                exposed.graph.output.append(onnx.helper.make_tensor_value_info(extra_name, onnx.TensorProto.FLOAT, None))
        graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        if input_name is None:
            if len(graph_inputs) != 1:
                raise ValueError(f"{name}: the graph has {len(graph_inputs)} inputs; say which is the image")
            input_name = graph_inputs[0].name
        chosen = next((i for i in graph_inputs if i.name == input_name), None)
        if chosen is None:
            raise ValueError(f"{name}: no graph input named '{input_name}'")
        if image_size is None:
            dims = [d.dim_value for d in chosen.type.tensor_type.shape.dim]
            if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
                image_size = (dims[2], dims[3])
        if patch_size is None:
            patch_size = patch_embedding_conv(model)
            if patch_size is None:
                raise ValueError(f"{name}: no patch-embedding Conv found; pass patch_size (sidecar 'patch_size')")
        elif isinstance(patch_size, int):
            patch_size = (patch_size, patch_size)
        # The threads every CPU session of the engine gets: one per physical core, or the
        # user's (or a Ray worker's) OCULA_ONNX_THREADS, so replicas do not oversubscribe.
        options = ort.SessionOptions()
        options.intra_op_num_threads = onnx_cpu_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(
            exposed.SerializeToString(), options, providers=list(providers or ["CPUExecutionProvider"])
        )
        return cls(
            session=session,
            attention_outputs=names,
            input_name=input_name,
            patch_size=(int(patch_size[0]), int(patch_size[1])),
            image_size=None if image_size is None else (int(image_size[0]), int(image_size[1])),
            mean=tuple(mean),
            std=tuple(std),
            prefix_tokens=None if prefix_tokens is None else tuple(prefix_tokens),
            name=name,
            tokens=tokens,
            explain_methods=("raw", "rollout", "dino")
            + (("discover",) if tokens.keys or tokens.final_candidates else ())
            + (("cls_similarity", "patch_similarity") if tokens.final_candidates else ()),
        )

    @classmethod
    def from_path(cls, path: str | os.PathLike, **options: Any) -> OnnxAttentionModel:
        import onnx

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX file not found")
        model = onnx.load(str(path))
        return cls.from_model(model, name=options.pop("name", path.name), **options)

    # -- running ----------------------------------------------------------------------
    def preprocess(self, image: Any, size: tuple[int, int] | None = None,
                   notes: list[str] | None = None) -> tuple[np.ndarray, Geometry]:
        """PIL image -> (1, 3, H, W) float32 normalised, plus the geometry (plain resize, or
        the processor's own resize/crop when one is attached)."""
        from PIL import Image

        if self.processor is not None and size is None:
            from engine.explain.geometry import pixel_inputs

            pixels, geometry = pixel_inputs(self.processor, image.convert("RGB"), [] if notes is None else notes)
            pixels = pixels.numpy() if hasattr(pixels, "numpy") else pixels  # torch or numpy
            return np.asarray(pixels, dtype=np.float32), geometry

        target = size or self.image_size
        if target is None:
            raise ValueError(f"{self.name}: the graph accepts any size; pass the input size (height, width)")
        rgb = image.convert("RGB")
        resized = rgb.resize((target[1], target[0]), Image.Resampling.BICUBIC)
        array = np.asarray(resized, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return array.transpose(2, 0, 1)[None].astype(np.float32), stretch_geometry(rgb.size, target)

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """(1, 3, H, W) -> float32 (layers, heads, N, N) attention probabilities."""
        outputs = self.session.run(self.attention_outputs, {self.input_name: pixel_values.astype(np.float32)})
        return np.stack([np.asarray(o[0], dtype=np.float32) for o in outputs])

    def run_all(self, pixel_values: np.ndarray) -> dict[str, Any]:
        """One forward: {"attentions": (layers, heads, N, N), "keys": (N, D) | None,
        "layer_features": (layers, N, D) | None (each block's output tokens: the next block's
        normed input, the final tokens for the last), "features": (N, D) | None (final tokens)}."""
        tokens = self.tokens or TokenTensors(None, (), ())
        extra = [n for n in dict.fromkeys((tokens.keys, *tokens.layer_inputs, *tokens.final_candidates)) if n]
        outputs = self.session.run(self.attention_outputs + extra, {self.input_name: pixel_values.astype(np.float32)})
        attentions = np.stack([np.asarray(o[0], dtype=np.float32) for o in outputs[:len(self.attention_outputs)]])
        found = dict(zip(extra, outputs[len(self.attention_outputs):]))
        n = attentions.shape[-1]
        keys = None
        if tokens.keys in found:
            k = np.asarray(found[tokens.keys][0], dtype=np.float32)  # (heads, d, N) or (heads, N, d)
            if k.ndim == 3 and k.shape[-1] == n and k.shape[1] != n:
                k = k.transpose(0, 2, 1)
            if k.ndim == 3 and k.shape[1] == n:
                keys = k.transpose(1, 0, 2).reshape(n, -1)
        final = None
        for name in reversed(tokens.final_candidates):
            value = np.asarray(found.get(name, np.zeros(0)))
            if value.ndim == 3 and value.shape[1] == n:
                final = value[0].astype(np.float32)
                break
        layer_features = None
        inputs = [np.asarray(found[name][0], dtype=np.float32) for name in tokens.layer_inputs if name in found]
        if final is not None and len(inputs) == len(self.attention_outputs) and all(i.shape[0] == n for i in inputs):
            layer_features = np.stack(inputs[1:] + [final])
        return {"attentions": attentions, "keys": keys, "layer_features": layer_features, "features": final}

    def layout(self, input_size: tuple[int, int], num_tokens: int) -> TokenLayout:
        """Token layout from the patch conv; tokens before the grid are CLS then the rest."""
        grid = (input_size[0] // self.patch_size[0], input_size[1] // self.patch_size[1])
        extra = num_tokens - grid[0] * grid[1]
        if extra < 0:
            raise ValueError(f"{self.name}: {num_tokens} tokens cannot hold a {grid[0]}×{grid[1]} grid")
        special: dict[str, tuple[int, ...]] = {}
        names = self.prefix_tokens if self.prefix_tokens is not None else (("cls",) + ("registers",) * (extra - 1)
                                                                           if extra else ())
        if len(names) != extra:
            raise ValueError(f"{self.name}: {extra} tokens precede the patch grid but the sidecar names {len(names)}")
        for index, token in enumerate(names):
            special.setdefault(token, ())
            special[token] = special[token] + (index,)
        return TokenLayout(num_tokens=num_tokens, grid=grid, patch_start=extra, special=special,
                           patch_size=self.patch_size, input_size=(int(input_size[0]), int(input_size[1])))
