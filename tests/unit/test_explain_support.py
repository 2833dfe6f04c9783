"""Capabilities per architecture, eager switching, and the non-ViT paths (DETR, Swin, Grad-CAM)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.catalog.card import AttentionSupport, ModelCard
from engine.errors import UnsupportedModelError, UsageError
from engine.explain import capabilities, explain
from engine.explain.windowed import stitch
from tests.fixtures.tiny_vits import bright_patch_image, crafted_vit, processor_for


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(2)
    return Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8))


def _config(name, **kwargs):
    import transformers

    return getattr(transformers, name)(**kwargs)


@pytest.mark.parametrize("config_name,support,has,lacks", [
    ("ViTConfig", AttentionSupport.FULL, "relevance", "gradcam"),
    ("Dinov2WithRegistersConfig", AttentionSupport.FULL, "dino", "cross_attention"),
    ("SiglipVisionConfig", AttentionSupport.FULL, "rollout", "dino"),  # no CLS token
    ("BlipConfig", AttentionSupport.CROSS, "cross_attention", "detr"),
    ("GitConfig", AttentionSupport.CROSS, "cross_attention", "windowed"),
    ("SwinConfig", AttentionSupport.WINDOWED, "windowed", "rollout"),
    ("Swin2SRConfig", AttentionSupport.WINDOWED, "windowed", "relevance"),
    ("ConvNextConfig", AttentionSupport.GRADCAM, "gradcam", "raw"),
    ("ResNetConfig", AttentionSupport.GRADCAM, "gradcam", "rollout"),
])
def test_capabilities_by_architecture(config_name, support, has, lacks):
    caps = capabilities(_config(config_name))
    assert caps.support == support
    assert caps.allows(has) and not caps.allows(lacks)
    assert caps.reason


def test_capabilities_from_a_card_and_unknown_models():
    card = ModelCard(id="x", name="x", tasks=("features",), runtime="onnx", attention=AttentionSupport.FULL)
    assert capabilities(card).methods == ("raw", "rollout", "dino", "discover")
    caps = capabilities(_config("BertConfig"))
    assert caps.support == AttentionSupport.NONE and caps.methods == ()


def test_sdpa_model_is_switched_to_eager_said_aloud_and_restored():
    from transformers import ViTForImageClassification

    crafted = crafted_vit("vit")
    config = crafted.config
    config._attn_implementation = "sdpa"
    model = ViTForImageClassification(config).eval()
    model.load_state_dict(crafted.state_dict())
    assert model.config._attn_implementation == "sdpa"
    maps = explain(model, bright_patch_image((32, 32), (2, 3), 8), method="raw", processor=processor_for((32, 32)))
    assert any("sdpa" in note and "eager" in note for note in maps.notes)
    assert np.unravel_index(np.argmax(maps.grid_map), (4, 4)) == (2, 3)
    assert model.config._attn_implementation == "sdpa"  # the caller's fast path is back


def test_method_not_offered_is_refused_with_the_alternatives(image):
    with pytest.raises(UnsupportedModelError, match="Available: raw, rollout"):
        explain(crafted_vit("vit"), image, method="gradcam", processor=processor_for((32, 32)))
    with pytest.raises(UsageError, match="unknown attention-map method"):
        explain(crafted_vit("vit"), image, method="saliency", processor=processor_for((32, 32)))


def test_user_facing_method_names_pick_the_method_that_fits(image):
    processor = processor_for((32, 32))
    clicked = explain(crafted_vit("vit"), image, method="similarity", patch=(5.0, 5.0),
                      processor=processor)
    assert clicked.method == "patch_similarity"
    assert explain(crafted_vit("vit"), image, method="similarity",
                   processor=processor).method == "cls_similarity"


# -- DETR --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detr():
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(0)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                            layer_type="basic", out_features=["stage4"])
    config = DetrConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
                        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=6,
                        num_labels=3)
    return DetrForObjectDetection(config).eval(), DetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})


def test_detr_one_map_per_detected_object(detr, image):
    model, processor = detr
    pixels = processor(images=image, return_tensors="pt")
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(pixel_values=pixels["pixel_values"], output_attentions=True)
    scores = out.logits[0].softmax(-1)[:, :-1].max(-1).values
    threshold = float(scores.median())  # random weights: keep about half of the queries
    keep = torch.nonzero(scores > threshold).flatten().tolist()
    maps = explain(model, image, method="detr", processor=processor, detection_threshold=threshold)
    assert [t.index for t in maps.per_token] == keep and 0 < len(keep) < 6
    h, w = 96 // 32, 128 // 32  # 48×64 -> resized 96×128 -> stride-32 feature map
    assert maps.layout.grid == (h, w)
    expected_boxes = processor.post_process_object_detection(out, threshold=threshold, target_sizes=[(48, 64)])[0]
    for token, box, query in zip(maps.per_token, expected_boxes["boxes"], keep):
        np.testing.assert_allclose(token.box, box.numpy(), atol=1e-3)
        expected = out.cross_attentions[-1][0, :, query].mean(0).reshape(h, w).numpy()
        np.testing.assert_allclose(token.grid_map, expected, atol=1e-6)


def test_detr_encoder_rollout_has_no_cls(detr, image):
    model, processor = detr
    maps = explain(model, image, method="rollout", processor=processor)
    assert maps.layout.cls_index is None and maps.grid_map.shape == (3, 4)
    assert any("no CLS token" in note for note in maps.notes)


# -- Swin --------------------------------------------------------------------------------
def test_stitch_inverts_swin_window_partition():
    """Oracle: transformers' own window_partition of a shifted, padded grid."""
    from transformers.models.swin.modeling_swin import window_partition

    height, width, window, shift = 6, 10, 4, 2
    values = torch.arange(height * width, dtype=torch.float32).reshape(1, height, width, 1)
    padded = torch.nn.functional.pad(values, (0, 0, 0, 12 - width, 0, 8 - height))
    shifted = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2))
    windows = window_partition(shifted, window).reshape(-1, window * window).numpy()
    np.testing.assert_array_equal(stitch(windows, (height, width), window, shift), values[0, :, :, 0].numpy())


