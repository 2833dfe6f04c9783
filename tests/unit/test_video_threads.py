"""Video jobs size the decoder's, the model's and the encoder's threads (issue 13 item 4):
the rule, and a real job that applies the counts it chose (read back from the codec
contexts, OpenCV, torch and the ONNX Runtime session) and puts the model's back after."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

import av
import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from engine.catalog.card import ModelCard, Source
from engine.jobs import BaseHandler, ItemResult, JobSpec, register_handler, run_job
from engine.jobs.video_threads import YIELD_NICE, StageCosts, plan_threads, thread_nice
from engine.results import RestoredImage
from engine.runtimes.base import Placement
from engine.runtimes.onnx_backend import load_onnx
from engine.runtimes.session_tuning import physical_cores
from tests.fixtures.jobs import handlers_restored
from tests.fixtures.media import make_video


def test_the_slowest_stage_keeps_its_count_and_the_others_get_their_share():
    costs = StageCosts(decode_ms=5.0, model_ms=2.5, encode_ms=80.0)
    two = plan_threads(2, costs)
    assert (two.decode, two.model, two.encode) == (1, 1, 0)  # 0: the encoder's own count
    # 8 cores: decode needs 8·5/80 = 0.5 → 1 thread to keep up with the encoder.
    eight = plan_threads(8, costs)
    assert (eight.decode, eight.model, eight.encode) == (1, 1, 0)
    # A model at 60 ms against an 80 ms encoder on 8 cores needs ceil(8·60/80) = 6.
    heavy = StageCosts(decode_ms=5.0, model_ms=60.0, encode_ms=80.0)
    assert plan_threads(8, heavy).model == 6
    # The model as the bottleneck (a restorer): it keeps its count, the encoder its share.
    slow_model = StageCosts(decode_ms=5.0, model_ms=400.0, encode_ms=80.0)
    plan = plan_threads(4, slow_model)
    assert (plan.model, plan.encode, plan.decode) == (0, 1, 1)
    assert plan_threads(1, heavy).model == 1  # never more than the cores, never fewer than 1
    assert plan_threads(4, StageCosts()).encode == 1  # nothing measured: one thread each
    assert "encode auto" in two.describe()
    # Priorities: the stages cheaper than the slowest run below it; unmeasured ones do not.
    assert [s for s in ("decode", "model", "encode") if two.yields(s)] == ["decode", "model"]
    assert [s for s in ("decode", "model", "encode") if plan.yields(s)] == ["decode", "encode"]
    assert "lower priority: decode, model" in two.describe()
    early = plan_threads(2, StageCosts(decode_ms=5.0, encode_ms=80.0))  # model not timed yet
    assert early.yields("decode") and not early.yields("model")
    assert not plan_threads(2, StageCosts()).yields("decode")


def _scale_graph(path: Path) -> Path:
    """An ONNX graph y = 0.5 · x on [1, 3, H, W] images (a stand-in 'restoration')."""
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, [1, 3, "h", "w"])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    graph = helper.make_graph([helper.make_node("Mul", ["pixel_values", "half"],
                                                ["reconstruction"])], "scale", [x], [y], [half])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class ThreadsSeen(BaseHandler):
    """A restoration through OpenCV (blur) and an ONNX session, noting per batch the thread
    counts the libraries report while it runs."""

    runner: ClassVar[Any] = None
    seen: ClassVar[list[dict]] = []
    nice: ClassVar[list[int | None]] = []

    def process_image(self, image, out):
        runner = type(self).runner
        type(self).nice.append(thread_nice())
        type(self).seen.append({"opencv": cv2.getNumThreads(), "torch": torch.get_num_threads(),
                                "onnxruntime": runner.intra_op_threads()})
        blurred = cv2.GaussianBlur(image.array, (5, 5), 0)
        pixels = blurred.astype(np.float32).transpose(2, 0, 1)[None] / 255
        half = runner.forward_arrays({"pixel_values": pixels})["reconstruction"]
        restored = np.clip(half[0].transpose(1, 2, 0) * 2 * 255, 0, 255).round()
        return ItemResult(RestoredImage(restored.astype(np.uint8), 1, image.size))


@pytest.fixture
def onnx_runner(tmp_path):
    path = _scale_graph(tmp_path / "scale.onnx")
    card = ModelCard(id="local:scale.onnx", name="scale", tasks=("restore",), runtime="onnx",
                     source=Source.LOCAL, local_path=str(path))
    runner = load_onnx(card, path, Placement(backend="onnx", device="cpu", precision="fp32",
                                             provider="CPUExecutionProvider"))
    yield runner
    runner.release()


def test_a_video_job_applies_the_thread_counts_it_planned(tmp_path, store, onnx_runner,
                                                          monkeypatch):
    monkeypatch.delenv("OCULA_ONNX_THREADS", raising=False)
    video = make_video(tmp_path / "clip.mp4", seconds=1.2, size=(320, 240), subtitles=False)
    cores = physical_cores()
    before = {"opencv": 3, "torch": 3}  # something the plan must change and give back
    cv2.setNumThreads(before["opencv"])
    torch_before = torch.get_num_threads()
    torch.set_num_threads(before["torch"])
    ort_before = onnx_runner.intra_op_threads()
    ThreadsSeen.runner, ThreadsSeen.seen, ThreadsSeen.nice = onnx_runner, [], []
    job_nice = thread_nice()
    try:
        with handlers_restored():
            register_handler("restore", ThreadsSeen, replace=True)
            summary = run_job(JobSpec("restore", "seen", [str(video.path)],
                                      str(tmp_path / "out"), options={"batch_size": 4}),
                              store=store)
        assert (summary.done, summary.failed) == (1, 0), summary.failures
        (item,) = list(store.job_items(summary.job_id))
        threads = item.info["threads"]
        planned = threads["planned"]
        # The counts each library reports are the plan's.
        assert threads["decode"] == planned["decode"]
        assert threads["encode"] == planned["encode"]
        model_counts = ({"torch": planned["model"], "opencv": planned["model"],
                         "onnxruntime": planned["model"]} if planned["model"]
                        else {"torch": before["torch"], "opencv": before["opencv"],
                              "onnxruntime": ort_before})  # 0: the counts it had
        assert threads["model"] == model_counts
        # The plan follows the rule on the costs it measured, with this machine's cores.
        costs = StageCosts(**threads["costs_ms"])
        expected = plan_threads(cores, costs)
        assert (planned["model"], planned["encode"]) == (expected.model, expected.encode)
        assert planned["decode"] >= 1  # the decoder opens before the model is timed; it is
        # planned against the encoder alone, which is dearer than decoding here
        # The first group ran single-threaded (cheap knobs) to be timed; later ones planned.
        assert ThreadsSeen.seen[0]["opencv"] == 1 and ThreadsSeen.seen[0]["torch"] == 1
        for seen in ThreadsSeen.seen[4:]:
            assert seen == model_counts
        # Linux: each stage cheaper than the slowest ran its own thread below the job's
        # priority, read back from the threads; the caller's thread kept its priority.
        if sys.platform.startswith("linux"):
            nice = threads["nice"]
            assert nice["job"] == job_nice == thread_nice()
            for stage in ("decode", "model", "encode"):
                if expected.yields(stage):
                    assert nice[stage] == min(19, job_nice + YIELD_NICE), (stage, nice)
                else:
                    assert stage not in nice, (stage, nice)
            assert ThreadsSeen.nice[0] == job_nice  # the first group: before the plan
            assert ThreadsSeen.nice[-1] == nice.get("model", job_nice)
            assert expected.yields("decode")  # decoding 320x240 is cheaper than encoding it
        # Put back afterwards, for the next job in this process.
        assert cv2.getNumThreads() == before["opencv"]
        assert torch.get_num_threads() == before["torch"]
        assert onnx_runner.intra_op_threads() == ort_before
        # And the frames are the handler's (identity up to the blur): every frame written.
        with av.open(str(video.path)) as container:
            source = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        with av.open(str(tmp_path / "out" / "clip.restored.mp4")) as container:
            written = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(written) == video.frames
        for k in (0, len(source) // 2, len(source) - 1):  # the handler's pictures, encoded
            expected = cv2.GaussianBlur(source[k], (5, 5), 0).astype(np.float64)
            mse = np.mean((written[k].astype(np.float64) - expected) ** 2)
            assert 10 * np.log10(255.0 ** 2 / max(mse, 1e-12)) > 30
    finally:
        cv2.setNumThreads(-1)
        torch.set_num_threads(torch_before)


def test_the_users_onnx_thread_choice_wins_over_the_video_plan(onnx_runner, monkeypatch):
    monkeypatch.setenv("OCULA_ONNX_THREADS", "3")
    onnx_runner.set_intra_op_threads(1)  # what a video plan asks on a small CPU
    assert onnx_runner.sessions["model"].get_session_options().intra_op_num_threads == 3
    monkeypatch.delenv("OCULA_ONNX_THREADS")
    onnx_runner.set_intra_op_threads(1)
    assert onnx_runner.sessions["model"].get_session_options().intra_op_num_threads == 1
