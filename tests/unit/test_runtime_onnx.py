"""ONNX backend: tiny torch modules exported with torch.onnx.export, run through load_runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from engine.catalog.card import ModelCard, Source
from engine.errors import OculaError, UnsupportedModelError
from engine.runtimes import load_runner
from engine.runtimes.base import Placement
from engine.runtimes.onnx_backend import OnnxRunner, default_thread_count, load_onnx
from tests.tolerances import fp32_tol

# ONNX Runtime vs torch on the same weights: two fp32 paths (tests/tolerances.py). Their
# difference is <= Σ K·eps·S, S = the network run on |weights| and |inputs| (the size of every
# term that reaches an output; measured here). TinyDetector: 3×3×3 conv (27) then Linear(8),
# S <= 3.6; its sigmoid boxes move by a quarter of that. TinyTextImage: 3-token sum, 1×1 conv
# (3), mean over 64 pixels, 4-term dot: Σ K = 74, S ~ 6.5.
DETECTOR_TOL = fp32_tol(27 + 8, scale=4).atol  # ~1.7e-5
TEXT_IMAGE_TOL = fp32_tol(3 + 3 + 64 + 4, scale=7).atol  # ~6e-5


def onnx_card(path: Path, tasks=("detect",), **extra) -> ModelCard:
    return ModelCard(
        id=f"local:{path.name}",
        name=path.name,
        tasks=tuple(tasks),
        runtime="onnx",
        source=Source.LOCAL,
        local_path=str(path),
        **extra,
    )


def export(
    module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter works offline; the dynamo exporter needs onnxscript.
    torch.onnx.export(
        module.eval(),
        args,
        str(path),
        dynamo=False,
        input_names=inputs,
        output_names=outputs,
        opset_version=17,
        dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
    )
    return path


class TinyDetector(torch.nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.cls = torch.nn.Linear(8, 5)
        self.box = torch.nn.Linear(8, 4)

    def forward(self, pixel_values):
        feats = torch.relu(self.conv(pixel_values)).flatten(2).transpose(1, 2)  # B, HW, 8
        return self.cls(feats), self.box(feats).sigmoid()


class TinyTextImage(torch.nn.Module):
    """Takes ids + mask + image, like a grounding model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embed = torch.nn.Embedding(10, 4)
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, input_ids, attention_mask, pixel_values):
        text = (self.embed(input_ids) * attention_mask.unsqueeze(-1).float()).sum(1)  # B, 4
        image = self.conv(pixel_values).mean((2, 3))  # B, 4
        return text @ image.T


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory) -> tuple[Path, TinyDetector]:
    module = TinyDetector()
    path = export(
        module,
        (torch.rand(1, 3, 16, 16),),
        tmp_path_factory.mktemp("det") / "det.onnx",
        ["pixel_values"],
        ["logits", "pred_boxes"],
    )
    return path, module


def test_single_file_forward_matches_torch(detector_file):
    path, module = detector_file
    runner = load_runner(onnx_card(path), device="cpu")
    assert isinstance(runner, OnnxRunner) and runner.module is None
    assert set(runner.sessions) == {"model"}
    assert runner.placement.provider == "CPUExecutionProvider" and runner.placement.device == "cpu"
    assert runner.placement.precision == "fp32" and runner.placement.fallback is None
    assert runner.memory_bytes == path.stat().st_size
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)  # float64 in: cast to what the graph wants
    out = runner.forward(
        {"pixel_values": x, "pixel_mask": np.ones((2, 16, 16), np.int64), "output_attentions": True}
    )  # names the graph lacks are not fed
    with torch.no_grad():
        logits, boxes = module(x.float())
    assert isinstance(out.logits, torch.Tensor) and out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, logits, atol=DETECTOR_TOL, rtol=0)
    torch.testing.assert_close(out.pred_boxes, boxes, atol=DETECTOR_TOL / 4, rtol=0)


