"""Caption sidecars (.txt) and the batch JSONL."""
from __future__ import annotations

import json
import os

import pytest

from engine.exporters.captions import (
    JsonlWriter,
    SidecarNamer,
    write_caption_txt,
    write_captions_jsonl,
)
from engine.results import Caption


def cap(text: str, size=(64, 48)) -> Caption:
    return Caption(text=text, token_ids=[1, 2, 3], image_size=size, prompt="")


def test_sidecar_is_named_like_the_image_and_holds_one_line(tmp_path):
    out = tmp_path / "out"
    path = write_caption_txt(cap("a cat\non a  sofa "), tmp_path / "in" / "photo.jpg", out)
    assert path == out / "photo.txt"
    assert path.read_bytes() == b"a cat on a sofa\n"


def test_same_stem_images_do_not_overwrite_each_other(tmp_path):
    namer = SidecarNamer(tmp_path)
    first = write_caption_txt(cap("jpeg"), tmp_path / "a.jpg", namer=namer)
    second = write_caption_txt(cap("png"), tmp_path / "a.png", namer=namer)
    assert first.name == "a.txt" and second.name == "a.png.txt"
    assert first.read_text() == "jpeg\n" and second.read_text() == "png\n"
    # the same image captioned again keeps its own sidecar
    assert write_caption_txt(cap("jpeg 2"), tmp_path / "a.jpg", namer=namer) == first


def test_subfolders_are_mirrored_under_the_output(tmp_path):
    root = tmp_path / "dataset"
    namer = SidecarNamer(tmp_path / "captions", relative_to=root)
    path = write_caption_txt(cap("x"), root / "cats" / "tabby.png", namer=namer)
    assert path == tmp_path / "captions" / "cats" / "tabby.txt"
    outside = write_caption_txt(cap("y"), tmp_path / "elsewhere" / "dog.png", namer=namer)
    assert outside == tmp_path / "captions" / "dog.txt"


def test_unicode_captions_are_utf8(tmp_path):
    path = write_caption_txt(cap("un chat — très mignon 🐱"), tmp_path / "c.webp", tmp_path / "o")
    assert path.read_text(encoding="utf-8") == "un chat — très mignon 🐱\n"


def test_jsonl_has_one_record_per_image_in_order(tmp_path):
    items = [(tmp_path / "b.jpg", cap("second", (10, 20))), (tmp_path / "a.jpg", cap("first"))]
    path = write_captions_jsonl(items, tmp_path / "captions.jsonl", model="tiny-model")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["file_name"] for r in rows] == ["b.jpg", "a.jpg"]
    assert rows[0] == {"file_name": "b.jpg", "text": "second", "prompt": "", "image": str(tmp_path / "b.jpg"),
                       "width": 10, "height": 20, "token_ids": [1, 2, 3], "model": "tiny-model"}


def test_streaming_jsonl_appears_only_when_complete(tmp_path):
    target = tmp_path / "captions.jsonl"
    with JsonlWriter(target) as writer:
        writer.write_caption(cap("one"), tmp_path / "1.png")
        assert not target.exists()  # still a .part file
        writer.write_caption(cap("two"), tmp_path / "2.png")
    assert [json.loads(x)["text"] for x in target.read_text().splitlines()] == ["one", "two"]

    with pytest.raises(RuntimeError), JsonlWriter(tmp_path / "broken.jsonl") as writer:
        writer.write_caption(cap("three"), tmp_path / "3.png")
        raise RuntimeError("job cancelled")
    assert not (tmp_path / "broken.jsonl").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_writes_are_atomic_replacements(tmp_path):
    path = write_caption_txt(cap("old"), tmp_path / "x.png", tmp_path)
    inode_before = path.stat().st_ino
    write_caption_txt(cap("new"), tmp_path / "x.png", tmp_path)
    assert path.read_text() == "new\n"
    assert path.stat().st_ino != inode_before  # a new file renamed over, not rewritten in place