def test_swin_windowed_maps(image):
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(image_size=32, patch_size=2, embed_dim=8, depths=[2, 2],
                                                  num_heads=[2, 2], window_size=4, num_labels=3)).eval()
    processor = processor_for((32, 32))
    maps = explain(model, image, method="windowed", processor=processor, layer=1)
    assert maps.grid_map.shape == (16, 16) and maps.params["shift"] == 2
    # each 4×4 window's received attention sums to its token count (rows are distributions)
    unshifted = np.roll(maps.grid_map, (-2, -2), axis=(0, 1))
    sums = unshifted.reshape(4, 4, 4, 4).sum(axis=(1, 3))
    np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
    clicked = explain(model, image, method="windowed", processor=processor, layer=0, patch=(10.0, 20.0))
    nonzero = np.argwhere(clicked.grid_map > 0)
    # (10, 20) in the 64×48 image -> input (4.75, 13.2) -> token (6, 2) -> unshifted window rows 4..7, cols 0..3
    assert nonzero.min(0).tolist() == [4, 0] and nonzero.max(0).tolist() == [7, 3]
    assert clicked.grid_map.sum() == pytest.approx(1.0, rel=1e-5)


# -- Grad-CAM ----------------------------------------------------------------------------
def test_gradcam_matches_a_hand_computed_cam(image):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    model = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                                          num_labels=3)).eval()
    processor = processor_for((64, 64))
    maps = explain(model, image, method="gradcam", processor=processor, target=2)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    store = {}
    hook = model.convnext.encoder.stages[-1].register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = model(pixel_values=pixels).logits
    hook.remove()
    grad, = torch.autograd.grad(logits[0, 2], store["a"])
    cam = torch.relu((grad[0].mean((1, 2))[:, None, None] * store["a"][0]).sum(0)).detach().numpy()
    np.testing.assert_allclose(maps.grid_map, cam, rtol=1e-5, atol=1e-7)
    assert maps.params["target"] == 2 and maps.heatmap.shape == (48, 64)


# -- token layouts of the other ViT families ----------------------------------------------
_V = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32,
          "patch_size": 8}


def _family(name):
    import transformers as tf

    torch.manual_seed(0)
    return {
        "beit": lambda: tf.BeitModel(tf.BeitConfig(**_V, use_relative_position_bias=True)),
        "clip-vision": lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**_V)),
        "clip": lambda: tf.CLIPModel(tf.CLIPConfig(vision_config=_V, text_config={
            "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})),
        "siglip": lambda: tf.SiglipVisionModel(tf.SiglipVisionConfig(**_V)),
        "yolos": lambda: tf.YolosForObjectDetection(tf.YolosConfig(**{**_V, "image_size": [32, 48]},
                                                                   num_detection_tokens=5, num_labels=3)),
    }[name]().eval()


@pytest.mark.parametrize("name,size,special,patch_start", [
    ("beit", (32, 32), {"cls": (0,)}, 1),
    ("clip-vision", (32, 32), {"cls": (0,)}, 1),
    ("clip", (32, 32), {"cls": (0,)}, 1),
    ("siglip", (32, 32), {}, 0),
    ("yolos", (32, 48), {"cls": (0,), "detection": tuple(range(25, 30))}, 1),  # detection tokens trail
])
@pytest.mark.parametrize("method", ["rollout", "relevance"])
def test_family_token_layouts(name, size, special, patch_start, method, image):
    maps = explain(_family(name), image, method=method, processor=processor_for(size))
    assert maps.layout.special == special and maps.layout.patch_start == patch_start
    assert maps.layout.grid == (size[0] // 8, size[1] // 8)
    np.testing.assert_allclose(maps.attentions.sum(-1), 1.0, atol=1e-5)
    assert maps.heatmap.shape == (48, 64) and np.isfinite(maps.heatmap).all()
