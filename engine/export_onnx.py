"""Export a loaded torch model to ONNX for the CPU fast path (`ocula models optimize`).

    path = optimize(card, runner, sample_image)

Three shapes of model are exported:

* image-to-image (restoration: spandrel checkpoints, Swin2SR): one graph
  `pixel_values` [B,3,H,W] in [0, 1] -> `reconstruction`, dynamic height/width. The
  model's scale and size requirement travel inside the file (ONNX metadata
  `ocula.scale`, `ocula.multiple_of`, `ocula.minimum`), where restore() reads them.
* single-forward models (detectors, segmenters, feature extractors): one graph from
  the model's named inputs to its named tensor outputs (transformers names).
* VisionEncoderDecoder captioners: `encoder_model.onnx` + `decoder_model_merged.onnx`
  (optimum / Transformers.js layout: one decoder with `use_cache_branch` choosing
  between the first step and the KV-cached steps), plus the processor and generation
  config, so engine.tasks.caption_onnx runs it.

Nothing is used before it is verified: the export runs on the sample next to torch
(at two input sizes for image models, so a shape baked in by tracing is caught) and
is refused with `ExportVerificationError` when they differ by more than the bound.
Verified exports are cached under `paths.app_home()/optimized/<card id>/<revision>/`
(engine.runtimes.optimized: where they are found and opened for the fast path).

Exports use torch's TorchScript-based exporter (`dynamo=False`): the dynamo exporter
needs `onnxscript`, which is not a dependency.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import OculaError, UnsupportedModelError
from engine.paths import make_temp_dir
from engine.runtimes.optimized import (
    MANIFEST,
    find_optimized,
    onnx_runner_for_export,
    optimized_dir,
)

if TYPE_CHECKING:
    import torch

    from engine.catalog.card import ModelCard
    from engine.runtimes.base import Runner

OPSET = 17
IMAGE_TOLERANCE = 1e-3  # max abs difference on [0, 1] pixels
LOGITS_TOLERANCE = 1e-3  # relative to the largest |value| of the torch output


class ExportVerificationError(OculaError):
    """The ONNX export does not reproduce the torch model closely enough to be used."""


# -- the entry point --------------------------------------------------------------------------


def optimize(card: ModelCard, runner: Runner, sample_image: Any, *,
             tolerance: float | None = None, force: bool = False) -> Path:
    """Export, verify and cache the ONNX fast path of a torch model; return its path.

    Returns `.../model.onnx` for one-graph models and the folder (encoder_model.onnx +
    decoder_model_merged.onnx + processor files) for captioners. A cached, verified
    export is returned as is unless `force`.
    """
    module = runner.module
    if module is None:
        raise UnsupportedModelError(f"{card.name}: only torch models can be optimized; this one "
                                    f"already runs on {runner.placement.describe()}.")
    existing = None if force else find_optimized(card)
    if existing is not None:
        return existing
    kind = export_kind(card, runner)
    final = optimized_dir(card)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(make_temp_dir(final.parent, prefix=f".{final.name}.", suffix=".part"))
    try:
        report, target = export_to_folder(runner, sample_image, staging, kind=kind,
                                          tolerance=tolerance)
        manifest = dict(report, card=card.id, revision=card.revision, kind=kind, path=target)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    tune_sessions(final)
    return final if target == "." else final / target


def export_to_folder(runner: Runner, sample_image: Any, folder: Path, *, kind: str | None = None,
                     tolerance: float | None = None) -> tuple[dict, str]:
    """Export and verify `runner`'s torch model into `folder` (graphs + the config and
    processor files the tasks read beside them); -> (verification report, the graph path
    relative to `folder`, "." for a multi-graph captioner). No cache: `optimize` adds it."""
    kind = kind or export_kind(runner.card, runner)
    pil = _sample_pil(sample_image)
    if kind == "image":
        return _optimize_image(runner, pil, folder, tolerance or IMAGE_TOLERANCE), "model.onnx"
    if kind == "seq2seq":
        return _optimize_seq2seq(runner, pil, folder, tolerance or LOGITS_TOLERANCE), "."
    return _optimize_single(runner, pil, folder, tolerance or LOGITS_TOLERANCE), "model.onnx"


def tune_sessions(folder: Path) -> list[dict]:
    """Choose the CPU session settings of the new export by measurement (recorded under
    app_home, applied at every later load: engine.runtimes.session_tuning). The image
    graph or the encoder only: a decoder's inputs depend on the generation step."""
    from engine.runtimes.session_tuning import TuningError, tune_model

    records = []
    side = processor_side(folder)
    for name in ("model.onnx", "encoder_model.onnx"):
        if (folder / name).is_file():
            try:
                records.append(tune_model(folder / name, image_size=side))
            except TuningError:
                pass  # no sample input for this graph: it keeps the default settings
    return records


