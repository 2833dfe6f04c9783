"""Hub inference and hub search against the local hub server (real HTTP, HF_ENDPOINT)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.numpy import save_file

from engine.catalog.card import AttentionSupport, Source
from engine.catalog.catalog import load_catalog
from engine.catalog.hub_infer import card_from_hub
from engine.catalog.search import search_hub
from engine.errors import UnsupportedModelError
from tests.fixtures.repos import write_files

OWNER = "ocula-catalog-tests"  # the hub server lives for the session: keep names unique


def weights(folder: Path, name: str = "model.safetensors", shapes: dict | None = None) -> int:
    """Write a real safetensors file; returns its parameter count."""
    shapes = shapes or {"embed.weight": (16, 8), "head.weight": (4, 16), "head.bias": (4,)}
    tensors = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / name))
    return sum(int(np.prod(s)) for s in shapes.values())


def config(folder: Path, **values) -> None:
    write_files(folder, {"config.json": json.dumps(values)})


def test_card_from_hub_reads_metadata_sizes_and_parameter_count(hub, tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    n_params = weights(folder)
    config(folder, architectures=["ViTForImageClassification"], model_type="vit",
           id2label={"0": "a", "1": "b"})
    write_files(folder, {"preprocessor_config.json": '{"do_resize": true}', "README.md": "# hi\n",
                         "pytorch_model.bin": b"\x80\x02}q\x00."})
    repo = f"{OWNER}/tiny-vit"
    sha = hub.add_repo(repo, folder, pipeline_tag="image-classification", library_name="transformers",
                       license="apache-2.0")
    card = card_from_hub(repo)
    assert card.id == f"hub:{repo}" and card.source is Source.HUB
    assert card.revision == sha
    assert card.tasks == ("features",) and card.runtime == "transformers"
    assert card.files == ("config.json", "preprocessor_config.json", "model.safetensors")
    assert card.download_bytes == sum((folder / f).stat().st_size for f in card.files)
    assert card.params == n_params  # the hub's safetensors count, read from the real file
    assert card.attention is AttentionSupport.FULL and card.commercial_use is True


def test_backbone_and_labels_come_from_the_downloaded_config(hub, tmp_path: Path) -> None:
    # model_info only carries architectures/model_type/auto_map; the backbone is in config.json
    folder = tmp_path / "m2f"
    weights(folder)
    config(folder, architectures=["Mask2FormerForUniversalSegmentation"], model_type="mask2former",
           backbone_config={"model_type": "swin", "window_size": 7})
    repo = f"{OWNER}/tiny-mask2former"
    hub.add_repo(repo, folder, pipeline_tag="image-segmentation", library_name="transformers",
                 license="other")
    card = card_from_hub(repo)
    assert card.attention is AttentionSupport.WINDOWED and card.seed == "Swin / Mask2Former"
    assert card.commercial_use is None
    assert hub.count(f"*{repo}/resolve/*/config.json", method="GET") == 1


def test_an_older_revision_pins_that_commit(hub, tmp_path: Path) -> None:
    repo = f"{OWNER}/two-commits"
    first = tmp_path / "v1"
    weights(first)
    config(first, architectures=["Swin2SRForImageSuperResolution"], model_type="swin2sr", upscale=2)
    old_sha = hub.add_repo(repo, first, pipeline_tag="image-to-image", library_name="transformers")
    second = tmp_path / "v2"
    weights(second, shapes={"w": (8, 8)})
    config(second, architectures=["Swin2SRForImageSuperResolution"], model_type="swin2sr", upscale=4)
    new_sha = hub.add_repo(repo, second, pipeline_tag="image-to-image", library_name="transformers")

    assert card_from_hub(repo).revision == new_sha
    old = card_from_hub(repo, old_sha)
    assert old.id == f"hub:{repo}@{old_sha}" and old.revision == old_sha
    assert old.params == 16 * 8 + 4 * 16 + 4
    # Catalog.resolve takes owner/name@revision for anything not curated
    resolved = load_catalog(include_imports=False).resolve(f"{repo}@{old_sha}")
    assert resolved == old


def test_resolve_prefers_the_curated_pinned_entry(hub) -> None:
    catalog = load_catalog(include_imports=False)
    before = hub.count("*")
    assert catalog.resolve("PekingU/rtdetr_r18vd").id == "rtdetr-r18"
    assert hub.count("*") == before  # no hub request for a curated repo


def test_remote_code_repo_is_flagged_not_refused(hub, tmp_path: Path) -> None:
    folder = tmp_path / "rc"
    weights(folder)
    config(folder, architectures=["BiRefNet"], auto_map={
        "AutoConfig": "BiRefNet_config.BiRefNetConfig",
        "AutoModelForImageSegmentation": "birefnet.BiRefNet"})
    write_files(folder, {"birefnet.py": "class BiRefNet: pass\n", "BiRefNet_config.py": "x = 1\n"})
    repo = f"{OWNER}/remote-code-segmenter"
    sha = hub.add_repo(repo, folder, pipeline_tag="image-segmentation", library_name="transformers",
                       tags=["custom_code"], license="mit")
    card = card_from_hub(repo)
    assert card.trust_remote_code is True and card.revision == sha
    assert {"birefnet.py", "BiRefNet_config.py"} <= set(card.files)


def test_gated_repo_metadata_is_enough_without_a_token(hub, tmp_path: Path) -> None:
    folder = tmp_path / "gated"
    weights(folder)
    config(folder, architectures=["RTDetrForObjectDetection"], model_type="rt_detr")
    repo = f"{OWNER}/gated-detector"
    hub.add_repo(repo, folder, gated=True, token="hf_catalog_test_token",
                 pipeline_tag="object-detection", library_name="transformers")
    card = card_from_hub(repo)
    assert card.gated is True and card.tasks == ("detect",)
    assert card.architecture == "RTDetrForObjectDetection"


def test_transformers_js_repo_on_the_hub_is_an_onnx_card(hub, tmp_path: Path) -> None:
    folder = tmp_path / "xenova"
    config(folder, architectures=["SegformerForSemanticSegmentation"], model_type="segformer",
           id2label={"0": "wall", "1": "sky"})
    write_files(folder, {"preprocessor_config.json": "{}", "onnx/model.onnx": b"onnx" * 100,
                         "onnx/model_quantized.onnx": b"q" * 50})
    repo = f"{OWNER}/segformer-onnx"
    hub.add_repo(repo, folder, pipeline_tag="image-segmentation", library_name="transformers.js")
    card = card_from_hub(repo)
    assert card.runtime == "onnx" and card.attention is AttentionSupport.NONE
    assert card.files == ("config.json", "preprocessor_config.json", "onnx/model.onnx")
    assert card.sidecar["output"] == "semantic_logits"
    assert card.sidecar["labels"] == "config.json:id2label"


def test_unknown_repo_raises_the_hub_error_and_text_models_are_refused(hub, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        card_from_hub(f"{OWNER}/does-not-exist")
    folder = tmp_path / "llm"
    weights(folder)
    config(folder, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    repo = f"{OWNER}/tiny-gpt2"
    hub.add_repo(repo, folder, pipeline_tag="text-generation", library_name="transformers")
    with pytest.raises(UnsupportedModelError, match=f"'{repo}': its pipeline tag is 'text-generation'"):
        card_from_hub(repo)


def test_search_hub_merges_the_task_pipelines_sorted_by_downloads(hub, tmp_path: Path) -> None:
    folder = write_files(tmp_path / "any", {"config.json": "{}"})
    tag = "zq-search-probe"  # a search term no other test's repo contains
    hub.add_repo(f"{OWNER}/{tag}-blip", folder, pipeline_tag="image-to-text",
                 library_name="transformers", downloads=500)
    hub.add_repo(f"{OWNER}/{tag}-vlm", folder, pipeline_tag="image-text-to-text",
                 library_name="transformers", downloads=9000)
    hub.add_repo(f"{OWNER}/{tag}-js", folder, pipeline_tag="image-to-text",
                 library_name="transformers.js", downloads=20)
    hub.add_repo(f"{OWNER}/{tag}-sd", folder, pipeline_tag="image-to-image",
                 library_name="diffusers", downloads=10**6)
    hub.add_repo(f"{OWNER}/{tag}-detector", folder, pipeline_tag="object-detection",
                 library_name="transformers", downloads=10**5)

    hits = search_hub("caption", tag)
    assert [h.repo_id for h in hits] == [f"{OWNER}/{tag}-vlm", f"{OWNER}/{tag}-blip", f"{OWNER}/{tag}-js"]
    assert [h.pipeline_tag for h in hits] == ["image-text-to-text", "image-to-text", "image-to-text"]
    assert hits[0].downloads == 9000 and hits[0].library == "transformers"
    assert hits[0].last_modified is not None
    assert [h.repo_id for h in search_hub("caption", tag, limit=1)] == [f"{OWNER}/{tag}-vlm"]
    # restore: the diffusers pipeline is left out unless asked for
    assert search_hub("restore", tag) == []
    assert [h.repo_id for h in search_hub("restore", tag, include_unsupported=True)] == [f"{OWNER}/{tag}-sd"]
    assert hub.count("/api/models", method="GET") >= 2
