"""8-bit weight-only quantization of a text decoder: onnxruntime's MatMulNBits.

A cached decoder step multiplies one token's activations by every weight matrix of the
model: a matrix-vector product whose time is the time to read the weights. On ViT-GPT2
(GPT-2 124M layout, Zen 3, 2 threads) the 72 weight products of a step read 340 MB of
fp32 and take 14 ms of its 18; quantize_dynamic left them alone, because GPT-2's Conv1D
layers export as Gemm, which its integer-op registry does not cover. Here the Gemms become
MatMul (+ Add for the bias), and onnxruntime's MatMulNBitsQuantizer stores each weight as
int8 in blocks of 32 along K with one fp32 scale a block (symmetric); `accuracy_level` 4
lets the kernel quantize the activations to int8 per block too, so the product runs on
integer instructions: 18.0 -> 10.6 ms a step. Blocks of 32 keep the weights' error small
(cosine 0.9999 on ViT-B/16 against per-channel int8's 0.9996); 4-bit (7.8 ms) loses more
than a caption can afford. Prompt-sized products (an image encoder's 197 rows) are slower
this way than with quantize_dynamic (347 vs 152 ms on ViT-B/16): encoders keep that recipe.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

BITS = 8
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 compute of the activations (MatMulNBits' attribute)


def quantize_weights(source: Path, target: Path) -> None:
    """Write the 8-bit weight-only variant of the graph `source` (subgraphs included, as in
    a merged decoder's If branches) to `target`."""
    import onnx

    nbits = _quantizer_module()
    model = onnx.load(str(source))
    gemms_as_matmuls(model)
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True,
                                                bits=BITS, accuracy_level=ACCURACY_LEVEL)
    quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


def _quantizer_module() -> Any:
    """onnxruntime.quantization.matmul_nbits_quantizer, imported without the side effect
    it has: `logging.basicConfig(level=INFO)` on the root logger (our logging is ours)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:  # it imports onnx_ir (and onnx_ir sympy) at the top
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits
    except ImportError as exc:
        from engine.errors import MissingPackageError

        raise MissingPackageError(f"8-bit decoder weights need onnxruntime's MatMulNBits "
                                  f"quantizer, which needs {exc.name or 'onnx-ir'} (the full "
                                  f"build has it; or pip install onnx-ir).") from exc
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    logging.getLogger(nbits.__name__).setLevel(logging.WARNING)  # one INFO line a weight
    return nbits


def gemms_as_matmuls(model: Any) -> int:
    """Rewrite, in place, every Gemm with a constant 2-D weight (transA 0, alpha and beta
    1) as MatMul, plus Add of the bias when it has one; transB weights are stored
    transposed. Weights may live in an outer graph (merged decoders keep them in the
    main graph). Returns how many were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    owners: dict[str, Any] = {}  # initializer name -> (graph, tensor)
    for graph in graphs_of(model.graph):
        for init in graph.initializer:
            owners.setdefault(init.name, (graph, init))
    transposed: dict[str, str] = {}
    count = 0
    for graph in graphs_of(model.graph):
        nodes = []
        for node in graph.node:
            weight = node.input[1] if node.op_type == "Gemm" and len(node.input) > 1 else ""
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if (weight not in owners or len(owners[weight][1].dims) != 2
                    or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                    or attrs.get("beta", 1.0) != 1.0):
                nodes.append(node)
                continue
            if attrs.get("transB", 0):
                if weight not in transposed:
                    home, tensor = owners[weight]
                    flipped = numpy_helper.from_array(
                        np.ascontiguousarray(numpy_helper.to_array(tensor).T), f"{weight}.T")
                    home.initializer.append(flipped)
                    owners[flipped.name] = (home, flipped)
                    transposed[weight] = flipped.name
                weight = transposed[weight]
            bias = node.input[2] if len(node.input) > 2 else ""
            product = f"{node.output[0]}.matmul" if bias else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product],
                                          name=f"{node.name or node.output[0]}.matmul"))
            if bias:
                nodes.append(helper.make_node("Add", [product, bias], [node.output[0]],
                                              name=f"{node.name or node.output[0]}.bias"))
            count += 1
        del graph.node[:]
        graph.node.extend(nodes)
    _drop_unused(model, onnx)
    return count


def _drop_unused(model: Any, onnx: Any) -> None:
    """Remove initializers no node reads any more (a transposed weight's original)."""
    used = {name for graph in graphs_of(model.graph) for node in graph.node for name in node.input}
    used |= {out.name for out in model.graph.output}
    for graph in graphs_of(model.graph):
        keep = [init for init in graph.initializer if init.name in used]
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)


def graphs_of(graph: Any) -> Iterator[Any]:
    """`graph` and every subgraph in it (If/Loop/Scan bodies), depth first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graphs_of(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from graphs_of(sub)