def processor_side(folder: Path, default: int = 224) -> int:
    """The image side the model's processor resizes to (preprocessor_config.json: `size`
    height/width or shortest_edge, else `crop_size`), for timing at the real size: on
    SegFormer-B0 at 512² a run without the memory arena takes 1.45× as long (Zen 3,
    267 vs 184 ms), while at a 224² sample turning it off looked 5 % faster."""
    try:
        config = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    for key in ("size", "crop_size"):
        size = config.get(key)
        if isinstance(size, int) and size > 0:
            return size
        if isinstance(size, dict):
            sides = [v for k, v in size.items() if k in ("height", "width", "shortest_edge")
                     and isinstance(v, int) and v > 0]
            if sides:
                return max(sides)
    return default


def export_kind(card: ModelCard, runner: Runner) -> str:
    """image | seq2seq | single: which export fits this model."""
    module = runner.module
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if card.runtime == "spandrel" or card.primary_task == "restore":
        return "image"
    if card.primary_task == "caption":
        if model_type == "vision-encoder-decoder":
            return "seq2seq"
        raise UnsupportedModelError(
            f"{card.name}: ONNX export of {model_type or 'this'} captioners is not supported "
            f"(VisionEncoderDecoder only); it keeps running on torch.")
    return "single"


def sample_image(size: tuple[int, int] = (160, 128), seed: int = 0):
    """A synthetic photo-like sample for verifying exports: smooth gradients, edges and
    noise, so both flat regions and detail are exercised (no bundled photo needed)."""
    import numpy as np
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 9.0) * np.cos(y / 7.0)], -1)
    base[height // 3: 2 * height // 3, width // 4: width // 2] = (0.9, 0.2, 0.1)  # a hard edge
    noisy = np.clip(base + rng.normal(0, 0.04, base.shape), 0, 1)
    return Image.fromarray((noisy * 255).astype(np.uint8), "RGB")


def _sample_pil(sample: Any):
    from engine.tasks.caption import to_pil

    return to_pil(sample)


# -- image-to-image ------------------------------------------------------------------------


def _cpu_copy(runner: Runner) -> torch.nn.Module:
    """An fp32 CPU copy of the runner's module: the CPU fast path is exported in fp32."""
    import copy

    return copy.deepcopy(runner.module).float().cpu().eval()


def _image_module(runner: Runner) -> torch.nn.Module:
    """fp32 CPU module mapping [0, 1] pixels to the restored image, as the runner computes it.

    spandrel descriptors may wrap their network in a call function (DRUNet adds a
    noise-level channel); that function is part of the model, so it is exported too.
    """
    import copy

    import torch

    descriptor = getattr(runner, "descriptor", None)
    call_fn = getattr(descriptor, "_call_fn", None)  # spandrel's per-architecture call
    inner = copy.deepcopy(runner.module).float().cpu().eval()

    class ImageToImage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            out = call_fn(self.inner, pixel_values) if call_fn else self.inner(pixel_values)
            return getattr(out, "reconstruction", out)

    return ImageToImage().eval()


def _export_failed(runner: Runner, exc: Exception) -> UnsupportedModelError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UnsupportedModelError(
        f"{runner.card.name}: torch could not export this model to ONNX ({reason[:300]}). "
        f"It keeps running on torch.")


def export_image_to_image(module: torch.nn.Module, sample: torch.Tensor, path: Path, *,
                          metadata: Mapping[str, Any] | None = None) -> Path:
    """`pixel_values` -> `reconstruction` with dynamic batch/height/width."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python code
        torch.onnx.export(
            module, (sample,), str(path), input_names=["pixel_values"],
            output_names=["reconstruction"], opset_version=OPSET, dynamo=False,
            dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"},
                          "reconstruction": {0: "batch", 2: "out_height", 3: "out_width"}})
    if metadata:
        set_metadata(path, metadata)
    return path


def set_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.save(model, str(path))


def _optimize_image(runner: Runner, pil: Any, folder: Path, tolerance: float) -> dict:
    import torch

    from engine.tasks.restore import spec_for

    spec = spec_for(runner)
    req = spec.requirement
    m = max(1, req.multiple_of)
    edge = max(req.minimum, 32)
    # two different sizes: a size that tracing baked into the graph shows up as a mismatch
    sizes = [(_ceil(edge, m), _ceil(edge + 8, m)), (_ceil(edge + 16, m), _ceil(edge, m))]
    samples = [_crop_to(pil, h, w) for h, w in sizes]
    module = _image_module(runner)
    path = folder / "model.onnx"
    try:
        export_image_to_image(module, samples[0], path, metadata={
            "ocula.task": "restore", "ocula.scale": spec.scale, "ocula.multiple_of": m,
            "ocula.minimum": req.minimum, "ocula.source": runner.card.id})
    except Exception as exc:
        raise _export_failed(runner, exc) from exc
    session = _session(path)
    worst = 0.0
    for x in samples:
        with torch.no_grad():
            ref = module(x).numpy()
        got = session.run(None, {"pixel_values": x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportVerificationError(
                f"{runner.card.name}: the ONNX export returns {got.shape} for input "
                f"{tuple(x.shape)} where torch returns {ref.shape} (a size was fixed by tracing). "
                f"Not used; the model keeps running on torch.")
        worst = max(worst, float(np.abs(np.clip(got, 0, 1) - np.clip(ref, 0, 1)).max()))
    _check(runner, worst, tolerance, "pixel")
    return {"max_abs_diff": worst, "tolerance": tolerance, "verified_sizes": sizes}


def _ceil(x: int, m: int) -> int:
    return -(-x // m) * m


def _crop_to(pil: Any, height: int, width: int) -> torch.Tensor:
    """A (1, 3, height, width) [0, 1] tensor from the sample: resized to cover, centre-cropped."""
    import torch
    from PIL import Image

    w, h = pil.size
    s = max(width / w, height / h)
    resized = pil.resize((max(width, round(w * s)), max(height, round(h * s))), Image.BICUBIC)
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    crop = np.asarray(resized.crop((left, top, left + width, top + height)), np.float32) / 255
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def _check(runner: Runner, worst: float, tolerance: float, what: str) -> None:
    if not np.isfinite(worst) or worst > tolerance:
        raise ExportVerificationError(
            f"{runner.card.name}: the ONNX export differs from torch by up to {worst:.3g} "
            f"({what} max abs difference; allowed {tolerance:g}). It is not used; the model "
            f"keeps running on torch.")


# -- single-forward models -----------------------------------------------------------------


def _tensor_outputs(raw: Any) -> dict[str, torch.Tensor]:
    import torch

    items = raw.items() if isinstance(raw, Mapping) else (
        (f"output_{i}", v) for i, v in enumerate(raw if isinstance(raw, (tuple, list)) else [raw]))
    return {k: v for k, v in items if isinstance(v, torch.Tensor)}


def _optimize_single(runner: Runner, pil: Any, folder: Path, tolerance: float) -> dict:
    import torch

    processor = runner.processor
    if processor is None:
        raise UnsupportedModelError(f"{runner.card.name}: no image processor to build a sample "
                                    f"input; it cannot be exported.")
    images = getattr(processor, "image_processor", processor)
    inputs = {k: v for k, v in images(images=pil, return_tensors="pt").items()
              if isinstance(v, torch.Tensor)}
    module = _cpu_copy(runner)
    names = list(inputs)
    with torch.no_grad():
        reference = _tensor_outputs(module(**inputs))
    output_names = list(reference)

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: torch.Tensor):
            out = _tensor_outputs(self.inner(**dict(zip(names, args))))
            return tuple(out[name] for name in output_names)

    path = folder / "model.onnx"
    dynamic = {name: _dynamic_axes(inputs[name]) for name in names}
    dynamic.update({name: {0: "batch"} for name in output_names})
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Forward().eval(), tuple(inputs[n] for n in names), str(path),
                              input_names=names, output_names=output_names, opset_version=OPSET,
                              dynamic_axes=dynamic, dynamo=False)
    except Exception as exc:
        raise _export_failed(runner, exc) from exc
    session = _session(path)
    worst = _worst_relative(session, output_names, inputs, reference)
    _check(runner, worst, tolerance, "relative output")
    # detectors take photos at their own aspect ratio: the graph must too, so verify it
    # again on the sample turned on its side wherever that gives another input size
    turned = {k: v for k, v in images(images=pil.transpose(_ROTATE_90),
                                      return_tensors="pt").items() if k in inputs}
    if any(turned[n].shape != inputs[n].shape for n in names):
        with torch.no_grad():
            turned_ref = _tensor_outputs(module(**turned))
        try:
            worst = max(worst, _worst_relative(session, output_names, turned, turned_ref))
        except Exception as exc:
            raise ExportVerificationError(
                f"{runner.card.name}: the ONNX export only accepts "
                f"{'x'.join(map(str, inputs[names[0]].shape[-2:]))} inputs, and this model "
                f"takes photos at their own size; it keeps running on torch ({exc}).") from exc
        _check(runner, worst, tolerance, "relative output (second input size)")
    set_metadata(path, {"ocula.task": runner.card.primary_task, "ocula.source": runner.card.id})
    # the task code reads pre-processing and labels (id2label, model_type) beside the graph
    processor.save_pretrained(folder)
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config.save_pretrained(folder)
    return {"max_rel_diff": worst, "tolerance": tolerance, "inputs": names, "outputs": output_names}


_ROTATE_90 = 2  # PIL.Image.Transpose.ROTATE_90, without importing PIL at module level


def _dynamic_axes(tensor: Any) -> dict[int, str]:
    """Batch, and height/width for images (N,C,H,W) and pixel masks (N,H,W)."""
    if tensor.ndim == 4:
        return {0: "batch", 2: "height", 3: "width"}
    if tensor.ndim == 3:
        return {0: "batch", 1: "height", 2: "width"}
    return {0: "batch"}


def _worst_relative(session: Any, output_names: list[str], inputs: Mapping[str, Any],
                    reference: Mapping[str, Any]) -> float:
    wanted = {i.name for i in session.get_inputs()}  # tracing drops inputs the model ignores
    got = session.run(output_names, {n: v.numpy() for n, v in inputs.items() if n in wanted})
    worst = 0.0
    for name, value in zip(output_names, got):
        ref = reference[name].float().numpy()
        scale = max(1.0, float(np.abs(ref).max()))
        worst = max(worst, float(np.abs(value - ref).max()) / scale)
    return worst


# -- VisionEncoderDecoder captioners -----------------------------------------------------------


@dataclass
class Seq2SeqFiles:
    encoder: Path
    decoder: Path  # decoder_model.onnx: first step, no past
    decoder_with_past: Path
    merged: Path | None = None


def _past_names(layers: int, *, cross: bool = False) -> tuple[list[str], list[str]]:
    """Self-attention cache names (`past_key_values.{i}.key`), or with `cross` the
    cross-attention ones (`past_key_values.{i}.encoder.key`, optimum's spelling)."""
    part = ".encoder" if cross else ""
    past = [f"past_key_values.{i}{part}.{kind}" for i in range(layers)
            for kind in ("key", "value")]
    present = [name.replace("past_key_values", "present") for name in past]
    return past, present


def export_seq2seq(model: Any, pixel_values: torch.Tensor, folder: Path, *,
                   merge: bool = True) -> Seq2SeqFiles:
    """Export a VisionEncoderDecoderModel as encoder + decoder (+ with-past, + merged).

    The decoder graphs take the encoder's raw output (`encoder_hidden_states`) and
    apply the encoder->decoder projection themselves when the model has one; the
    self-attention KV cache travels as `past_key_values.{i}.key/value` ->
    `present.{i}.key/value` ([batch, heads, length, head_dim]). Cross-attention keys and
    values are computed once, by the first step (`present.{i}.encoder.key/value`), and
    the with-past graph takes them as `past_key_values.{i}.encoder.key/value` (passing
    them through) instead of projecting `encoder_hidden_states` again every token —
    for a GPT-2 decoder over 197 ViT tokens that projection was ~5.6 GFLOP per token,
    most of a cached step's work.
    """
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    model = model.float().eval()
    folder.mkdir(parents=True, exist_ok=True)
    decoder = model.decoder
    projection = getattr(model, "enc_to_dec_proj", None)
    layers = _decoder_layers(decoder.config)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.encoder

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.encoder(pixel_values=pixel_values).last_hidden_state

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder
            self.projection = projection

        def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    *past: torch.Tensor):
            # past: nothing (first step), or each layer's self k, v then each layer's cross k, v
            if self.projection is not None:
                encoder_hidden_states = self.projection(encoder_hidden_states)
            self_cache, cross_cache = DynamicCache(), DynamicCache()
            half = len(past) // 2
            for i in range(half // 2):
                self_cache.update(past[2 * i], past[2 * i + 1], i)
                cross_cache.update(past[half + 2 * i], past[half + 2 * i + 1], i)
            cache = EncoderDecoderCache(self_cache, cross_cache)  # cross filled: reused as is
            out = self.decoder(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states,
                               past_key_values=cache, use_cache=True, return_dict=True)
            presents, cross = [], []
            for layer in out.past_key_values.self_attention_cache.layers:
                presents += [layer.keys, layer.values]
            for layer in out.past_key_values.cross_attention_cache.layers:
                cross += [layer.keys, layer.values]
            return (out.logits, *presents, *cross)

    past_names, present_names = _past_names(layers)
    cross_past, cross_present = _past_names(layers, cross=True)
    with torch.no_grad():
        encoded = Encoder()(pixel_values)
    batch = pixel_values.shape[0]
    files = Seq2SeqFiles(folder / "encoder_model.onnx", folder / "decoder_model.onnx",
                         folder / "decoder_with_past_model.onnx")
    start = torch.full((batch, 3), int(model.generation_config.decoder_start_token_id or 0))
    with torch.no_grad():
        first = Decoder()(start, encoded)
    step_ids = torch.zeros((batch, 1), dtype=torch.long)
    dyn_out = {"logits": {0: "batch", 1: "sequence"}}
    dyn_out.update({n: {0: "batch", 2: "total_sequence"} for n in present_names})
    dyn_out.update({n: {0: "batch", 2: "encoder_sequence"} for n in cross_present})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), (pixel_values,), str(files.encoder),
                          input_names=["pixel_values"], output_names=["last_hidden_state"],
                          dynamic_axes={"pixel_values": {0: "batch"},
                                        "last_hidden_state": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
        # first step: traced with a 3-token prompt so the causal mask stays general
        torch.onnx.export(Decoder().eval(), (start, encoded), str(files.decoder),
                          input_names=["input_ids", "encoder_hidden_states"],
                          output_names=["logits"] + present_names + cross_present,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "encoder_hidden_states": {0: "batch", 1: "encoder_sequence"},
                                        **dyn_out},
                          opset_version=OPSET, dynamo=False)
        torch.onnx.export(Decoder().eval(), (step_ids, encoded, *first[1:]),
                          str(files.decoder_with_past),
                          input_names=["input_ids", "encoder_hidden_states"] + past_names
                          + cross_past,
                          output_names=["logits"] + present_names + cross_present,
                          dynamic_axes={"input_ids": {0: "batch"},
                                        "encoder_hidden_states": {0: "batch", 1: "encoder_sequence"},
                                        **{n: {0: "batch", 2: "past_sequence"} for n in past_names},
                                        **{n: {0: "batch", 2: "encoder_sequence"}
                                           for n in cross_past},
                                        **dyn_out},
                          opset_version=OPSET, dynamo=False)
    if merge:
        files.merged = merge_decoders(files.decoder, files.decoder_with_past,
                                      folder / "decoder_model_merged.onnx")
    return files


def _decoder_layers(config: Any) -> int:
    for name in ("n_layer", "num_hidden_layers", "decoder_layers", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModelError(f"cannot tell how many layers the decoder "
                                f"({type(config).__name__}) has.")


def merge_decoders(no_past: Path, with_past: Path, out: Path) -> Path:
    """One decoder graph with a `use_cache_branch` input, as optimum merges them.

    An `If` node runs the with-past graph (then) or the first-step graph (else);
    weights both graphs share are stored once, in the outer graph. The merged graph
    takes every input of both (the first step is fed empty past tensors).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    first = onnx.load(str(no_past))
    cached = onnx.load(str(with_past))
    shared: dict[tuple, str] = {}
    outer_inits: list = []

    def key(init) -> tuple:
        array = numpy_helper.to_array(init)
        return (array.dtype.str, array.shape, array.tobytes())

    def branch(model, prefix: str):
        graph = model.graph
        outer_names = {i.name for i in graph.input}
        rename: dict[str, str] = {}
        private = []
        for init in graph.initializer:
            k = key(init)
            if k not in shared:
                shared[k] = f"shared_{len(shared)}"
                outer_init = onnx.TensorProto()
                outer_init.CopyFrom(init)
                outer_init.name = shared[k]
                outer_inits.append(outer_init)
            rename[init.name] = shared[k]
        for node in graph.node:
            for name in node.output:
                if name and name not in outer_names:
                    rename.setdefault(name, prefix + name)
        nodes = []
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in node.attribute):
                raise UnsupportedModelError("cannot merge decoders that contain subgraphs.")
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = prefix + node.name
            copy.input[:] = [rename.get(n, n) for n in node.input]
            copy.output[:] = [rename.get(n, n) for n in node.output]
            nodes.append(copy)
        outputs = []
        for value in graph.output:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(value)
            copy.name = rename.get(value.name, value.name)
            outputs.append(copy)
        return helper.make_graph(nodes, prefix.strip("_/") or "branch", [], outputs, private)

    then_graph = branch(cached, "with_past/")
    else_graph = branch(first, "first_step/")
    flag = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    first_inputs = {v.name: v for v in first.graph.input}
    cached_names = {v.name for v in cached.graph.input}
    # both graphs' inputs (the with-past one may not read encoder_hidden_states at all)
    inputs = [_relaxed(value, first_inputs.get(value.name)) for value in cached.graph.input]
    inputs += [value for value in first.graph.input if value.name not in cached_names]
    inputs.append(flag)
    outputs = []
    for value in first.graph.output:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        outputs.append(copy)
    if_node = helper.make_node("If", ["use_cache_branch"], [o.name for o in outputs],
                               name="use_cache_branch_if", then_branch=then_graph,
                               else_branch=else_graph)
    # the condition must be a scalar
    squeeze = helper.make_node("Squeeze", ["use_cache_branch"], ["use_cache_branch_scalar"],
                               name="use_cache_branch_squeeze")
    if_node.input[0] = "use_cache_branch_scalar"
    graph = helper.make_graph([squeeze, if_node], "decoder_model_merged", inputs, outputs,
                              outer_inits)
    merged = helper.make_model(graph, opset_imports=list(cached.opset_import),
                               producer_name="ocula")
    merged.ir_version = cached.ir_version
    onnx.checker.check_model(merged)
    onnx.save(merged, str(out))
    return out


def _relaxed(value: Any, other: Any) -> Any:
    """`value`'s ValueInfo with every dimension that differs from `other`'s made symbolic."""
    import onnx

    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    if other is None:
        return copy
    dims = copy.type.tensor_type.shape.dim
    other_dims = other.type.tensor_type.shape.dim
    for i, (dim, theirs) in enumerate(zip(dims, other_dims)):
        if dim.SerializeToString() != theirs.SerializeToString():
            dim.Clear()
            dim.dim_param = f"{value.name}_dim{i}"
    return copy


def _optimize_seq2seq(runner: Runner, pil: Any, folder: Path, tolerance: float) -> dict:
    import torch

    from engine.tasks.caption import caption

    model = _cpu_copy(runner)
    inputs = runner.processor(images=[pil], return_tensors="pt")
    try:
        files = export_seq2seq(model, inputs["pixel_values"].float(), folder)
    except Exception as exc:
        raise _export_failed(runner, exc) from exc
    for extra in (files.decoder, files.decoder_with_past):
        extra.unlink()  # the merged decoder replaces both
    runner.processor.save_pretrained(folder)
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    # verify: the encoder's output, then whole greedy captions (ids must be identical)
    with torch.no_grad():
        ref_enc = model.encoder(pixel_values=inputs["pixel_values"].float()).last_hidden_state
    got_enc = _session(files.encoder).run(None, {"pixel_values": inputs["pixel_values"].numpy()})[0]
    scale = max(1.0, float(ref_enc.abs().max()))
    worst = float(np.abs(got_enc - ref_enc.float().numpy()).max()) / scale
    _check(runner, worst, tolerance, "relative encoder output")
    onnx_runner = onnx_runner_for_export(runner.card, folder)
    torch_caption = caption(runner, [pil], max_new_tokens=20)[0]
    onnx_caption = caption(onnx_runner, [pil], max_new_tokens=20)[0]
    if torch_caption.token_ids != onnx_caption.token_ids:
        raise ExportVerificationError(
            f"{runner.card.name}: the ONNX export captions the sample as "
            f"{onnx_caption.text!r} where torch says {torch_caption.text!r}. It is not used; "
            f"the model keeps running on torch.")
    return {"max_rel_diff": worst, "tolerance": tolerance,
            "verified_caption": torch_caption.text, "verified_tokens": len(torch_caption.token_ids)}


__all__: Sequence[str] = (
    "ExportVerificationError",
    "export_image_to_image",
    "export_kind",
    "export_seq2seq",
    "export_to_folder",
    "find_optimized",
    "merge_decoders",
    "onnx_runner_for_export",
    "optimize",
    "optimized_dir",
    "set_metadata",
)
