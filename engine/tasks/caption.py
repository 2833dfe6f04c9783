"""Image captioning (and Florence-2's other text-encoded tasks) on any loaded captioner.

    captions = caption(runner, images, prompt=None, max_new_tokens=30)

Greedy and deterministic by default; images are captioned in batches; `on_token`
streams each image's text as it grows (the GUI shows captions being written).
Torch models generate through transformers' own `generate` (a `BaseStreamer` feeds
`on_token`); ONNX exports (encoder + decoder with KV cache) go through
`engine.tasks.caption_onnx`, which produces the same token ids.

What differs between model families (how a prompt enters, how many prompt tokens
come back at the start of the output, which token ends a caption) lives in a small
registry keyed by `config.model_type`, not in branches on repo names.

Florence-2 is one model for many tasks (the GiT idea): `florence_task` runs
`<OD>`, `<DENSE_REGION_CAPTION>`, `<OCR_WITH_REGION>`,
`<REFERRING_EXPRESSION_SEGMENTATION>`… and turns the processor's
`post_process_generation` into `Detections` / `Segmentation` / `Caption`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import UnsupportedModelError, UsageError
from engine.registry import Registry
from engine.results import Box, Caption, Detections, Segmentation, SegmentInstance
from engine.tasks.caption_common import (
    CaptionFamily,
    TokenCallback,
    TokenStream,
    tokenizer_of,
    trim_generated,
)

if TYPE_CHECKING:
    from PIL import Image

    from engine.runtimes.base import Runner

ImageInput = "LoadedImage | Image.Image | str | os.PathLike"


# -- model families ----------------------------------------------------------------------------


def _prompt_ids(processor: Any, prompt: str) -> list[int]:
    return list(tokenizer_of(processor)(prompt, add_special_tokens=False)["input_ids"])


def _images_only(processor: Any, images: list, prompt: str | None) -> dict:
    return dict(processor(images=images, return_tensors="pt"))


def _ved_inputs(processor: Any, images: list, prompt: str | None) -> dict:
    """VisionEncoderDecoder: a prompt becomes forced decoder input after the start token."""
    inputs = _images_only(processor, images, None)
    if prompt:
        ids = [_prompt_ids(processor, prompt)] * len(images)
        if isinstance(inputs["pixel_values"], np.ndarray):  # a numpy processor (ONNX, Lite)
            inputs["decoder_prompt_ids"] = np.asarray(ids, dtype=np.int64)
        else:
            import torch

            inputs["decoder_prompt_ids"] = torch.tensor(ids)
    return inputs


def _ved_prompt_length(inputs: dict, model: Any) -> int:
    return 1 + (inputs["decoder_prompt_ids"].shape[1] if "decoder_prompt_ids" in inputs else 0)


def _blip_inputs(processor: Any, images: list, prompt: str | None) -> dict:
    if prompt:
        return dict(processor(images=images, text=[prompt] * len(images), return_tensors="pt"))
    return _images_only(processor, images, None)


def _blip_prompt_length(inputs: dict, model: Any) -> int:
    # BLIP's generate() drops the trailing [SEP] and swaps [CLS] for its [DEC] start token
    return inputs["input_ids"].shape[1] - 1 if "input_ids" in inputs else 1


def _git_inputs(processor: Any, images: list, prompt: str | None) -> dict:
    inputs = _images_only(processor, images, None)
    if prompt:
        import torch

        # GIT's documented prompting: [CLS] + prompt tokens, no [SEP] (the caption continues it)
        ids = [tokenizer_of(processor).cls_token_id] + _prompt_ids(processor, prompt)
        inputs["input_ids"] = torch.tensor([ids] * len(images))
    return inputs


def _decoder_only_prompt_length(inputs: dict, model: Any) -> int:
    return inputs["input_ids"].shape[1] if "input_ids" in inputs else 1


def _florence_inputs(processor: Any, images: list, prompt: str | None) -> dict:
    return dict(processor(text=[prompt or "<CAPTION>"] * len(images), images=images,
                          return_tensors="pt"))


def _generic_inputs(processor: Any, images: list, prompt: str | None) -> dict:
    if prompt:
        return dict(processor(images=images, text=[prompt] * len(images), return_tensors="pt"))
    return _images_only(processor, images, None)


def _generic_prompt_length(inputs: dict, model: Any) -> int:
    if getattr(model.config, "is_encoder_decoder", False):
        return 1
    return _decoder_only_prompt_length(inputs, model)


FLORENCE_TASKS = (
    "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>", "<OD>",
    "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", "<OCR_WITH_REGION>",
    "<CAPTION_TO_PHRASE_GROUNDING>", "<REFERRING_EXPRESSION_SEGMENTATION>",
    "<REGION_TO_SEGMENTATION>", "<OPEN_VOCABULARY_DETECTION>", "<REGION_TO_CATEGORY>",
    "<REGION_TO_DESCRIPTION>", "<REGION_TO_OCR>",
)

# config.model_type -> family; a model type registered twice is an error naming both.
FAMILIES: Registry[str, CaptionFamily] = Registry("captioner family")
for _family in (
    CaptionFamily("vision-encoder-decoder", _ved_inputs, _ved_prompt_length, prompt_in_text=True),
    CaptionFamily("blip", _blip_inputs, _blip_prompt_length, prompt_in_text=True,
                  eos_ids=lambda model: {int(model.config.text_config.sep_token_id)}),
    CaptionFamily("git", _git_inputs, _decoder_only_prompt_length, prompt_in_text=True),
    CaptionFamily("florence2", _florence_inputs, lambda inputs, model: 1,
                  default_prompt="<CAPTION>", text_tasks=FLORENCE_TASKS),
):
    FAMILIES.register(_family.name, _family)
GENERIC = CaptionFamily("generic", _generic_inputs, _generic_prompt_length)


def register_family(model_type: str, family: CaptionFamily, *,
                    replace: bool = False) -> CaptionFamily:
    """Add a captioner family for a model type (a plug-in's); a model type already taken
    raises DuplicateRegistrationError naming both."""
    return FAMILIES.register(model_type, family, replace=replace, stacklevel=2)


def family_for(model_type: str | None) -> CaptionFamily:
    """The family of a model type; any other captioner gets the generic one."""
    return FAMILIES.find(model_type or "", GENERIC)


def _model_type(runner: Runner) -> str | None:
    module = runner.module
    if module is not None:
        return getattr(module.config, "model_type", None)
    # ONNX captioners are encoder + text-decoder exports (sidecar output "seq2seq")
    return "vision-encoder-decoder"


# -- images ------------------------------------------------------------------------------------


def to_pil(image: Any) -> Image.Image:
    """A LoadedImage, PIL image or path as 8-bit RGB (EXIF orientation applied)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, (str, os.PathLike, Path)):
        from engine.media.image import read_image

        return read_image(image).rgb
    rgb = getattr(image, "rgb", None)
    if rgb is not None:
        return rgb
    raise UsageError(f"cannot caption a {type(image).__name__}; pass an image file or picture.")


