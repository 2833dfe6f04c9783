"""The curated catalog: the shipped file obeys its own rules, and bad entries are named."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from engine.catalog.card import RUNTIMES, ModelCard
from engine.catalog.catalog import Catalog, default_catalog_path, load_catalog
from engine.catalog.entries import FULL_SHA, RUNTIME_PRECISIONS
from engine.errors import CatalogError, UnknownModelError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "resources" / "catalog.toml"

GOOD_ENTRY = """
[[models]]
id = "good-one"
name = "Good one"
repo = "owner/good"
revision = "0123456789abcdef0123456789abcdef01234567"
tasks = ["detect"]
runtime = "transformers"
files = ["config.json", "model.safetensors"]
license = "apache-2.0"
attention = "full"
seed = "DETR"
description = "fine"
"""


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog(SHIPPED, include_imports=False)


def write_catalog(tmp_path: Path, *entries: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text("\n".join(entries), encoding="utf-8")
    return path


def entry(**changes: object) -> str:
    """GOOD_ENTRY with fields replaced (None removes the field)."""
    lines = GOOD_ENTRY.strip().splitlines()
    out = []
    for line in lines:
        key = line.split(" = ")[0]
        if key in changes:
            value = changes.pop(key)
            if value is not None:
                out.append(f"{key} = {value}")
        else:
            out.append(line)
    out += [f"{k} = {v}" for k, v in changes.items()]
    return "\n".join(out) + "\n"


# -- the shipped catalog ---------------------------------------------------------------------

def test_shipped_catalog_loads_strictly_and_covers_every_task(shipped: Catalog) -> None:
    assert shipped.problems == []
    assert len(shipped) >= 25
    for task in ("caption", "detect", "segment", "restore", "features"):
        assert shipped.list(task=task), task
    for runtime in RUNTIMES:
        assert shipped.list(runtime=runtime), runtime
    assert {c.variant for c in shipped.list(task="segment")} >= {
        "semantic", "panoptic", "promptable", "matting"}


def test_default_path_is_the_shipped_file() -> None:
    assert default_catalog_path() == SHIPPED.resolve()


def test_frozen_app_finds_the_catalog_under_meipass(tmp_path: Path, monkeypatch) -> None:
    bundled = tmp_path / "resources" / "catalog.toml"
    bundled.parent.mkdir()
    bundled.write_text(GOOD_ENTRY, encoding="utf-8")
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert default_catalog_path() == bundled
    assert load_catalog(include_imports=False).ids() == ["good-one"]


EXPECTED_REPOS = {
    "Mozilla/distilvit", "Salesforce/blip-image-captioning-base", "nlpconnect/vit-gpt2-image-captioning",
    "microsoft/git-base-coco", "Xenova/vit-gpt2-image-captioning",
    "PekingU/rtdetr_r18vd", "hustvl/yolos-tiny", "google/owlv2-base-patch16-ensemble",
    "IDEA-Research/grounding-dino-tiny", "Xenova/yolos-tiny", "Xenova/detr-resnet-50",
    "onnx-community/rtdetr_r18vd",
    "nvidia/segformer-b0-finetuned-ade-512-512", "facebook/mask2former-swin-tiny-coco-panoptic",
    "Zigeng/SlimSAM-uniform-77", "onnx-community/BiRefNet_lite-ONNX",
    "Xenova/segformer-b0-finetuned-ade-512-512", "Xenova/slimsam-77-uniform",
    "caidas/swin2SR-classical-sr-x2-64", "caidas/swin2SR-classical-sr-x4-64",
    "caidas/swin2SR-realworld-sr-x4-64-bsrgan-psnr", "caidas/swin2SR-compressed-sr-x4-48",
    "halffried/gyre_upscalers", "Xenova/swin2SR-classical-sr-x2-64",
    "facebook/dino-vits16", "facebook/dino-vits8", "facebook/dinov2-small",
    "google/vit-base-patch16-224", "facebook/deit-tiny-patch16-224",
}


def test_catalog_holds_the_planned_repos_and_leaves_out_unverified_ones(shipped: Catalog) -> None:
    repos = {c.repo for c in shipped}
    assert EXPECTED_REPOS <= repos
    # unverified (florence-community) or needing timm / remote code: left out
    assert not repos & {"florence-community/Florence-2-base", "microsoft/Florence-2-base",
                        "facebook/detr-resnet-50", "briaai/RMBG-1.4"}


def test_revisions_are_pinned_shas_or_branches_with_a_seen_commit(shipped: Catalog) -> None:
    for card in shipped:
        if card.package:  # weights ship inside a Python package: no hub repo, no revision
            assert card.repo is None and card.revision is None and card.install, card.id
            continue
        if FULL_SHA.match(card.revision):
            assert shipped.seen_commit(card.id) is None, card.id
        else:
            assert card.revision == "main" or card.revision.startswith("refs/pr/"), card.id
            seen = shipped.seen_commit(card.id)
            assert seen and 7 <= len(seen) < 40, card.id


def test_memory_follows_the_documented_rule(shipped: Catalog) -> None:
    # oracle: ModelCard's own fallback estimate when no memory_mb is given
    for card in shipped:
        assert set(card.memory_mb) == set(RUNTIME_PRECISIONS[card.runtime]), card.id
        bare = dataclasses.replace(card, memory_mb={})
        for precision, mb in card.memory_mb.items():
            assert mb == bare.memory_estimate_mb(precision), (card.id, precision)


def test_files_fetch_one_weight_format_and_what_the_runtime_needs(shipped: Catalog) -> None:
    for card in shipped:
        assert card.download_bytes and card.download_bytes > 0, card.id
        assert not [f for f in card.files if f.endswith((".bin", ".h5", ".msgpack", ".pth"))], card.id
        if card.runtime == "transformers":
            assert "config.json" in card.files and "model.safetensors" in card.files, card.id
        if card.runtime == "onnx":
            assert card.attention.value == "none", card.id
            assert set(card.sidecar["graphs"].values()) <= set(card.files), card.id
            assert [f for f in card.files if f.endswith(".onnx")] == list(card.sidecar["graphs"].values())
        if card.primary_task == "restore":
            assert card.sidecar.get("scale") in (2, 4), card.id


def test_licences_map_to_commercial_use(shipped: Catalog) -> None:
    for card in shipped:
        if card.license in ("apache-2.0", "mit", "bsd-3-clause"):
            assert card.commercial_use is True, card.id
        else:
            assert card.license == "other" and card.commercial_use is None, card.id


@pytest.mark.slow
def test_transformers_entries_name_classes_the_installed_transformers_maps_to_their_task(
        shipped: Catalog) -> None:
    from engine.catalog.families import task_for_architecture

    for card in shipped.list(runtime="transformers"):
        found = task_for_architecture(card.architecture)
        assert found is not None, card.architecture
        assert found[0] == card.primary_task, (card.id, found)


def test_attention_values_match_the_architecture_families(shipped: Catalog) -> None:
    by_id = {c.id: c.attention.value for c in shipped}
    assert by_id["dino-vits16"] == "full" and by_id["yolos-tiny"] == "full"
    assert by_id["distilvit"] == "cross" and by_id["git-base-coco"] == "cross"
    assert by_id["mask2former-swin-tiny-coco"] == "windowed" and by_id["swin2sr-x4"] == "windowed"
    assert by_id["realesrgan-x4plus"] == "gradcam"


# -- lookups ---------------------------------------------------------------------------------

def test_get_list_and_unknown_id_suggestions(shipped: Catalog) -> None:
    assert shipped.get("rtdetr-r18").repo == "PekingU/rtdetr_r18vd"
    with pytest.raises(UnknownModelError) as err:
        shipped.get("rt-detr-r18")
    assert "rtdetr-r18" in str(err.value)
    with pytest.raises(UnknownModelError) as err:
        shipped.get("swin2sr")
    assert "swin2sr-x2" in str(err.value) and "swin2sr-x4" in str(err.value)
    onnx_detectors = shipped.list(task="detect", runtime="onnx")
    assert {c.id for c in onnx_detectors} == {"yolos-tiny-onnx", "detr-resnet50-onnx", "rtdetr-r18-onnx"}


def test_search_needs_every_word_and_ranks_names_first(shipped: Catalog) -> None:
    hits = [c.id for c in shipped.search("swin2sr x4")]
    assert set(hits) == {"swin2sr-x4", "swin2sr-realworld-x4", "swin2sr-compressed-x4"}
    assert [c.id for c in shipped.search("background removal")] == ["birefnet-lite-onnx"]
    # a word found in an id outranks one found only in a description
    dino = [c.id for c in shipped.search("dino")]
    in_id = [i for i in dino if "dino" in i]
    assert len(in_id) == 4 and dino[:4] == in_id  # then vit-base ("compare ... with DINO's")
    assert "vit-base-patch16-224" in dino[4:]
    assert shipped.search("no-such-thing-anywhere") == []
    assert len(shipped.search("")) == len(shipped)


def test_resolve_catalog_id_and_repo_id_without_network(shipped: Catalog) -> None:
    assert shipped.resolve("deit-tiny").id == "deit-tiny"
    assert shipped.resolve("hustvl/yolos-tiny").id == "yolos-tiny"
    assert shipped.resolve("hub:hustvl/yolos-tiny").id == "yolos-tiny"
    pinned = shipped.get("yolos-tiny").revision
    assert shipped.resolve(f"hustvl/yolos-tiny@{pinned}").id == "yolos-tiny"
    with pytest.raises(UnknownModelError) as err:
        shipped.resolve("yolos-tiniest")
    assert "yolos-tiny" in str(err.value)


# -- validation messages -----------------------------------------------------------------------

BAD_ENTRIES = [
    ({"runtime": '"tensorflow"'},
     "catalog.toml entry 'good-one': field 'runtime' is 'tensorflow'; expected one of transformers, spandrel, onnx"),
    ({"tasks": '["classify"]'}, "entry 'good-one': field 'tasks' contains 'classify'; expected one of"),
    ({"attention": '"some"'}, "entry 'good-one': field 'attention' is 'some'; expected one of full, cross"),
    ({"license": None}, "entry 'good-one': field 'license' is missing (required)"),
    ({"revision": '"0d7b067"'}, "entry 'good-one': field 'revision' is '0d7b067': looks like a short commit SHA"),
    ({"revision": '"main"', "seen_commit": '"xyz"'}, "field 'seen_commit' is 'xyz'"),
    ({"id": '"Good_One"'}, "field 'id' is 'Good_One'; expected short kebab-case"),
    ({"licence": '"mit"'}, "entry 'good-one': field 'licence' is not a known field"),
    ({"files": '["config.json", "model.safetensors", "pytorch_model.bin"]'},
     "field 'files' lists 'pytorch_model.bin' next to safetensors weights"),
    ({"params": '-3'}, "field 'params' is -3; expected a positive number"),
    ({"params": '"20M"'}, "field 'params' is '20M'; expected a whole number"),
    ({"memory_mb": '{ fp8 = 3 }'}, "field 'memory_mb' has precision 'fp8'"),
    ({"variant": '"blobs"'}, "field 'variant' is 'blobs'; expected one of semantic"),
    ({"commercial_use": '"yes"'}, "field 'commercial_use' is 'yes'; expected true or false"),
    ({"repo": '"not a repo"'}, "field 'repo' is 'not a repo'; expected a hub repo id"),
    ({"runtime": '"onnx"', "attention": '"none"'}, "field 'sidecar' is missing; ONNX entries need one"),
    ({"runtime": '"onnx"', "attention": '"full"', "files": '["model.onnx"]',
          "sidecar": '{ output = "detr", graphs = { model = "model.onnx" } }'},
     "field 'attention' is 'full', but ONNX graphs return no attention tensors"),
    ({"runtime": '"onnx"', "attention": '"none"', "files": '["model.onnx"]',
          "sidecar": '{ output = "boxes", graphs = { model = "model.onnx" } }'},
     "entry 'good-one': sidecar: field 'output' is 'boxes'; expected one of detr"),
    ({"runtime": '"onnx"', "attention": '"none"', "files": '["config.json"]',
          "sidecar": '{ output = "detr", graphs = { model = "onnx/model.onnx" } }'},
     "field 'files' does not list graph 'model' = 'onnx/model.onnx' from the sidecar"),
    ({"runtime": '"onnx"', "attention": '"none"', "files": '["m.onnx"]',
          "sidecar": '{ output = "image", graphs = { model = "m.onnx" } }'},
     "field 'output' is 'image', an output for task 'restore', but the task is 'detect'"),
]


@pytest.mark.parametrize("changes, message", BAD_ENTRIES, ids=[m[:40] for _, m in BAD_ENTRIES])
def test_malformed_entry_is_named_with_its_field(tmp_path: Path, changes: dict, message: str) -> None:
    path = write_catalog(tmp_path, entry(**dict(changes)))
    with pytest.raises(CatalogError) as err:
        load_catalog(path, include_imports=False)
    assert message in str(err.value)


def test_duplicate_ids_and_non_strict_mode_keeps_the_good_entries(tmp_path: Path) -> None:
    other = entry(id='"other-one"', repo='"owner/other"')
    broken = entry(id='"broken-one"', runtime='"tensorflow"')
    path = write_catalog(tmp_path, entry(), other, entry(), broken)
    with pytest.raises(CatalogError) as err:
        load_catalog(path, include_imports=False)
    text = str(err.value)
    assert "has 2 invalid entries" in text
    assert "entry 'good-one': field 'id' duplicates an earlier entry" in text
    assert "entry 'broken-one': field 'runtime' is 'tensorflow'" in text

    catalog = load_catalog(path, strict=False, include_imports=False)
    assert catalog.ids() == ["good-one", "other-one"]
    assert [(p.entry, p.origin) for p in catalog.problems] == [
        ("good-one", "catalog.toml"), ("broken-one", "catalog.toml")]


def test_entry_without_id_is_reported_by_position(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, entry(), entry(id=None))
    catalog = load_catalog(path, strict=False, include_imports=False)
    assert catalog.problems[0].message.startswith("catalog.toml entry #2 (no id): field 'id' is missing")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, "[[models]]\nid = ")
    with pytest.raises(CatalogError, match=r"catalog\.toml is not valid TOML"):
        load_catalog(path, include_imports=False)


def test_a_card_round_trips_through_its_entry(shipped: Catalog) -> None:
    from engine.catalog.entries import card_from_entry, entry_from_card

    for card in shipped:
        again = card_from_entry(entry_from_card(card), origin="test", index=0)
        assert again == card
        assert isinstance(again, ModelCard)