def test_int_inputs_cast_and_missing_inputs_named(tmp_path):
    module = TinyTextImage()
    args = (torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 0]]), torch.rand(1, 3, 8, 8))
    path = export(
        module,
        args,
        tmp_path / "grounding.onnx",
        ["input_ids", "attention_mask", "pixel_values"],
        ["logits"],
    )
    runner = load_runner(onnx_card(path), device="cpu")
    ids = np.array([[4, 5, 6]], np.int32)  # int32 in; the graph wants int64
    mask = torch.tensor([[1, 0, 1]])
    pixels = torch.rand(1, 3, 8, 8)
    out = runner.forward({"input_ids": ids, "attention_mask": mask, "pixel_values": pixels})
    with torch.no_grad():
        expected = module(torch.from_numpy(ids).long(), mask, pixels)
    torch.testing.assert_close(out.logits, expected, atol=TEXT_IMAGE_TOL, rtol=0)
    with pytest.raises(OculaError, match="attention_mask"):
        runner.forward({"input_ids": ids, "pixel_values": pixels})


def test_single_input_graph_accepts_pixel_values_under_another_name(tmp_path):
    module = torch.nn.Conv2d(3, 3, 1)
    path = export(module, (torch.rand(1, 3, 4, 4),), tmp_path / "up.onnx", ["input"], ["output"])
    runner = load_runner(onnx_card(path, tasks=("restore",)), device="cpu")
    x = torch.rand(1, 3, 4, 4)
    out = runner.forward({"pixel_values": x})
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(out.output, expected, atol=1e-5, rtol=0)
    assert out.reconstruction is out.output  # restore task: the single output is the image
    with pytest.raises(OculaError, match="rejected its inputs"):  # fixed 4x4 graph, 6x6 given
        runner.forward({"pixel_values": torch.rand(1, 3, 6, 6)})


def test_sidecar_layout_aliases_outputs_and_input_name(tmp_path):
    module = TinyDetector(seed=3)
    path = export(
        module, (torch.rand(1, 3, 16, 16),), tmp_path / "detr.onnx", ["images"], ["out0", "out1"]
    )
    sidecar = {"output": "detr", "input_name": "images"}
    runner = load_runner(onnx_card(path, sidecar=sidecar), device="cpu")
    x = torch.rand(1, 3, 16, 16)
    out = runner.forward({"pixel_values": x, "pixel_mask": torch.ones(1, 16, 16)})
    with torch.no_grad():
        logits, boxes = module(x)
    torch.testing.assert_close(out.logits, logits, atol=DETECTOR_TOL, rtol=0)
    torch.testing.assert_close(out.pred_boxes, boxes, atol=DETECTOR_TOL / 4, rtol=0)
    assert out.out0 is out.logits


def test_multi_file_export_keeps_sessions_by_stem(tmp_path):
    encoder = torch.nn.Linear(4, 6)
    decoder = torch.nn.Linear(6, 3)
    export(
        encoder,
        (torch.rand(1, 4),),
        tmp_path / "onnx" / "encoder_model.onnx",
        ["pixel_values"],
        ["last_hidden_state"],
    )
    export(
        decoder,
        (torch.rand(1, 6),),
        tmp_path / "onnx" / "decoder_model_merged.onnx",
        ["encoder_hidden_states"],
        ["logits"],
    )
    # the un-merged decoder is superseded by the merged one and must not be loaded
    export(
        decoder,
        (torch.rand(1, 6),),
        tmp_path / "onnx" / "decoder_model.onnx",
        ["encoder_hidden_states"],
        ["logits"],
    )
    runner = load_runner(onnx_card(tmp_path, tasks=("caption",)), device="cpu")
    assert set(runner.sessions) == {"encoder_model", "decoder_model_merged"}
    with pytest.raises(UnsupportedModelError, match="several ONNX graphs"):
        runner.forward({"pixel_values": torch.rand(1, 4)})
    x = torch.rand(2, 4)
    hidden = runner.run("encoder_model", {"pixel_values": x}).last_hidden_state
    logits = runner.run("decoder_model_merged", {"encoder_hidden_states": hidden}).logits
    with torch.no_grad():
        torch.testing.assert_close(logits, decoder(encoder(x)), atol=1e-5, rtol=0)
    # sidecar roles are extra keys to the same sessions
    roles = {
        "output": "seq2seq",
        "graphs": {
            "encoder": "onnx/encoder_model.onnx",
            "decoder": "onnx/decoder_model_merged.onnx",
        },
    }
    runner = load_runner(onnx_card(tmp_path, tasks=("caption",), sidecar=roles), device="cpu")
    assert runner.sessions["encoder"] is runner.sessions["encoder_model"]
    assert runner.sessions["decoder"] is runner.sessions["decoder_model_merged"]
    assert runner.input_names("encoder") == ["pixel_values"]


