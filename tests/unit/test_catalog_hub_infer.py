"""Inferring cards from hub metadata: huggingface_hub's own ModelInfo, built from payloads
shaped like the hub API's `GET /api/models/{repo}?blobs=true` answers."""
from __future__ import annotations

import pytest
from huggingface_hub.hf_api import ModelInfo

from engine.catalog.card import AttentionSupport, Source
from engine.catalog.entries import memory_rule_mb
from engine.catalog.hub_infer import card_from_model_info
from engine.errors import UnsupportedModelError

SHA = "0d7b0679c44060af78116c0fdf6d25774e9598f7"


def sibling(name: str, size: int, lfs: bool = False) -> dict:
    entry = {"rfilename": name, "size": size, "blobId": "b" * 40}
    if lfs:
        entry["lfs"] = {"size": size, "sha256": "a" * 64, "pointerSize": 134}
    return entry


def payload(repo: str, *, pipeline: str | None, library: str | None = "transformers",
            files: dict[str, int], config: dict | None = None, license: str | None = "apache-2.0",
            tags: list[str] | None = None, params: int | None = None, gated=False, **extra) -> dict:
    data = {
        "_id": "65f0c0ffee", "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": SHA,
        "lastModified": "2024-06-21T11:04:59.000Z", "createdAt": "2024-05-21T10:00:00.000Z",
        "private": False, "disabled": False, "gated": gated, "downloads": 12345, "likes": 42,
        "library_name": library, "pipeline_tag": pipeline,
        "tags": (tags or []) + ([f"license:{license}"] if license else []),
        "siblings": [sibling(".gitattributes", 1519), sibling("README.md", 5200)]
        + [sibling(n, s, lfs=s > 1_000_000) for n, s in files.items()],
        "usedStorage": sum(files.values()),
    }
    if license:
        data["cardData"] = {"license": license, "tags": ["vision"]}
    if config is not None:
        data["config"] = config
    if params:
        data["safetensors"] = {"parameters": {"F32": params}, "total": params}
    data.update(extra)
    return data


def info(**kwargs) -> ModelInfo:
    return ModelInfo(**payload(**kwargs))


def test_rtdetr_detector() -> None:
    card = card_from_model_info(info(
        repo="PekingU/rtdetr_r18vd", pipeline="object-detection",
        files={"config.json": 5270, "model.safetensors": 80_906_000, "preprocessor_config.json": 841},
        config={"architectures": ["RTDetrForObjectDetection"], "model_type": "rt_detr"},
        params=20_184_516, tags=["transformers", "safetensors", "rt_detr", "vision"]))
    assert card.id == "hub:PekingU/rtdetr_r18vd" and card.source is Source.HUB
    assert (card.tasks, card.runtime, card.architecture) == (("detect",), "transformers",
                                                             "RTDetrForObjectDetection")
    assert card.revision == SHA  # pinned to the resolved commit, not the branch asked for
    assert card.files == ("config.json", "preprocessor_config.json", "model.safetensors")
    assert card.download_bytes == 5270 + 841 + 80_906_000
    assert card.params == 20_184_516
    assert card.memory_mb == {p: memory_rule_mb(20_184_516, p) for p in ("fp32", "fp16", "bf16")}
    assert (card.license, card.commercial_use, card.gated) == ("apache-2.0", True, False)
    assert card.attention is AttentionSupport.GRADCAM and card.trust_remote_code is False


