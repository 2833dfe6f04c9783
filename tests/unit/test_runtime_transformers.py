"""transformers backend: tiny random models saved to folders, loaded through load_runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from engine.catalog.card import ModelCard, Source
from engine.errors import Cancelled, RemoteCodeRefused, UnsafeCheckpointError, UnsupportedModelError
from engine.events import CancelToken
from engine.runtimes import load_runner
from engine.runtimes.transformers_backend import EAGER_NOTE, TransformersRunner
from engine.settings import RemoteCodeGrant, Settings


def card_for(folder: Path, tasks=("detect",), **extra) -> ModelCard:
    return ModelCard(
        id=f"local:{folder.name}",
        name=folder.name,
        tasks=tuple(tasks),
        runtime="transformers",
        source=Source.LOCAL,
        local_path=str(folder),
        **extra,
    )


def tiny_vit_config(**extra) -> transformers.ViTConfig:
    return transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        num_labels=3,
        **extra,
    )


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    transformers.ViTForImageClassification(tiny_vit_config()).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def detr_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("detr")
    config = transformers.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=transformers.ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 8, 16, 16],
            depths=[1, 1, 1, 1],
            out_features=["stage4"],
        ),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        num_queries=5,
        num_labels=4,
    )
    torch.manual_seed(0)
    transformers.DetrForObjectDetection(config).save_pretrained(folder)
    transformers.DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(
        folder
    )
    return folder


def pixels(h=32, w=32, seed=1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_vit_forward_equals_model_and_processor_loaded(vit_folder):
    runner = load_runner(card_for(vit_folder, tasks=("features",)), device="cpu")
    assert isinstance(runner, TransformersRunner)
    assert isinstance(runner.module, transformers.ViTForImageClassification)
    assert isinstance(runner.processor, transformers.ViTImageProcessor)
    assert runner.placement.device == "cpu" and runner.placement.precision == "fp32"
    assert runner.placement.fallback is None
    x = pixels()
    out = runner.forward({"pixel_values": x.numpy()})  # numpy in, torch out
    with torch.inference_mode():
        expected = runner.module(pixel_values=x).logits
    assert isinstance(out.logits, torch.Tensor) and out.logits.device.type == "cpu"
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=0)
    assert runner.memory_bytes == sum(p.numel() * 4 for p in runner.module.parameters()) + sum(
        b.numel() * b.element_size() for b in runner.module.buffers()
    )


def test_detr_outputs_feed_transformers_post_processing(detr_folder):
    runner = load_runner(card_for(detr_folder), device="cpu", snapshot=detr_folder)
    assert type(runner.module).__name__ == "DetrForObjectDetection"
    inputs = runner.processor(images=np.zeros((40, 56, 3), np.uint8), return_tensors="pt")
    out = runner.forward(dict(inputs))
    with torch.inference_mode():
        direct = runner.module(**inputs)
    torch.testing.assert_close(out.logits, direct.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.pred_boxes, direct.pred_boxes, rtol=0, atol=0)
    ours = runner.processor.post_process_object_detection(
        out, threshold=0.0, target_sizes=[(40, 56)]
    )
    theirs = runner.processor.post_process_object_detection(
        direct, threshold=0.0, target_sizes=[(40, 56)]
    )
    torch.testing.assert_close(ours[0]["boxes"], theirs[0]["boxes"])
    torch.testing.assert_close(ours[0]["scores"], theirs[0]["scores"])


def test_segformer_semantic(tmp_path):
    from tests.fixtures.tiny_models import segformer_config

    config = segformer_config(num_labels=5)  # no labels' names, no processor saved
    torch.manual_seed(0)
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path)
    runner = load_runner(card_for(tmp_path, tasks=("segment",), variant="semantic"), device="cpu")
    x = pixels(32, 48)
    with torch.inference_mode():
        expected = runner.module(pixel_values=x).logits
    torch.testing.assert_close(runner.forward({"pixel_values": x}).logits, expected, rtol=0, atol=0)
    assert runner.processor is None  # the folder ships no preprocessor config


def test_unknown_architecture_name_falls_back_to_task_auto_class(detr_folder, tmp_path):
    for item in detr_folder.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["NoSuchDetrClass"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    runner = load_runner(card_for(tmp_path, tasks=("detect",)), device="cpu")
    assert type(runner.module).__name__ == "DetrForObjectDetection"
    # the card's architecture overrides config.architectures
    runner = load_runner(
        card_for(tmp_path, tasks=("features",), architecture="DetrModel"), device="cpu"
    )
    assert type(runner.module).__name__ == "DetrModel"


def test_attention_loads_eager_and_says_so(vit_folder):
    plain = load_runner(card_for(vit_folder, tasks=("features",)), device="cpu")
    assert plain.module.config._attn_implementation != "eager"
    assert EAGER_NOTE not in plain.notes
    runner = load_runner(card_for(vit_folder, tasks=("features",)), device="cpu", attention=True)
    assert runner.module.config._attn_implementation == "eager"
    assert EAGER_NOTE in runner.notes
    out = runner.forward({"pixel_values": pixels(), "output_attentions": True})
    assert len(out.attentions) == 2 and out.attentions[0].shape == (1, 2, 17, 17)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, 2, 17))


def test_fp16_on_cpu_falls_back_with_announcement_bf16_runs(vit_folder):
    runner = load_runner(card_for(vit_folder, tasks=("features",)), device="cpu", precision="fp16")
    assert runner.placement.precision == "fp32"
    assert "fp16 on cpu" in runner.placement.fallback
    assert next(runner.module.parameters()).dtype == torch.float32
    bf16 = load_runner(card_for(vit_folder, tasks=("features",)), device="cpu", precision="bf16")
    assert bf16.placement.precision == "bf16" and bf16.placement.fallback is None
    assert next(bf16.module.parameters()).dtype == torch.bfloat16
    out = bf16.forward({"pixel_values": pixels()})
    assert out.logits.dtype == torch.float32  # widened for post-processing
    torch.testing.assert_close(
        out.logits, runner.forward({"pixel_values": pixels()}).logits, atol=0.1, rtol=0.05
    )


def test_cuda_request_on_cpu_machine_is_announced(vit_folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the fallback path is not reachable")
    runner = load_runner(card_for(vit_folder, tasks=("features",)), device="cuda", precision="auto")
    assert runner.placement.device == "cpu" and runner.placement.precision == "fp32"
    assert "no CUDA device" in runner.placement.fallback
    assert any("fallback" in note for note in runner.notes)


def _write_remote_code_repo(folder: Path, marker: Path) -> None:
    """A model folder whose config points at Python files in the repo (auto_map)."""
    (folder / "configuration_tiny.py").write_text(
        "from transformers import PretrainedConfig\n"
        "class TinyConfig(PretrainedConfig):\n"
        "    model_type = 'tiny-remote'\n"
        "    def __init__(self, width=4, **kw):\n"
        "        self.width = width\n"
        "        super().__init__(**kw)\n"
    )
    (folder / "modeling_tiny.py").write_text(
        "import pathlib, torch\n"
        f"pathlib.Path({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import PreTrainedModel\n"
        "from .configuration_tiny import TinyConfig\n"
        "class TinyModel(PreTrainedModel):\n"
        "    config_class = TinyConfig\n"
        "    def __init__(self, config):\n"
        "        super().__init__(config)\n"
        "        self.proj = torch.nn.Linear(3, config.width)\n"
        "        self.post_init()\n"
        "    def forward(self, pixel_values):\n"
        "        return {'last_hidden_state': self.proj(pixel_values.mean((2, 3)))}\n"
    )
    config = {
        "model_type": "tiny-remote",
        "width": 4,
        "architectures": ["TinyModel"],
        "auto_map": {
            "AutoConfig": "configuration_tiny.TinyConfig",
            "AutoModel": "modeling_tiny.TinyModel",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(
        {"proj.weight": torch.randn(4, 3), "proj.bias": torch.randn(4)},
        folder / "model.safetensors",
    )


def test_remote_code_refused_unless_allowed(tmp_path, vit_folder):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "ran.txt"
    _write_remote_code_repo(folder, marker)
    card = card_for(folder, tasks=("features",), repo="someone/tiny-remote", revision="abc123")
    with pytest.raises(RemoteCodeRefused) as info:
        load_runner(card, device="cpu", settings=Settings())
    assert info.value.repo == "someone/tiny-remote" and info.value.revision == "abc123"
    assert "auto_map" in str(info.value)
    assert not marker.exists(), "refused remote code must not have been imported"
    # a grant for another revision does not count
    other = Settings(allowed_remote_code=[RemoteCodeGrant("someone/tiny-remote", "main")])
    with pytest.raises(RemoteCodeRefused):
        load_runner(card, device="cpu", settings=other)
    # a card that says it needs remote code is refused even when config.json has no auto_map
    with pytest.raises(RemoteCodeRefused, match="catalog card"):
        load_runner(card_for(vit_folder, repo="x/y", trust_remote_code=True), settings=Settings())
    allowed = Settings(allowed_remote_code=[RemoteCodeGrant("someone/tiny-remote", "abc123")])
    runner = load_runner(card, device="cpu", settings=allowed)
    assert marker.exists()
    assert type(runner.module).__name__ == "TinyModel"
    assert any("runs Python code" in note for note in runner.notes)
    x = pixels()
    expected = runner.module.proj(x.mean((2, 3)))
    torch.testing.assert_close(runner.forward({"pixel_values": x}).last_hidden_state, expected)


def _malicious_bin(path: Path, marker: Path, state_dict: dict) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({**state_dict, "payload": Payload()}, path)


def test_bin_weights_load_and_malicious_pickle_refused(vit_folder, tmp_path):
    model = transformers.ViTForImageClassification.from_pretrained(vit_folder)
    good = tmp_path / "good"
    good.mkdir()
    (good / "config.json").write_text((vit_folder / "config.json").read_text())
    torch.save(model.state_dict(), good / "pytorch_model.bin")
    runner = load_runner(card_for(good, tasks=("features",)), device="cpu")
    x = pixels()
    with torch.inference_mode():
        expected = model(pixel_values=x).logits
    torch.testing.assert_close(runner.forward({"pixel_values": x}).logits, expected, rtol=0, atol=0)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((vit_folder / "config.json").read_text())
    marker = tmp_path / "pwned"
    _malicious_bin(bad / "pytorch_model.bin", marker, model.state_dict())
    with pytest.raises(UnsafeCheckpointError) as info:
        load_runner(card_for(bad, tasks=("features",)), device="cpu")
    assert "system" in str(info.value) and "pytorch_model.bin" in str(info.value)
    assert not marker.exists()
    # second layer: transformers 5's own loader uses torch.load(weights_only=True) and refuses too
    import pickle

    from transformers.modeling_utils import load_state_dict

    with pytest.raises(pickle.UnpicklingError):
        load_state_dict(str(bad / "pytorch_model.bin"))
    assert not marker.exists()


def test_vision_encoder_decoder_processor_pairs_tokenizer_and_generate(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vision = tiny_vit_config()
    text = transformers.GPT2Config(
        n_embd=32,
        n_layer=1,
        n_head=2,
        vocab_size=20,
        n_positions=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vision, text)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    transformers.VisionEncoderDecoderModel(config).save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    vocab = {f"w{i}": i for i in range(20)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", bos_token="w1", eos_token="w2", pad_token="w0"
    ).save_pretrained(tmp_path)
    runner = load_runner(card_for(tmp_path, tasks=("caption",)), device="cpu")
    assert type(runner.module).__name__ == "VisionEncoderDecoderModel"
    proc = runner.processor
    assert isinstance(proc.image_processor, transformers.ViTImageProcessor)
    assert proc.tokenizer is not None
    inputs = proc(images=np.zeros((20, 30, 3), np.uint8), return_tensors="pt")
    ids = runner.generate(dict(inputs), max_new_tokens=4, do_sample=False)
    with torch.inference_mode():
        expected = runner.module.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(ids, expected)
    assert isinstance(proc.batch_decode(ids, skip_special_tokens=True)[0], str)


def test_missing_config_and_cancel(tmp_path, vit_folder):
    with pytest.raises(UnsupportedModelError, match="no config.json"):
        load_runner(card_for(tmp_path), device="cpu")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        load_runner(card_for(vit_folder, tasks=("features",)), device="cpu", cancel=token)


def test_release_frees_the_module(vit_folder):
    runner = load_runner(card_for(vit_folder, tasks=("features",)), device="cpu")
    runner.release()
    assert runner.module is None
    with pytest.raises(RuntimeError, match="released"):
        runner.forward({"pixel_values": pixels()})
