"""Greedy captioning on ONNX encoder + decoder exports, with the decoder's KV cache.

Two decoder layouts are understood (optimum / Transformers.js conventions):

* merged: `decoder_model_merged.onnx` with a boolean `use_cache_branch` input; the
  first step is fed empty past tensors ([batch, heads, 0, head_dim]) and
  `use_cache_branch=False`, later steps the previous `present.*` and True;
* split: `decoder_model.onnx` for the first step, `decoder_with_past_model.onnx`
  for the cached steps.

Every step feeds only the newest token; `present.*` outputs become the next
`past_key_values.*` inputs (cross-attention `.encoder.` entries are kept from the
first step, as Transformers.js does). Greedy choice = first argmax, finished rows
get the pad token, exactly like transformers' `generate`, so token ids match it.
Only plain greedy decoding is implemented: logits processors a hub generation
config may ask for (repetition penalty, n-gram blocking, forced tokens) are not.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import UnsupportedModelError
from engine.results import Caption
from engine.tasks.caption_common import (
    CaptionFamily,
    TokenCallback,
    TokenStream,
    tokenizer_of,
    trim_generated,
)

if TYPE_CHECKING:
    from engine.runtimes.base import Runner

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."


@dataclass
class Seq2SeqSessions:
    encoder: Any
    first: Any  # decoder for the first step (merged or decoder_model)
    cached: Any  # decoder for later steps (merged or decoder_with_past_model)
    merged: bool

    @classmethod
    def from_runner(cls, runner: Runner) -> Seq2SeqSessions:
        sessions: dict[str, Any] = dict(getattr(runner, "sessions", {}) or {})

        def pick(*names: str) -> Any:
            for name in names:
                if name in sessions:
                    return sessions[name]
            return None

        encoder = pick("encoder", "encoder_model", "vision_encoder")
        merged = pick("decoder_model_merged")
        decoder = pick("decoder")
        if merged is None and decoder is not None and _has_input(decoder, "use_cache_branch"):
            merged = decoder
        if encoder is None:
            raise UnsupportedModelError(
                f"{runner.card.name}: no encoder graph among {', '.join(sessions) or 'none'}; "
                f"an ONNX captioner needs encoder_model.onnx and a decoder.")
        if merged is not None:
            return cls(encoder, merged, merged, True)
        first = pick("decoder_model") or decoder
        cached = pick("decoder_with_past_model")
        if first is None or cached is None:
            raise UnsupportedModelError(
                f"{runner.card.name}: ONNX captioners need decoder_model_merged.onnx, or "
                f"decoder_model.onnx with decoder_with_past_model.onnx; found "
                f"{', '.join(sessions) or 'none'}.")
        return cls(encoder, first, cached, False)


def _has_input(session: Any, name: str) -> bool:
    return any(i.name == name for i in session.get_inputs())


_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
       "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _dtype(arg: Any) -> Any:
    return _NP.get(arg.type, np.float32)


def encode(sessions: Seq2SeqSessions, pixel_values: np.ndarray) -> np.ndarray:
    graph_input = sessions.encoder.get_inputs()[0]
    out = sessions.encoder.run(None, {graph_input.name: pixel_values.astype(_dtype(graph_input))})
    return out[0]


def _empty_past(arg: Any, batch: int) -> np.ndarray:
    shape = list(arg.shape)
    if len(shape) != 4 or not all(isinstance(d, int) for d in (shape[1], shape[3])):
        raise UnsupportedModelError(
            f"past input {arg.name} has shape {shape}; expected [batch, heads, length, head_dim] "
            f"with fixed heads and head_dim.")
    return np.zeros((batch, shape[1], 0, shape[3]), dtype=_dtype(arg))


def _decoder_feed(session: Any, *, ids: np.ndarray, encoded: np.ndarray, past: dict[str, np.ndarray],
                  past_length: int, use_cache: bool) -> dict[str, np.ndarray]:
    batch, steps = ids.shape
    feed: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        name = arg.name
        if name in ("input_ids", "decoder_input_ids"):
            feed[name] = ids.astype(_dtype(arg))
        elif name == "encoder_hidden_states":
            feed[name] = encoded.astype(_dtype(arg))
        elif name == "encoder_attention_mask":
            feed[name] = np.ones(encoded.shape[:2], dtype=_dtype(arg))
        elif name in ("attention_mask", "decoder_attention_mask"):
            feed[name] = np.ones((batch, past_length + steps), dtype=_dtype(arg))
        elif name == "position_ids":
            feed[name] = np.tile(np.arange(past_length, past_length + steps), (batch, 1)).astype(
                _dtype(arg))
        elif name == "cache_position":
            feed[name] = np.arange(past_length, past_length + steps).astype(_dtype(arg))
        elif name == "use_cache_branch":
            feed[name] = np.array([use_cache], dtype=np.bool_)
        elif name.startswith(PAST_PREFIX):
            feed[name] = past[name] if name in past else _empty_past(arg, batch)
        else:
            raise UnsupportedModelError(f"the ONNX decoder needs an input '{name}' that Ocula "
                                        f"does not know how to fill.")
    return feed


def greedy_generate(sessions: Seq2SeqSessions, pixel_values: np.ndarray, start_ids: np.ndarray, *,
                    eos_ids: set[int], pad_id: int, max_new_tokens: int,
                    on_step: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Greedy decoding; returns (batch, prompt + generated) ids like `generate` does."""
    encoded = encode(sessions, pixel_values)
    batch = start_ids.shape[0]
    sequences = start_ids.astype(np.int64)
    unfinished = np.ones(batch, dtype=bool)
    past: dict[str, np.ndarray] = {}
    step_ids = sequences
    for step in range(max_new_tokens):
        session = sessions.cached if step else sessions.first
        feed = _decoder_feed(session, ids=step_ids, encoded=encoded, past=past,
                             past_length=sequences.shape[1] - step_ids.shape[1],
                             use_cache=bool(step))
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, feed)))
        logits = outputs.get("logits", outputs[names[0]])
        next_tokens = np.argmax(logits[:, -1, :], axis=-1).astype(np.int64)
        next_tokens = np.where(unfinished, next_tokens, pad_id)
        sequences = np.concatenate([sequences, next_tokens[:, None]], axis=1)
        if on_step is not None:
            on_step(next_tokens)
        unfinished &= ~np.isin(next_tokens, list(eos_ids))
        if not unfinished.any():
            break
        for name, value in outputs.items():
            if not name.startswith(PRESENT_PREFIX):
                continue
            target = PAST_PREFIX + name[len(PRESENT_PREFIX):]
            if ".encoder." in target and target in past:
                continue  # cross-attention cache: computed once, at the first step
            past[target] = value
        step_ids = next_tokens[:, None]
    return sequences


