"""Captioners: one cross-attention map per generated token (word → region).

The caption is generated greedily with the model's own `generate`; the maps then
come from one teacher-forced forward over the generated sequence. With causal
masking that forward computes, for each position, exactly the attention the
incremental greedy step computed (the tests check it against `generate`'s own
`cross_attentions`), in one pass instead of a hook per step.

- VisionEncoderDecoder (ViT-GPT2, …): decoder cross-attention over encoder tokens.
- BLIP: the text decoder's cross-attention over the vision tower's tokens.
- GIT: no cross-attention module: text tokens attend to the image tokens inside the
  decoder's self-attention; the text→image block of that attention is the map.
"""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from engine.explain import methods as m
from engine.explain.geometry import grid_to_image
from engine.explain.layout import layout_from_config
from engine.explain.maps import AttentionMaps, TokenMap


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", None) or (processor if hasattr(processor, "convert_ids_to_tokens")
                                                     else None)


def token_texts(processor: Any, ids: list[int]) -> list[str]:
    """Decoded text of each token on its own (what the GUI shows under each map)."""
    tokenizer = _tokenizer(processor)
    if tokenizer is None:
        return [f"<{i}>" for i in ids]
    return [tokenizer.decode([i]) for i in ids]


def _start_ids(model: Any, processor: Any, model_type: str, prompt: str | None, notes: list[str]) -> Any:
    import torch

    if prompt is None:
        return None
    tokenizer = _tokenizer(processor)
    if tokenizer is None:
        notes.append("no tokenizer for the prompt: generating without it")
        return None
    if model_type == "blip":
        ids = tokenizer(prompt, return_tensors="pt").input_ids  # [CLS] prompt [SEP]; generate drops [SEP]
        return ids
    if model_type == "git":
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        return torch.tensor([[tokenizer.cls_token_id] + list(ids)])
    notes.append(f"{model_type}: prompts are not supported; generating without one")
    return None


def _cross_attentions(model: Any, model_type: str, pixel_values: Any, sequence: Any, kwargs: dict) -> tuple:
    """Per layer (1, heads, T, encoder tokens), rows = decoder positions of sequence[:, :-1]."""
    inputs = sequence[:, :-1]
    if model_type == "vision-encoder-decoder":
        out = model(pixel_values=pixel_values, decoder_input_ids=inputs, output_attentions=True, return_dict=True)
        return tuple(out.cross_attentions), int(out.encoder_last_hidden_state.shape[1])
    if model_type == "blip":
        image_embeds = model.vision_model(pixel_values=pixel_values, **kwargs).last_hidden_state
        out = model.text_decoder(input_ids=inputs, encoder_hidden_states=image_embeds, output_attentions=True,
                                 return_dict=True)
        return tuple(out.cross_attentions), int(image_embeds.shape[1])
    if model_type == "git":
        out = model(pixel_values=pixel_values, input_ids=inputs, output_attentions=True, return_dict=True)
        total = out.attentions[0].shape[-1]
        image_tokens = total - inputs.shape[1]
        return tuple(a[:, :, image_tokens:, :image_tokens] for a in out.attentions), image_tokens
    raise ValueError(f"'{model_type}' is not a supported captioner (VisionEncoderDecoder, BLIP, GIT)")


def caption_maps(model: Any, processor: Any, image: Any, *, options: Any, max_new_tokens: int = 20,
                 prompt: str | None = None) -> AttentionMaps:
    import torch

    from engine.explain.geometry import pixel_inputs
    from engine.explain.torch_capture import eager_attention, forward_kwargs, vision_tower

    notes = options.notes
    model_type = getattr(model.config, "model_type", "")
    pixel_values, geometry = pixel_inputs(processor, image, notes)
    tower, tower_config = vision_tower(model)
    param = next(model.parameters())
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
    kwargs = forward_kwargs(tower, tower_config, pixel_values, notes)
    start = _start_ids(model, processor, model_type, prompt, notes)
    generate_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    if start is not None:
        generate_kwargs["input_ids"] = start.to(param.device)
    merging = getattr(model, "token_merging", None)  # speed balanced/fast: a token-merged encoder
    with eager_attention(model, notes), torch.no_grad(), (
            merging.tracing() if merging is not None else contextlib.nullcontext()) as traced:
        # only BLIP's generate takes interpolate_pos_encoding; the others' processors give native sizes
        extra = kwargs if model_type == "blip" else {}
        sequence = model.generate(pixel_values=pixel_values, **generate_kwargs, **extra)
        if model_type == "blip" and start is not None:
            prefix = start.shape[1] - 1  # BLIP's generate swaps [CLS] for [DEC] and drops [SEP]
        elif start is not None:
            prefix = start.shape[1]
        else:
            prefix = 1  # the decoder start / BOS token
        cross, encoder_tokens = _cross_attentions(model, model_type, pixel_values, sequence, extra)
    attention = np.stack([a[0].detach().float().cpu().numpy() for a in cross])  # (L, H, T-1, Nenc)
    trace = None if traced is None else traced.trace
    if trace is not None:  # merged encoder tokens: each one's attention shared by its patches
        attention = trace.columns_to_tokens(-1, attention)
        notes.append(f"token merging: the decoder attends to {encoder_tokens} merged encoder tokens, "
                     f"mapped back onto the {trace.num_tokens} input tokens")
        encoder_tokens = trace.num_tokens
    layout = layout_from_config(tower_config, tuple(pixel_values.shape[-2:]), num_tokens=encoder_tokens)
    generated = [int(t) for t in sequence[0, prefix:].tolist()]
    texts = token_texts(processor, generated)
    if options.layer is None:
        per_layer = attention.mean(axis=0)  # (H, T-1, Nenc)
        notes.append(f"cross-attention averaged over all {attention.shape[0]} decoder layers")
    else:
        per_layer = attention[options.layer]
    fused = m.select_heads(per_layer, options.head, options.head_fusion)  # (T-1, Nenc)
    valid = geometry.valid_mask()
    per_token: list[TokenMap] = []
    for offset, (token_id, text) in enumerate(zip(generated, texts)):
        row = fused[prefix + offset - 1]  # the query that predicted this token
        grid = layout.to_grid(row).astype(np.float32)
        heat = grid_to_image(m.normalize01(grid), layout, geometry)
        per_token.append(TokenMap(label=text, grid_map=grid, heatmap=heat, token_id=token_id, index=offset))
    if layout.special:
        notes.append(f"special encoder tokens ({', '.join(layout.special)}) left out of the maps")
    mean_grid = (np.mean([t.grid_map for t in per_token], axis=0) if per_token
                 else np.zeros(layout.grid, np.float32))
    # contact sheet: every decoder layer × head, averaged over the generated tokens
    rows = attention[:, :, prefix - 1:, :].mean(axis=2)
    head_maps = layout.to_grid(rows).astype(np.float32)
    caption = _tokenizer(processor).decode(generated, skip_special_tokens=True) if _tokenizer(processor) else ""
    return AttentionMaps(
        method="cross_attention",
        heatmap=grid_to_image(m.normalize01(mean_grid), layout, geometry),
        grid_map=mean_grid.astype(np.float32),
        image_size=geometry.original_size,
        layout=layout,
        attentions=attention.astype(np.float32),
        head_maps=head_maps,
        valid=valid,
        per_token=per_token,
        notes=notes,
        params={"layer": options.layer, "head": options.head, "head_fusion": options.head_fusion,
                    "caption": caption, "token_ids": generated, "prompt_tokens": prefix,
                    "attentions": "cross: (decoder layers, heads, decoder positions, encoder tokens)"},
    )
