"""What the torch captioner (engine.tasks.caption) and the ONNX one
(engine.tasks.caption_onnx) share: the shape of a model family, the tokenizer lookup,
token streaming and trimming. Both import this module; neither imports the other for it
(caption.py dispatches to caption_onnx, so the shared pieces live below both).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

TokenCallback = Callable[[int, str], None]  # (image index, caption text so far)


@dataclass(frozen=True)
class CaptionFamily:
    """How one family of captioners takes its inputs and returns its tokens."""

    name: str
    # build model inputs for a batch of PIL images and an optional prompt
    build_inputs: Callable[[Any, list, str | None], dict]
    # how many tokens at the start of generate()'s output are prompt, not caption
    prompt_length: Callable[[dict, Any], int]
    prompt_in_text: bool = False  # a text prefix is part of the caption (BLIP, GIT)
    default_prompt: str | None = None
    eos_ids: Callable[[Any], set[int]] = field(default=lambda model: _generation_eos(model))
    text_tasks: tuple[str, ...] = ()  # prompts that are tasks (Florence-2)


def _generation_eos(model: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


def tokenizer_of(processor: Any) -> Any:
    """The processor's tokenizer (a bare tokenizer is its own)."""
    return getattr(processor, "tokenizer", processor)


class TokenStream:
    """Per-image token accumulation shared by the torch streamer and the ONNX loop."""

    def __init__(self, tokenizer: Any, indices: Sequence[int], eos_ids: set[int],
                 prefixes: Sequence[list[int]], on_token: TokenCallback | None) -> None:
        self.tokenizer = tokenizer
        self.indices = list(indices)
        self.eos_ids = eos_ids
        self.prefixes = [list(p) for p in prefixes]  # prompt ids that belong to the text
        self.on_token = on_token
        self.ids: list[list[int]] = [[] for _ in self.indices]
        self.done = [False] * len(self.indices)

    def step(self, tokens: Sequence[int]) -> None:
        for row, token in enumerate(tokens):
            if self.done[row]:
                continue
            token = int(token)
            if token in self.eos_ids:
                self.done[row] = True
                continue
            self.ids[row].append(token)
            if self.on_token is not None:
                self.on_token(self.indices[row], self.text(row))

    def text(self, row: int) -> str:
        return self.tokenizer.decode(self.prefixes[row] + self.ids[row],
                                     skip_special_tokens=True).strip()


def trim_generated(row: Sequence[int], eos_ids: set[int], pad_id: int | None = None) -> list[int]:
    """New tokens of one output row, up to (not including) the first end token."""
    out: list[int] = []
    for token in row:
        token = int(token)
        if token in eos_ids:
            break
        out.append(token)
    if pad_id is not None and pad_id not in eos_ids:
        while out and out[-1] == pad_id:
            out.pop()
    return out