# -- streaming ---------------------------------------------------------------------------------


def _streamer_base() -> type:
    from transformers.generation.streamers import BaseStreamer

    return BaseStreamer


def _make_streamer(stream: TokenStream) -> Any:
    class _Streamer(_streamer_base()):
        """transformers calls put(prompt ids) once, then put(next token per row) each step."""

        def __init__(self) -> None:
            self.seen_prompt = False

        def put(self, value: Any) -> None:
            if not self.seen_prompt:
                self.seen_prompt = True
                return
            stream.step(value.reshape(-1).tolist())

        def end(self) -> None:
            return None

    return _Streamer()


# -- the task ----------------------------------------------------------------------------------


def caption(runner: Runner, images: Sequence[Any], *, prompt: str | None = None,
            max_new_tokens: int = 30, num_beams: int = 1, batch_size: int = 8,
            on_token: TokenCallback | None = None) -> list[Caption]:
    """Caption each image. Greedy (num_beams=1) unless asked; deterministic either way.

    `prompt`: a text prefix (BLIP, GIT, VisionEncoderDecoder: the caption continues
    it and includes it) or a Florence-2 task token such as "<DETAILED_CAPTION>".
    `on_token(i, text)` is called after every new token of image i (greedy only; with
    beam search it is called once per image with the final text).
    """
    if max_new_tokens < 1:
        raise UsageError("max_new_tokens must be at least 1.")
    if runner.processor is None:
        raise UnsupportedModelError(
            f"{runner.card.name}: no processor/tokenizer was found with the model, so its "
            f"tokens cannot be turned into text. Re-download the model with its tokenizer files.")
    family = family_for(_model_type(runner))
    prompt = prompt if prompt is not None else family.default_prompt
    results: list[Caption] = []
    for start in range(0, len(images), max(1, batch_size)):
        chunk = list(images[start:start + batch_size])
        pils = [to_pil(image) for image in chunk]
        indices = list(range(start, start + len(chunk)))
        if runner.module is not None:
            results.extend(_caption_torch(runner, family, pils, indices, prompt=prompt,
                                          max_new_tokens=max_new_tokens, num_beams=num_beams,
                                          on_token=on_token))
        elif getattr(runner, "sessions", None):
            from engine.tasks.caption_onnx import caption_batch_onnx

            results.extend(caption_batch_onnx(runner, family, pils, indices, prompt=prompt,
                                              max_new_tokens=max_new_tokens, on_token=on_token))
        else:
            raise UnsupportedModelError(f"{runner.card.name}: this runner cannot generate text.")
    return results


