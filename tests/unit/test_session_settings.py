"""ONNX session settings chosen per model by measurement (issue 13 item 5): physical cores,
the tuning record, the record applied to the sessions (read back from ONNX Runtime), and
the user's explicit choice over the record."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.catalog.card import ModelCard, Source
from engine.runtimes import session_tuning as st
from engine.runtimes.base import Placement
from engine.runtimes.onnx_backend import load_onnx

CPU = Placement(backend="onnx", device="cpu", precision="fp32", provider="CPUExecutionProvider")


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OCULA_ONNX_THREADS", raising=False)
    monkeypatch.delenv("OCULA_ONNX_TUNE", raising=False)


def conv_graph(path: Path, *, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """y = relu(conv3x3(x, w) + b) on [1, 3, H, W] (dynamic sides); returns (path, w, b)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["features"])]
    graph = helper.make_graph(nodes, "conv", [x], [y],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, w, b


def conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    _, _, h, wd = x.shape
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    out = np.einsum("nchwij,ocij->nohw", windows[:, :, :h, :wd], w) + b[None, :, None, None]
    return np.maximum(out, 0)


def card_for(path: Path) -> ModelCard:
    return ModelCard(id=f"local:{path.name}", name=path.name, tasks=("detect",), runtime="onnx",
                     source=Source.LOCAL, local_path=str(path))


# -- cores ----------------------------------------------------------------------------------


def fake_sysfs(root: Path, cpus: set[int]) -> None:
    for cpu in cpus:  # SMT pairs: cpu 2k and 2k+1 are one core
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_id").write_text(f"{cpu // 2}\n")
        (topo / "physical_package_id").write_text("0\n")


def test_physical_cores_count_distinct_cores_of_the_affinity_mask(tmp_path):
    cpus = set(os.sched_getaffinity(0))
    fake_sysfs(tmp_path / "sys", cpus)
    nothing = tmp_path / "none"
    assert st.physical_cores(sysfs=tmp_path / "sys", cpuinfo=nothing, cgroup=nothing) == \
        len({c // 2 for c in cpus})
    # No sysfs topology: /proc/cpuinfo's (physical id, core id) pairs.
    blocks = [f"processor\t: {c}\nphysical id\t: 0\ncore id\t\t: {c // 2}\n" for c in cpus]
    (tmp_path / "cpuinfo").write_text("\n".join(blocks))
    assert st.physical_cores(sysfs=nothing, cpuinfo=tmp_path / "cpuinfo", cgroup=nothing) == \
        len({c // 2 for c in cpus})
    # Neither: the logical CPUs this process may use.
    assert st.physical_cores(sysfs=nothing, cpuinfo=nothing, cgroup=nothing) == len(cpus)


def test_a_cgroup_quota_caps_the_cores(tmp_path):
    cpus = set(os.sched_getaffinity(0))
    nothing = tmp_path / "none"
    (tmp_path / "cg").mkdir()
    (tmp_path / "cg" / "cpu.max").write_text("50000 100000\n")  # half a CPU
    assert st.physical_cores(sysfs=nothing, cpuinfo=nothing, cgroup=tmp_path / "cg") == 1
    (tmp_path / "cg" / "cpu.max").write_text("max 100000\n")
    assert st.physical_cores(sysfs=nothing, cpuinfo=nothing, cgroup=tmp_path / "cg") == len(cpus)
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert st.physical_cores(sysfs=nothing, cpuinfo=nothing, cgroup=tmp_path / "v1") == \
        min(len(cpus), math.ceil(1.5))


# -- measurement and record -----------------------------------------------------------------


def test_tuning_times_every_candidate_and_records_the_fastest(tmp_path):
    path, _, _ = conv_graph(tmp_path / "conv.onnx")
    record = st.tune_model(path, warmup=1, repeats=2)
    saved = json.loads(st.record_path(path).read_text())
    assert saved == record
    assert record["sha256"] == st.model_hash(path)
    assert record["sample_input"] == {"images": [1, 3, 224, 224]}  # free sides → 224
    # Every one-at-a-time change of the defaults was timed, and the winner is the fastest
    # within the noise margin of what it replaced.
    labels = record["measured_ms"]
    assert st.default_settings().label() in labels
    for level in ("extended", "basic"):
        assert any(f"opt={level}" in k for k in labels)
    assert any("arena=off" in k for k in labels) and any("iobinding=on" in k for k in labels)
    winner = st.SessionSettings(**record["settings"])
    assert labels[winner.label()] == record["best_ms"]
    assert record["best_ms"] <= min(labels.values()) / (1 - st.ARENA_OFF_MARGIN)
    assert record["speedup"] == pytest.approx(record["baseline_ms"] / record["best_ms"], rel=1e-2)
    assert st.settings_for(path) == winner


def test_tuning_runs_at_the_size_the_processor_resizes_to(tmp_path):
    """A setting that wins on a 224² sample can lose at the real size (the memory arena on
    SegFormer at 512²): an export is timed at its processor's size."""
    from engine.export_onnx import processor_side, tune_sessions

    path, _, _ = conv_graph(tmp_path / "model.onnx")
    assert processor_side(tmp_path) == 224  # no processor file
    for size, side in (({"height": 512, "width": 512}, 512), ({"shortest_edge": 800,
                       "longest_edge": 1333}, 800), (384, 384)):
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": size}))
        assert processor_side(tmp_path) == side
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 96,
                                                                            "width": 64}}))
    (record,) = tune_sessions(tmp_path)
    assert record["sample_input"] == {"images": [1, 3, 96, 96]}


def write_record(path: Path, settings: st.SessionSettings) -> None:
    """A record as tune_model writes it, with chosen settings (to see each one applied)."""
    record = st.tune_model(path, warmup=0, repeats=1)
    record["settings"] = {"graph_optimization": settings.graph_optimization,
                          "intra_op_threads": settings.intra_op_threads,
                          "cpu_mem_arena": settings.cpu_mem_arena,
                          "io_binding": settings.io_binding}
    st.record_path(path).write_text(json.dumps(record))


def test_recorded_settings_are_applied_to_the_session(tmp_path):
    path, w, b = conv_graph(tmp_path / "conv.onnx")
    chosen = st.SessionSettings(graph_optimization="basic", intra_op_threads=1,
                                cpu_mem_arena=False, io_binding=True)
    write_record(path, chosen)
    runner = load_onnx(card_for(path), path, CPU)
    options = runner.sessions["model"].get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.intra_op_num_threads == 1
    assert options.enable_cpu_mem_arena is False
    assert st.applied_settings(runner.sessions["model"]) == chosen
    # Run through the IOBinding: the same numbers as the arithmetic.
    x = np.random.default_rng(1).random((1, 3, 12, 10), dtype=np.float32)
    out = runner.forward_arrays({"pixel_values": x})["features"]
    np.testing.assert_allclose(out, conv_reference(x, w, b), rtol=1e-5, atol=1e-5)


def test_the_users_thread_choice_wins_over_the_record(tmp_path, monkeypatch):
    path, _, _ = conv_graph(tmp_path / "conv.onnx")
    write_record(path, st.SessionSettings(graph_optimization="extended", intra_op_threads=1,
                                          cpu_mem_arena=True, io_binding=False))
    monkeypatch.setenv("OCULA_ONNX_THREADS", "3")
    options = load_onnx(card_for(path), path, CPU).sessions["model"].get_session_options()
    assert options.intra_op_num_threads == 3  # the user's
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def test_a_record_from_another_machine_or_model_is_not_used(tmp_path):
    path, _, _ = conv_graph(tmp_path / "conv.onnx")
    write_record(path, st.SessionSettings(graph_optimization="basic", intra_op_threads=1))
    record = json.loads(st.record_path(path).read_text())
    record["machine"]["physical_cores"] += 7
    st.record_path(path).write_text(json.dumps(record))
    assert st.settings_for(path) == st.default_settings()
    # Another file (other weights) has its own key, so its own (absent) record.
    other, _, _ = conv_graph(tmp_path / "other.onnx", seed=1)
    assert st.record_path(other) != st.record_path(path)
    assert st.read_record(other) is None


def test_first_load_tunes_when_asked(tmp_path, monkeypatch):
    path, _, _ = conv_graph(tmp_path / "conv.onnx")
    monkeypatch.setenv("OCULA_ONNX_TUNE", "1")
    runner = load_onnx(card_for(path), path, CPU)
    record = st.read_record(path)
    assert record is not None
    options = runner.sessions["model"].get_session_options()
    assert options.intra_op_num_threads == record["settings"]["intra_op_threads"]
    assert options.enable_cpu_mem_arena == record["settings"]["cpu_mem_arena"]


def test_a_graph_without_a_sample_input_says_so(tmp_path):
    x = helper.make_tensor_value_info("text", TensorProto.STRING, [1])
    y = helper.make_tensor_value_info("same", TensorProto.STRING, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["text"], ["same"])], "s", [x], [y])
    path = tmp_path / "strings.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(st.TuningError, match="text"):
        st.tune_model(path, warmup=0, repeats=1)