# -- generation ids ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationIds:
    decoder_start: int
    eos: frozenset[int]
    pad: int


def generation_ids(runner: Runner) -> GenerationIds:
    """decoder start / end / pad ids: generation_config.json, config.json, then the tokenizer."""
    tokenizer = getattr(runner.processor, "tokenizer", runner.processor)
    candidates: list[Path] = []
    for value in (getattr(runner, "folder", None), runner.card.local_path,
                  getattr(tokenizer, "name_or_path", None)):
        if value:
            path = Path(value)
            candidates.append(path if path.is_dir() else path.parent)
    start = eos = pad = None
    for folder in candidates:
        for name in ("generation_config.json", "config.json"):
            data = _read_json(folder / name)
            if not data:
                continue
            decoder = data.get("decoder") if isinstance(data.get("decoder"), dict) else {}
            start = start if start is not None else data.get("decoder_start_token_id",
                                                              decoder.get("decoder_start_token_id"))
            eos = eos if eos is not None else data.get("eos_token_id", decoder.get("eos_token_id"))
            pad = pad if pad is not None else data.get("pad_token_id", decoder.get("pad_token_id"))
    if start is None:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    if eos is None:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if start is None or eos is None:
        raise UnsupportedModelError(
            f"{runner.card.name}: cannot tell the decoder start and end tokens (no "
            f"generation_config.json/config.json next to the ONNX files).")
    eos_set = frozenset(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_set)
    return GenerationIds(int(start), eos_set, int(pad))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


# -- the caption batch ------------------------------------------------------------------------


def caption_batch_onnx(runner: Runner, family: CaptionFamily, pils: list, indices: Sequence[int],
                       *, prompt: str | None, max_new_tokens: int,
                       on_token: TokenCallback | None) -> list[Caption]:
    if family.name not in ("vision-encoder-decoder", "generic"):
        raise UnsupportedModelError(f"{runner.card.name}: ONNX captioning supports encoder + "
                                    f"decoder exports (VisionEncoderDecoder), not {family.name}.")
    sessions = Seq2SeqSessions.from_runner(runner)
    ids = generation_ids(runner)
    processor = runner.processor
    tokenizer = tokenizer_of(processor)
    inputs = family.build_inputs(processor, pils, prompt)
    pixel_values = np.asarray(inputs["pixel_values"], dtype=np.float32)
    start = np.full((len(pils), 1), ids.decoder_start, dtype=np.int64)
    prompt_ids = inputs.get("decoder_prompt_ids")
    if prompt_ids is not None:
        start = np.concatenate([start, np.asarray(prompt_ids, dtype=np.int64)], axis=1)
    prefixes = [row.tolist() for row in start] if prompt else [[] for _ in pils]
    stream = TokenStream(tokenizer, indices, set(ids.eos), prefixes, on_token)
    with runner.lock:  # one generation at a time per loaded model, like forward()
        sequences = greedy_generate(sessions, pixel_values, start, eos_ids=set(ids.eos),
                                    pad_id=ids.pad, max_new_tokens=max_new_tokens,
                                    on_step=stream.step if on_token is not None else None)
    results = []
    for row, (pil, seq) in enumerate(zip(pils, sequences.tolist())):
        new_ids = trim_generated(seq[start.shape[1]:], set(ids.eos), ids.pad)
        text = tokenizer.decode(prefixes[row] + new_ids, skip_special_tokens=True).strip()
        results.append(Caption(text=text, token_ids=new_ids,
                               tokens=[tokenizer.decode([t]) for t in new_ids],
                               image_size=pil.size, prompt=prompt or ""))
    return results