def _generate(runner: Runner, inputs: dict, **kwargs: Any) -> Any:
    generate = getattr(runner, "generate", None)
    if generate is not None:
        return generate(inputs, **kwargs)
    import torch

    module = runner.module
    param = next(module.parameters())
    moved = {k: (v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device))
             for k, v in inputs.items()}
    with torch.inference_mode():
        return module.generate(**moved, **kwargs).cpu()


def _caption_torch(runner: Runner, family: CaptionFamily, pils: list, indices: list[int], *,
                   prompt: str | None, max_new_tokens: int, num_beams: int,
                   on_token: TokenCallback | None) -> list[Caption]:
    model = runner.module
    processor = runner.processor
    tokenizer = tokenizer_of(processor)
    inputs = family.build_inputs(processor, pils, prompt)
    prompt_len = family.prompt_length(inputs, model)
    eos_ids = family.eos_ids(model)
    decoder_prompt = inputs.pop("decoder_prompt_ids", None)
    if decoder_prompt is not None:  # VisionEncoderDecoder prompt: forced decoder prefix
        import torch

        start_id = model.generation_config.decoder_start_token_id
        start = torch.full((decoder_prompt.shape[0], 1), int(start_id), dtype=torch.long)
        inputs["decoder_input_ids"] = torch.cat([start, decoder_prompt], dim=1)
    prefixes = _text_prefixes(family, inputs, prompt_len, len(pils))
    stream = TokenStream(tokenizer, indices, eos_ids, prefixes, on_token)
    streaming = on_token is not None and num_beams == 1
    kwargs = _generate_kwargs(max_new_tokens, num_beams)
    if streaming:
        kwargs["streamer"] = _make_streamer(stream)
    sequences = _generate(runner, inputs, **kwargs)
    sequences = getattr(sequences, "sequences", sequences)
    pad_id = getattr(model.generation_config, "pad_token_id", None)
    results = []
    for row, (pil, seq) in enumerate(zip(pils, sequences.tolist())):
        new_ids = trim_generated(seq[prompt_len:], eos_ids, pad_id)
        text = tokenizer.decode(prefixes[row] + new_ids, skip_special_tokens=True).strip()
        if on_token is not None and not streaming:
            on_token(indices[row], text)
        results.append(Caption(text=text, token_ids=new_ids,
                               tokens=[tokenizer.decode([t]) for t in new_ids],
                               image_size=pil.size, prompt=prompt or ""))
    return results


def _text_prefixes(family: CaptionFamily, inputs: dict, prompt_len: int,
                   count: int) -> list[list[int]]:
    """Prompt token ids that are part of the caption text (BLIP/GIT/VED prefixes)."""
    if not family.prompt_in_text:
        return [[] for _ in range(count)]
    ids = inputs.get("decoder_input_ids", inputs.get("input_ids"))
    if ids is None:
        return [[] for _ in range(count)]
    ids = ids.tolist()
    return [row[:prompt_len] for row in ids]


def _generate_kwargs(max_new_tokens: int, num_beams: int) -> dict[str, Any]:
    # explicit greedy/beam settings override sampling defaults some hub configs ship
    return dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)


# -- Florence-2 tasks ---------------------------------------------------------------------------

FlorenceResult = "Caption | Detections | Segmentation"


