"""ONNX captioning: encoder + decoder exports with KV cache give generate()'s exact tokens."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.catalog.card import ModelCard
from engine.runtimes.base import Placement
from engine.tasks.caption import caption
from tests.fixtures import tiny_captioners as tc
from tests.unit.test_caption import photos, runner_for

pytestmark = pytest.mark.slow  # one export of three graphs (~5 s on a busy CPU)


@pytest.fixture(scope="module")
def tiny():
    return tc.vit_gpt2()


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> dict[str, Path]:
    """Both optimum layouts from one export: split decoders, and encoder + merged decoder."""
    from engine.export_onnx import export_seq2seq

    root = tmp_path_factory.mktemp("ved-onnx")
    split = root / "split"
    pixel_values = tiny.processor(images=photos()[:1], return_tensors="pt")["pixel_values"]
    export_seq2seq(copy.deepcopy(tiny.model), pixel_values, split)
    for save in (tiny.processor, tiny.model.config, tiny.model.generation_config):
        save.save_pretrained(split)
    merged = root / "merged"
    merged.mkdir()
    for path in split.iterdir():
        if path.name not in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
            shutil.copy(path, merged / path.name)
    (split / "decoder_model_merged.onnx").unlink()
    return {"split": split, "merged": merged}


def onnx_runner(folder: Path):
    from engine.runtimes.onnx_backend import load_onnx

    card = ModelCard(id=f"ved-{folder.name}", name=f"ved {folder.name}", tasks=("caption",),
                     runtime="onnx", local_path=str(folder))
    return load_onnx(card, folder, Placement("onnx", "cpu", "fp32", provider="CPUExecutionProvider"))


@pytest.mark.parametrize("layout", ["merged", "split"])
def test_onnx_tokens_equal_torch_generate(layout, exported, tiny):
    runner = onnx_runner(exported[layout])
    expected = {"merged": {"encoder_model", "decoder_model_merged"},
                "split": {"encoder_model", "decoder_model", "decoder_with_past_model"}}[layout]
    assert set(runner.sessions) == expected
    images = photos()
    reference = caption(runner_for(tiny), images, max_new_tokens=12)
    got = caption(runner, images, max_new_tokens=12, batch_size=3)
    # exact ids from two runtimes' fp32 logits: greedy top-two gaps here are >= 1.2e-2, above
    # twice the worst case by which summation order moves a logit (see test_caption.py)
    assert [c.token_ids for c in got] == [c.token_ids for c in reference]
    assert [c.text for c in got] == [c.text for c in reference]
    lengths = {len(c.token_ids) for c in got}
    assert len(lengths) > 1  # some rows stopped at the end token, others ran to the limit


def test_onnx_prompt_and_streaming(exported, tiny):
    runner = onnx_runner(exported["merged"])
    images = photos()[:3]
    reference = caption(runner_for(tiny), images, prompt=" a cat", max_new_tokens=6)
    streamed: dict[int, list[str]] = {}
    got = caption(runner, images, prompt=" a cat", max_new_tokens=6,
                  on_token=lambda i, text: streamed.setdefault(i, []).append(text))
    assert [c.token_ids for c in got] == [c.token_ids for c in reference]
    for i, result in enumerate(got):
        assert len(streamed[i]) == len(result.token_ids)
        assert streamed[i][-1] == result.text and result.text.startswith("a cat")


def test_merged_decoder_stores_shared_weights_once(exported):
    import onnx
    from onnx import numpy_helper

    def weight_bytes(path: Path) -> int:
        return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)

    split, merged = exported["split"], exported["merged"]
    one = weight_bytes(split / "decoder_model.onnx")
    # the with-past graph has every weight but the cross-attention K/V projections
    assert weight_bytes(split / "decoder_with_past_model.onnx") < one
    assert weight_bytes(merged / "decoder_model_merged.onnx") == one  # not 2 × one


def test_cached_steps_reuse_the_cross_attention_keys(exported, tiny):
    """The first step returns each layer's cross-attention keys and values; the with-past
    graph takes them and never projects the encoder's states again (it does not read
    them at all), so a cached step costs one token's work."""
    import onnxruntime as ort

    first = ort.InferenceSession(str(exported["split"] / "decoder_model.onnx"))
    cached = ort.InferenceSession(str(exported["split"] / "decoder_with_past_model.onnx"))
    layers = tiny.model.decoder.config.n_layer
    cross = [f"present.{i}.encoder.{k}" for i in range(layers) for k in ("key", "value")]
    assert set(cross) <= {o.name for o in first.get_outputs()}
    inputs = {i.name for i in cached.get_inputs()}
    assert {n.replace("present", "past_key_values") for n in cross} <= inputs
    assert "encoder_hidden_states" not in inputs


def test_kv_cache_really_feeds_one_token_per_step(exported):
    """The cached decoder is only ever given the newest token (and a growing past)."""
    from engine.tasks.caption_onnx import Seq2SeqSessions, greedy_generate

    runner = onnx_runner(exported["split"])
    sessions = Seq2SeqSessions.from_runner(runner)
    seen = []
    original = sessions.cached.run

    class Recording:
        def __init__(self, session):
            self.session = session

        def get_inputs(self):
            return self.session.get_inputs()

        def get_outputs(self):
            return self.session.get_outputs()

        def run(self, names, feed):
            seen.append((feed["input_ids"].shape, feed["past_key_values.0.key"].shape[2]))
            return original(names, feed)

    sessions.cached = Recording(sessions.cached)
    pixel_values = runner.processor(images=photos()[:2], return_tensors="np")["pixel_values"]
    start = np.full((2, 1), runner.processor.tokenizer.eos_token_id, dtype=np.int64)
    greedy_generate(sessions, pixel_values, start, eos_ids={10**6}, pad_id=0, max_new_tokens=5)
    assert [shape for shape, _ in seen] == [(2, 1)] * 4
    assert [past for _, past in seen] == [1, 2, 3, 4]


def test_incomplete_exports_are_refused_clearly(exported, tmp_path):
    from engine.errors import UnsupportedModelError

    folder = tmp_path / "only-encoder"
    folder.mkdir()
    for path in exported["split"].iterdir():
        if path.name != "decoder_with_past_model.onnx":
            shutil.copy(path, folder / path.name)
    runner = onnx_runner(folder)
    with pytest.raises(UnsupportedModelError, match="decoder_with_past_model"):
        caption(runner, photos()[:1], max_new_tokens=3)