def _fp16_graph(path: Path) -> Path:
    """y = x * 2 + 1 in float16 (a real half-precision graph)."""
    two = numpy_helper.from_array(np.array(2, np.float16), "two")
    one = numpy_helper.from_array(np.array(1, np.float16), "one")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["pixel_values", "two"], ["scaled"]),
            helper.make_node("Add", ["scaled", "one"], ["logits"]),
        ],
        "half",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT16, ["b", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["b", 3])],
        [two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_precision_variants_choose_files_and_announce(tmp_path):
    fp32 = torch.nn.Linear(3, 3)
    export(
        fp32, (torch.rand(1, 3),), tmp_path / "onnx" / "model.onnx", ["pixel_values"], ["logits"]
    )
    _fp16_graph(tmp_path / "onnx" / "model_fp16.onnx")
    x = torch.rand(2, 3)
    runner = load_runner(onnx_card(tmp_path, tasks=("features",)), device="cpu", precision="auto")
    assert runner.placement.precision == "fp32"
    with torch.no_grad():
        torch.testing.assert_close(
            runner.forward({"pixel_values": x}).logits, fp32(x), atol=1e-5, rtol=0
        )
    half = load_runner(onnx_card(tmp_path, tasks=("features",)), device="cpu", precision="fp16")
    assert half.placement.precision == "fp16" and half.placement.fallback is None
    out = half.forward({"pixel_values": x})  # float32 in, cast to float16 for the graph
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, (x.half() * 2 + 1).float(), atol=1e-3, rtol=0)
    (tmp_path / "onnx" / "model_fp16.onnx").unlink()
    asked = load_runner(onnx_card(tmp_path, tasks=("features",)), device="cpu", precision="fp16")
    assert asked.placement.precision == "fp32"
    assert "no fp16 ONNX graph" in asked.placement.fallback


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_cuda_request_without_cuda_is_announced(detector_file):
    path, _ = detector_file
    card = onnx_card(path)
    runner = load_runner(card, device="cuda")
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert runner.placement.provider == "CPUExecutionProvider"
        assert "no CUDAExecutionProvider" in runner.placement.fallback
    # Asking onnxruntime for CUDA directly (as a naive loader would): the session lands on
    # the CPU, and the placement must say so rather than claim CUDA.
    asked = Placement(
        backend="onnx", device="cuda:0", precision="fp32", provider="CUDAExecutionProvider"
    )
    runner = load_onnx(card, path, asked)
    actual = runner.sessions["model"].get_providers()[0]
    assert runner.placement.provider == actual
    if actual != "CUDAExecutionProvider":
        assert runner.placement.device == "cpu"
        assert "CUDAExecutionProvider was requested" in runner.placement.fallback
        assert any("fallback" in n for n in runner.notes)


def test_thread_count_and_release(detector_file, monkeypatch):
    monkeypatch.setenv("OCULA_ONNX_THREADS", "3")
    assert default_thread_count() == 3
    monkeypatch.delenv("OCULA_ONNX_THREADS")
    assert 1 <= default_thread_count() <= 16
    path, _ = detector_file
    runner = load_runner(onnx_card(path), device="cpu")
    runner.release()
    with pytest.raises(RuntimeError, match="released"):
        runner.forward({"pixel_values": torch.rand(1, 3, 16, 16)})