def florence_task(runner: Runner, images: Sequence[Any], task: str, *,
                  text_input: str | None = None, max_new_tokens: int = 1024, num_beams: int = 1,
                  batch_size: int = 4) -> list[Caption | Detections | Segmentation]:
    """Run one Florence-2 task prompt; results in original-image pixel coordinates.

    Box tasks (<OD>, <DENSE_REGION_CAPTION>, <REGION_PROPOSAL>, <OCR_WITH_REGION>,
    <CAPTION_TO_PHRASE_GROUNDING>) give Detections (score 1.0: Florence-2 has none);
    polygon tasks (<REFERRING_EXPRESSION_SEGMENTATION>, <REGION_TO_SEGMENTATION>) give
    an instance Segmentation; text tasks give a Caption.
    """
    module = runner.module
    if module is None or getattr(module.config, "model_type", None) != "florence2":
        raise UnsupportedModelError(f"{runner.card.name}: {task} is a Florence-2 task prompt; "
                                    f"pick a Florence-2 model.")
    if task not in FLORENCE_TASKS:
        raise UsageError(f"unknown Florence-2 task {task!r}; known: {', '.join(FLORENCE_TASKS)}")
    processor = runner.processor
    prompt = task + (text_input or "")
    text_config = getattr(module.config, "text_config", None)
    max_positions = getattr(text_config, "max_position_embeddings", None)
    if max_positions:  # never generate past the decoder's position table
        max_new_tokens = min(max_new_tokens, int(max_positions) - 2)
    results: list[Caption | Detections | Segmentation] = []
    for start in range(0, len(images), max(1, batch_size)):
        pils = [to_pil(image) for image in images[start:start + batch_size]]
        inputs = _florence_inputs(processor, pils, prompt)
        sequences = _generate(runner, inputs, **_generate_kwargs(max_new_tokens, num_beams))
        sequences = getattr(sequences, "sequences", sequences)
        texts = processor.batch_decode(sequences, skip_special_tokens=False)
        for pil, seq, text in zip(pils, sequences.tolist(), texts):
            parsed = processor.post_process_generation(text, task=task, image_size=pil.size)[task]
            results.append(florence_result(parsed, pil.size, task=task, prompt=prompt,
                                           token_ids=seq[1:]))
    return results


def florence_result(parsed: Any, image_size: tuple[int, int], *, task: str, prompt: str = "",
                    token_ids: list[int] | None = None) -> Caption | Detections | Segmentation:
    """Turn one `post_process_generation` answer into our result types."""
    if isinstance(parsed, str):
        return Caption(text=parsed, token_ids=list(token_ids or []), image_size=image_size,
                       prompt=prompt)
    boxes: list[Box] = []
    if "quad_boxes" in parsed:  # OCR with regions: axis-aligned hull of each quadrilateral
        for quad, label in zip(parsed["quad_boxes"], parsed["labels"]):
            xs, ys = quad[0::2], quad[1::2]
            boxes.append(Box(min(xs), min(ys), max(xs), max(ys), label=label, score=1.0))
    box_labels = parsed.get("bboxes_labels", parsed.get("labels", []))
    scores = parsed.get("scores")
    for i, (bbox, label) in enumerate(zip(parsed.get("bboxes", []), box_labels)):
        score = float(scores[i]) if scores else 1.0
        boxes.append(Box(*(float(v) for v in bbox), label=label, score=score))
    polygons = parsed.get("polygons", [])
    # polygon tasks answer a Segmentation even when empty; open-vocabulary detection
    # answers boxes or polygons, whichever the model produced
    if polygons or ("polygons" in parsed and "bboxes" not in parsed):
        poly_labels = parsed.get("polygons_labels", parsed.get("labels", []))
        instances = [SegmentInstance(mask=rasterize_polygons(polys, image_size), label=label,
                                     label_id=i, score=1.0, segment_id=i + 1)
                     for i, (polys, label) in enumerate(zip(polygons, poly_labels))]
        return Segmentation(kind="instance", image_size=image_size, instances=instances)
    labels = {i: name for i, name in enumerate(dict.fromkeys(b.label for b in boxes))}
    ids = {name: i for i, name in labels.items()}
    for box in boxes:
        box.label_id = ids[box.label]
    return Detections(boxes=boxes, image_size=image_size, labels=labels)


def rasterize_polygons(polygons: list[list[float]], image_size: tuple[int, int]) -> np.ndarray:
    """Union of polygons [x0, y0, x1, y1, …] as a bool (H, W) mask."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", image_size, 0)
    draw = ImageDraw.Draw(mask)
    for poly in polygons:
        if len(poly) >= 6:
            draw.polygon([(float(x), float(y)) for x, y in zip(poly[0::2], poly[1::2])], fill=1)
    return np.asarray(mask, dtype=bool)