def test_captioner_fetches_safetensors_and_tokenizer_but_not_bin_or_h5() -> None:
    card = card_from_model_info(info(
        repo="Salesforce/blip-image-captioning-base", pipeline="image-to-text", license="bsd-3-clause",
        files={"config.json": 4560, "preprocessor_config.json": 287, "model.safetensors": 990_000_000,
               "pytorch_model.bin": 990_000_000, "tf_model.h5": 990_000_000, "tokenizer.json": 711_000,
               "tokenizer_config.json": 506, "vocab.txt": 232_000, "special_tokens_map.json": 125},
        config={"architectures": ["BlipForConditionalGeneration"], "model_type": "blip"}),
        requested_revision="main")
    assert card.id == "hub:Salesforce/blip-image-captioning-base@main"
    assert card.tasks == ("caption",) and card.attention is AttentionSupport.CROSS
    assert set(card.files) == {"config.json", "preprocessor_config.json", "model.safetensors",
                               "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                               "special_tokens_map.json"}
    assert card.commercial_use is True and card.params is None


def test_pickle_only_repo_fetches_the_bin_and_says_so() -> None:
    card = card_from_model_info(info(
        repo="nlpconnect/vit-gpt2-image-captioning", pipeline="image-to-text",
        files={"config.json": 4610, "preprocessor_config.json": 228, "pytorch_model.bin": 982_000_000,
               "tokenizer.json": 1_360_000, "vocab.json": 798_000, "merges.txt": 456_000},
        config={"architectures": ["VisionEncoderDecoderModel"], "model_type": "vision-encoder-decoder"}))
    assert "pytorch_model.bin" in card.files and "pickle" in card.description
    assert card.seed.startswith("CPTR")


def test_backbone_decides_mask2former_attention_and_pipeline_keeps_variant_open() -> None:
    card = card_from_model_info(info(
        repo="facebook/mask2former-swin-tiny-coco-panoptic", pipeline="image-segmentation",
        license="other", files={"config.json": 82_200, "preprocessor_config.json": 538,
                                "model.safetensors": 190_000_000, "pytorch_model.bin": 190_000_000},
        config={"architectures": ["Mask2FormerForUniversalSegmentation"], "model_type": "mask2former",
                "backbone_config": {"model_type": "swin"}}))
    assert card.attention is AttentionSupport.WINDOWED and card.seed == "Swin / Mask2Former"
    assert card.variant is None  # universal: the checkpoint's post-processing decides
    assert card.license == "other" and card.commercial_use is None


def test_zero_shot_detector_is_open_vocab_and_mask_generation_is_promptable() -> None:
    owl = card_from_model_info(info(
        repo="google/owlv2-base-patch16-ensemble", pipeline="zero-shot-object-detection",
        files={"config.json": 414, "model.safetensors": 620_000_000},
        config={"architectures": ["Owlv2ForObjectDetection"], "model_type": "owlv2"}))
    assert owl.variant == "open-vocab" and owl.attention is AttentionSupport.FULL
    sam = card_from_model_info(info(
        repo="Zigeng/SlimSAM-uniform-77", pipeline="mask-generation",
        files={"config.json": 364, "model.safetensors": 38_900_000},
        config={"architectures": ["SamModel"], "model_type": "sam"}))
    assert sam.variant == "promptable" and sam.tasks == ("segment",)


def test_task_from_architecture_when_the_repo_has_no_pipeline_tag() -> None:
    card = card_from_model_info(info(
        repo="someone/swin2sr-copy", pipeline=None, files={"config.json": 772, "model.safetensors": 48_500_000},
        config={"architectures": ["Swin2SRForImageSuperResolution"], "model_type": "swin2sr"}))
    assert card.tasks == ("restore",) and card.attention is AttentionSupport.WINDOWED


def test_remote_code_repo_gives_a_flagged_card_with_its_python_files() -> None:
    card = card_from_model_info(info(
        repo="ZhengPeng7/BiRefNet_lite", pipeline="image-segmentation", license="mit",
        tags=["transformers", "safetensors", "custom_code", "background-removal"],
        files={"config.json": 410, "model.safetensors": 178_000_000, "birefnet.py": 92_400,
               "BiRefNet_config.py": 298, "handler.py": 4710, "requirements.txt": 149},
        config={"architectures": ["BiRefNet"], "auto_map": {
            "AutoConfig": "BiRefNet_config.BiRefNetConfig",
            "AutoModelForImageSegmentation": "birefnet.BiRefNet"}}))
    assert card.trust_remote_code is True and card.variant == "matting"
    assert {"birefnet.py", "BiRefNet_config.py", "handler.py"} <= set(card.files)
    assert "trust_remote_code" in card.description


def test_transformers_js_repo_becomes_an_onnx_card_with_its_fp32_graph() -> None:
    card = card_from_model_info(info(
        repo="Xenova/yolos-tiny", pipeline="object-detection", library="transformers.js",
        files={"config.json": 4150, "preprocessor_config.json": 457, "quantize_config.json": 887,
               "onnx/model.onnx": 26_200_000, "onnx/model_fp16.onnx": 13_300_000,
               "onnx/model_quantized.onnx": 9_660_000},
        config={"architectures": ["YolosForObjectDetection"], "model_type": "yolos",
                "id2label": {"0": "N/A", "1": "person"}}))
    assert card.runtime == "onnx" and card.attention is AttentionSupport.NONE
    assert card.files == ("config.json", "preprocessor_config.json", "onnx/model.onnx")
    assert card.sidecar == {"graphs": {"model": "onnx/model.onnx"}, "input_layout": "NCHW",
                            "preprocessor": "preprocessor_config.json", "output": "detr",
                            "labels": "config.json:id2label"}
    assert card.memory_mb == {"fp32": memory_rule_mb(26_200_000 // 4, "fp32")}


def test_onnx_encoder_decoder_captioner_picks_the_merged_decoder() -> None:
    card = card_from_model_info(info(
        repo="Xenova/vit-gpt2-image-captioning", pipeline="image-to-text", library="transformers.js",
        files={"config.json": 4610, "tokenizer.json": 1_360_000, "onnx/encoder_model.onnx": 343_000_000,
               "onnx/decoder_model.onnx": 613_000_000, "onnx/decoder_model_merged.onnx": 615_000_000,
               "onnx/decoder_model_merged_quantized.onnx": 159_000_000},
        config={"architectures": ["VisionEncoderDecoderModel"], "model_type": "vision-encoder-decoder"}))
    assert card.sidecar["output"] == "seq2seq"
    assert card.sidecar["graphs"] == {"encoder": "onnx/encoder_model.onnx",
                                      "decoder": "onnx/decoder_model_merged.onnx"}


def test_single_checkpoint_restoration_repo_is_a_spandrel_card() -> None:
    card = card_from_model_info(info(
        repo="OzzyGT/DAT_X4", pipeline="image-to-image", library=None,
        files={"DAT_x4.safetensors": 154_000_000}))
    assert card.runtime == "spandrel" and card.files == ("DAT_x4.safetensors",)
    with pytest.raises(UnsupportedModelError, match="holds 2 checkpoints"):
        card_from_model_info(info(repo="someone/upscalers", pipeline="image-to-image", library=None,
                                  files={"a.safetensors": 10, "b.safetensors": 10}))


def test_licences_gating_and_non_commercial_terms() -> None:
    card = card_from_model_info(info(
        repo="briaai/RMBG-2.0", pipeline="image-segmentation", license="cc-by-nc-4.0", gated="manual",
        files={"config.json": 500, "model.safetensors": 885_000_000},
        config={"architectures": ["SegformerForSemanticSegmentation"], "model_type": "segformer"}))
    assert (card.license, card.commercial_use, card.gated) == ("cc-by-nc-4.0", False, True)
    other = ModelInfo(**payload(repo="nvidia/segformer-b0-finetuned-ade-512-512", pipeline="image-segmentation",
                                license="other", files={"config.json": 6880, "model.safetensors": 15_000_000},
                                config={"architectures": ["SegformerForSemanticSegmentation"]},
                                cardData={"license": "other", "license_name": "nvidia-segformer"}))
    assert card_from_model_info(other).license == "other (nvidia-segformer)"


REFUSED = [
    ({"repo": "openai-community/gpt2", "pipeline": "text-generation",
          "files": {"config.json": 665, "model.safetensors": 548_000_000},
          "config": {"architectures": ["GPT2LMHeadModel"]}},
     "Ocula cannot run hub repo 'openai-community/gpt2': its pipeline tag is 'text-generation'"),
    ({"repo": "google/vit-tf", "pipeline": "image-classification",
          "files": {"config.json": 600, "tf_model.h5": 346_000_000}, "config": {"architectures": ["ViTModel"]}},
     "'google/vit-tf': it has only TensorFlow/JAX weights (tf_model.h5)"),
    ({"repo": "timm/resnet50.a1_in1k", "pipeline": "image-classification", "library": "timm",
          "files": {"config.json": 700, "model.safetensors": 102_000_000}},
     "'timm/resnet50.a1_in1k': it is a timm model"),
    ({"repo": "stabilityai/sd-x4-upscaler", "pipeline": "image-to-image", "library": "diffusers",
          "files": {"model_index.json": 500}},
     "it is a diffusers pipeline"),
    ({"repo": "someone/empty-detector", "pipeline": "object-detection", "files": {"notes.txt": 10}},
     "'someone/empty-detector': no weights in a format Ocula loads"),
    ({"repo": "someone/new-arch", "pipeline": "object-detection",
          "files": {"config.json": 700, "model.safetensors": 1000},
          "config": {"architectures": ["FancyNewDetector"], "model_type": "fancy"}},
     "its architecture FancyNewDetector is unknown to the installed transformers"),
    ({"repo": "someone/mystery", "pipeline": None, "files": {"config.json": 700, "model.safetensors": 1000},
          "config": {"architectures": ["LlamaForCausalLM"]}},
     "it has no pipeline tag and its architecture (LlamaForCausalLM) is not an image task"),
]


@pytest.mark.parametrize("kwargs, message", REFUSED, ids=[k["repo"] for k, _ in REFUSED])
def test_unrunnable_repos_are_refused_with_the_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(UnsupportedModelError) as err:
        card_from_model_info(info(**kwargs))
    assert message in str(err.value)
    assert kwargs["repo"] in str(err.value)
