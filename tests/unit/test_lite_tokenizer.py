"""engine.runtimes.lite_tokenizer (the `tokenizers` library, no transformers) against
transformers' own tokenizers saved to the same folder."""
from __future__ import annotations

import pytest

from engine.errors import UnsupportedModelError
from engine.runtimes.lite_tokenizer import LitePairProcessor, load_tokenizer

transformers = pytest.importorskip("transformers")

from tests.fixtures import tiny_captioners as tc
from tests.fixtures import tiny_models

TEXTS = ["a cat on the sofa", " a cat", "the cat, the dog. two men!", "déjà vu — naïve café",
         "<|endoftext|> trailing", "  leading spaces", ""]


def saved(tokenizer, tmp_path):
    folder = tmp_path / "tok"
    tokenizer.save_pretrained(folder)
    return folder, transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("make", [tiny_models.gpt2_tokenizer, tc.bert_tokenizer, tc.florence_tokenizer])
def test_ids_and_text_equal_transformers(make, tmp_path):
    folder, theirs = saved(make(), tmp_path)
    ours = load_tokenizer(folder)
    assert ours is not None
    for role in ("bos", "eos", "pad", "cls", "sep", "unk"):
        assert getattr(ours, f"{role}_token_id") == getattr(theirs, f"{role}_token_id"), role
    for text in TEXTS:
        for special in (True, False):
            ids = ours(text, add_special_tokens=special)["input_ids"]
            assert ids == theirs(text, add_special_tokens=special)["input_ids"], (text, special)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == \
                    theirs.decode(ids, skip_special_tokens=skip), (text, skip)
    batch = [theirs(t)["input_ids"] for t in TEXTS[:3]]
    assert ours.batch_decode(batch, skip_special_tokens=True) == \
        theirs.batch_decode(batch, skip_special_tokens=True)


def test_pair_processor_and_missing_tokenizer_json(tmp_path):
    folder, _ = saved(tiny_models.gpt2_tokenizer(), tmp_path)
    pair = LitePairProcessor(image_processor=None, tokenizer=load_tokenizer(folder))
    assert pair.decode(pair.tokenizer.encode(" a cat")) == " a cat"
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text("{}", encoding="utf-8")  # a slow-tokenizer-only folder
    with pytest.raises(UnsupportedModelError, match="tokenizer.json"):
        load_tokenizer(folder)  # only vocab.json + merges.txt: the full build reads those
    assert load_tokenizer(tmp_path / "empty") is None
