"""engine.runtimes.weight_only: Gemm -> MatMul (+ Add) keeps the graph's arithmetic, in If
branches reading the main graph's weights too; the 8-bit block weights stay close to fp32."""
from __future__ import annotations

import logging

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from engine.runtimes import weight_only  # noqa: E402
from engine.runtimes.quantize import op_census  # noqa: E402

K, N = 64, 48


def decoder_like(path):
    """x (2, K) -> Gemm(transB, bias) -> Gemm(no bias) -> If(flag: Gemm on an outer-scope
    weight | Identity): the shapes of an exported GPT-2 block in a merged decoder."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32), "w1")  # transB
    b1 = numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32), "w2")
    w3 = numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w3")
    then = helper.make_graph([helper.make_node("Gemm", ["h2", "w3"], ["y_then"])], "then", [],
                             [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [2, N])])
    other = helper.make_graph([helper.make_node("Identity", ["h2"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [2, K])])
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1),
             helper.make_node("Gemm", ["h1", "w2"], ["h2"]),
             helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(
        nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K]),
                           helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, b1, w2, w3])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(path, flag=True):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, K)).astype(np.float32)
    return session.run(None, {"x": x, "flag": np.array(flag)})[0]


def test_gemms_become_matmuls_with_the_same_results(tmp_path):
    source = decoder_like(tmp_path / "gemm.onnx")
    model = onnx.load(str(source))
    assert weight_only.gemms_as_matmuls(model) == 3
    onnx.save(model, str(tmp_path / "matmul.onnx"))
    ops = op_census(tmp_path / "matmul.onnx")
    assert ops["Gemm"] == 0 and ops["MatMul"] == 3 and ops["Add"] == 1
    names = {init.name for init in model.graph.initializer}
    assert "w1" not in names and "w1.T" in names  # the transposed copy replaces it
    for flag in (True, False):
        np.testing.assert_allclose(run(tmp_path / "matmul.onnx", flag), run(source, flag),
                                   rtol=1e-5, atol=1e-4)


def test_eight_bit_block_weights_stay_close_and_leave_logging_alone(tmp_path):
    pytest.importorskip("onnx_ir")
    source = decoder_like(tmp_path / "gemm.onnx")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    weight_only.quantize_weights(source, tmp_path / "int8.onnx")
    assert list(root.handlers) == handlers and root.level == level
    ops = op_census(tmp_path / "int8.onnx")
    assert ops["MatMulNBits"] == 3 and ops.get("Gemm", 0) == 0
    for flag in (True, False):
        want, got = run(source, flag).ravel(), run(tmp_path / "int8.onnx", flag).ravel()
        assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) > 0.999
