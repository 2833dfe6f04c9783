"""Tokenizers for ONNX captioners without transformers: the `tokenizers` library on the
folder's `tokenizer.json`, with what our captioning code asks of a transformers tokenizer.

    tokenizer = load_tokenizer(folder)      # None: no tokenizer.json in the folder
    tokenizer.decode(ids, skip_special_tokens=True)
    tokenizer(" a cat", add_special_tokens=False)["input_ids"]

Special tokens (bos/eos/pad/cls/sep/unk) come from tokenizer_config.json and
special_tokens_map.json, their ids from the vocabulary, as transformers resolves them.
Decoding matches transformers' fast tokenizers: the Rust decoder, then the
`clean_up_tokenization_spaces` clean-up where the config asks for it (never on BPE models,
where transformers 5 skips it too). tests/unit/test_lite_tokenizer.py compares both.
A folder with only vocab.json/merges.txt or a sentencepiece model is not read here: the
message says the full build (transformers) reads it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UnsupportedModelError

SPECIAL_ROLES = ("bos", "eos", "pad", "cls", "sep", "unk", "mask")
CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
OTHER_TOKENIZER_FILES = ("vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
                         "tokenizer.model")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class LiteTokenizer:
    """A `tokenizers.Tokenizer` with transformers' tokenizer surface used by the captioners."""

    def __init__(self, tokenizer: Any, config: dict, special_map: dict, name_or_path: str = "") -> None:
        self._tokenizer = tokenizer
        self.config = config
        self.name_or_path = name_or_path
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._is_bpe = type(tokenizer.model).__name__ == "BPE"
        for role in SPECIAL_ROLES:
            token = _content(special_map.get(f"{role}_token")) or _content(config.get(f"{role}_token"))
            setattr(self, f"{role}_token", token)
            setattr(self, f"{role}_token_id",
                    tokenizer.token_to_id(token) if token is not None else None)

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({i for role in SPECIAL_ROLES
                       if (i := getattr(self, f"{role}_token_id")) is not None})

    def decode(self, ids: Sequence[int] | int, skip_special_tokens: bool = False, **_: Any) -> str:
        ids = [int(ids)] if isinstance(ids, (int, np.integer)) else [int(i) for i in ids]
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and not self._is_bpe:
            for before, after in CLEAN_UPS:
                text = text.replace(before, after)
        return text

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False,
                     **kwargs: Any) -> list[str]:
        return [self.decode(seq, skip_special_tokens=skip_special_tokens, **kwargs)
                for seq in sequences]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True,
                 return_tensors: Any = None, **_: Any) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        rows = [self.encode(t, add_special_tokens) for t in text]
        return {"input_ids": rows if return_tensors is None else np.asarray(rows, dtype=np.int64)}

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"<LiteTokenizer {type(self._tokenizer.model).__name__} {self.name_or_path}>"


def load_tokenizer(folder: Path) -> LiteTokenizer | None:
    """The folder's tokenizer.json as a LiteTokenizer; None when the folder has no tokenizer
    files at all; UnsupportedModelError when it has only files `tokenizers` cannot read."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    path = folder / "tokenizer.json"
    if not path.is_file():
        if any((folder / name).is_file() for name in OTHER_TOKENIZER_FILES):
            raise UnsupportedModelError(
                f"The tokenizer in {folder} has no tokenizer.json (only "
                f"{', '.join(n for n in OTHER_TOKENIZER_FILES if (folder / n).is_file())}); "
                f"the Lite build reads tokenizer.json only — the full build reads the others "
                f"(pip install 'ocula[torch]').")
        return None
    from tokenizers import Tokenizer

    return LiteTokenizer(Tokenizer.from_file(str(path)), _read_json(folder / "tokenizer_config.json"),
                         _read_json(folder / "special_tokens_map.json"), str(folder))


class LitePairProcessor:
    """An image processor and a tokenizer as one processor (transformers' VisionEncoderDecoder
    pairing): `processor(images=…)`, `.tokenizer`, `.image_processor`, `decode`."""

    def __init__(self, image_processor: Any, tokenizer: LiteTokenizer) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    def __call__(self, images: Any = None, text: Any = None, return_tensors: Any = None,
                 **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if images is not None:
            out.update(self.image_processor(images=images))
        if text is not None:
            out.update(self.tokenizer(text, return_tensors="np", **kwargs))
        return out

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(ids, **kwargs)

    def batch_decode(self, sequences: Sequence[Sequence[int]], **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(sequences, **kwargs)
