"""Capture per-layer, per-head attention probabilities from transformers models.

Fused attention kernels (SDPA, flash) return no weights, so capture runs with
eager attention: a model loaded otherwise is switched for the run, switched back
afterwards, and the result's notes say so. Weights come from transformers' own
`output_attentions=True` (no hooks into private attention code, so nothing breaks
when kernels change).

Token-merged models (`speed` balanced/fast, engine.runtimes.token_merging) carry a
`token_merging` attribute: capture traces which input tokens each merged token holds and maps
every layer back to the N input tokens (`_Unmerge`), so the maps still cover the patch grid.
"""
from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.explain.layout import layout_from_config, vision_config
from engine.explain.maps import TokenLayout

if TYPE_CHECKING:
    import torch


@dataclass
class Captured:
    attentions: np.ndarray  # float32 (layers, heads, N, N)
    layout: TokenLayout
    features: np.ndarray | None = None  # float32 (N, D): last hidden state (after the final norm)
    layer_features: np.ndarray | None = None  # float32 (layers, N, D): each block's output tokens
    keys: np.ndarray | None = None  # float32 (N, D): the last attention layer's key projection
    gradients: np.ndarray | None = None  # float32 (layers, heads, N, N): d score / d attention
    logits: np.ndarray | None = None
    target: int | None = None
    notes: list[str] = field(default_factory=list)


_CONFIGS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _configs(model: Any) -> list[Any]:
    """Every distinct config object the model's modules read (composite models have several);
    cached per model because walking the module tree costs more than a tiny forward."""
    try:
        return _CONFIGS[model]
    except (KeyError, TypeError):
        pass
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    found = list(seen.values())
    try:
        _CONFIGS[model] = found
    except TypeError:
        pass
    return found


def _implementation(config: Any) -> Any:
    return getattr(config, "_attn_implementation_internal", None) or getattr(config, "_attn_implementation", None)


@contextlib.contextmanager
def eager_attention(model: Any, notes: list[str]) -> Iterator[None]:
    """Run the block with eager attention; switch back afterwards. Always says so.

    transformers' attention layers read `config._attn_implementation` on every call, so
    flipping that flag on each config (what set_attn_implementation ends up doing, minus
    its kernel checks) is enough, and cheap enough to do per image.
    """
    configs = _configs(model)
    before = [(config, _implementation(config)) for config in configs]
    non_eager = sorted({str(impl) for _, impl in before if impl not in ("eager", None)})
    if not non_eager:
        yield
        return
    for config, _ in before:
        config._attn_implementation_internal = "eager"
    if any(getattr(config, "_attn_implementation", "eager") != "eager" for config in configs):
        _restore(before)
        raise RuntimeError(
            f"{type(model).__name__} could not be switched to eager attention; load it with "
            f"attn_implementation='eager' (engine.runtimes.load_runner(card, attention=True))."
        )
    notes.append(
        f"{type(model).__name__} was loaded with {', '.join(non_eager)} attention, which returns no attention "
        f"weights; switched to eager attention for this run and back afterwards."
    )
    try:
        yield
    finally:
        _restore(before)


def _restore(before: list[tuple[Any, Any]]) -> None:
    for config, impl in before:
        config._attn_implementation_internal = impl


def vision_tower(model: Any) -> tuple[Any, Any]:
    """(module, config) of the image encoder whose self-attention we map."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in ("clip", "siglip", "siglip2", "blip") and hasattr(model, "vision_model"):
        return model.vision_model, vision_config(model.config)
    if model_type == "vision-encoder-decoder":
        return model.encoder, model.config.encoder
    if model_type == "git":
        return model.git.image_encoder, model.config.vision_config
    return model, model.config


def _accepts(module: Any, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _config_image_size(config: Any) -> tuple[int, int] | None:
    size = getattr(config, "image_size", None)
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def forward_kwargs(module: Any, config: Any, pixel_values: torch.Tensor, notes: list[str]) -> dict[str, Any]:
    """Extra forward arguments: interpolate position embeddings for other input sizes."""
    kwargs: dict[str, Any] = {}
    size = tuple(pixel_values.shape[-2:])
    native = _config_image_size(config)
    if native is not None and size != native and _accepts(module, "interpolate_pos_encoding"):
        kwargs["interpolate_pos_encoding"] = True
        notes.append(
            f"input {size[0]}×{size[1]} differs from the trained {native[0]}×{native[1]}: "
            f"position embeddings interpolated"
        )
    return kwargs


def _final_features(outputs: Any, tower: Any) -> torch.Tensor | None:
    hidden = getattr(outputs, "last_hidden_state", None)
    if hidden is None:
        states = getattr(outputs, "hidden_states", None)
        hidden = states[-1] if states else None
        if hidden is not None:  # classification heads: apply the tower's final norm if it has one
            for name in ("layernorm", "post_layernorm", "norm"):
                base = getattr(tower, getattr(tower, "base_model_prefix", ""), tower)
                norm = getattr(base, name, None)
                if norm is not None and callable(norm):
                    hidden = norm(hidden)
                    break
    return hidden


def _score(outputs: Any, features: torch.Tensor | None, layout: TokenLayout, target: int | None,
           notes: list[str]) -> tuple[torch.Tensor, int | None]:
    logits = getattr(outputs, "logits", None)
    if logits is not None and logits.dim() == 2:
        index = int(logits[0].argmax()) if target is None else int(target)
        if not 0 <= index < logits.shape[-1]:
            raise ValueError(f"target class {index} out of range: the model has {logits.shape[-1]} classes")
        return logits[0, index], index
    if features is None:
        raise ValueError("relevance needs logits or features to differentiate; this model gives neither")
    token = layout.cls_index if layout.cls_index is not None else None
    vector = features[0, token] if token is not None else features[0, layout.patch_slice].mean(0)
    if target is not None:
        notes.append(f"model has no classification head: target {target} read as feature channel {target}")
        return vector[int(target)], int(target)
    which = "CLS feature" if token is not None else "mean patch feature"
    notes.append(f"model has no classification head: relevance of the {which}'s squared norm")
    return (vector * vector.detach()).sum() / 2, None


def key_module(tower: Any) -> Any:
    """The last attention layer's key projection (a Linear named `key` / `k_proj`), or None."""
    import torch

    found = None
    for name, module in tower.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("key", "k_proj") and isinstance(module, torch.nn.Linear):
            found = module
    return found


def capture(
    model: Any,
    pixel_values: torch.Tensor,
    *,
    with_gradients: bool = False,
    target: int | None = None,
    notes: list[str] | None = None,
) -> Captured:
    """Run the vision tower once with attentions (and gradients for relevance), the
    per-layer tokens and the last layer's keys."""
    notes = [] if notes is None else notes
    tower, config = vision_tower(model)
    param = next(tower.parameters(), None)
    if param is not None:
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
    kwargs = forward_kwargs(tower, vision_config(config), pixel_values, notes)
    keys: list[Any] = []
    key_proj = key_module(tower)
    hook = None if key_proj is None else key_proj.register_forward_hook(
        lambda _m, _i, out: keys.append(out.detach()))
    merging = getattr(model, "token_merging", None) or getattr(tower, "token_merging", None)
    try:
        with eager_attention(model, notes), (
                merging.tracing() if merging is not None else contextlib.nullcontext()) as traced:
            outputs, attentions, layout, features, gradients, chosen, logits = _forward(
                tower, config, pixel_values, kwargs, with_gradients, target, notes)
    finally:
        if hook is not None:
            hook.remove()
    unmerge = _Unmerge(None if traced is None else traced.trace, notes)
    stacked = np.stack([unmerge.attention(i, a[0].detach().float().cpu().numpy())
                        for i, a in enumerate(attentions)])
    if gradients is not None:
        gradients = np.stack([unmerge.gradient(i, g) for i, g in enumerate(gradients)])
    states = getattr(outputs, "hidden_states", None)
    layer_features = None
    if states and len(states) > 1:
        layer_features = np.stack([unmerge.tokens(i + 1, h[0].detach().float().cpu().numpy())
                                   for i, h in enumerate(states[1:])])
    key_array = None
    if keys and keys[-1].dim() == 3:
        key_array = unmerge.tokens(len(attentions) - 1, keys[-1][0].float().cpu().numpy())
        if key_array.shape[0] != stacked.shape[-1]:
            key_array = None
    return Captured(
        attentions=stacked,
        layout=layout,
        features=None if features is None else unmerge.tokens(
            -1, features[0].detach().float().cpu().numpy()),
        layer_features=layer_features,
        keys=key_array,
        gradients=gradients,
        logits=None if logits is None else logits[0].detach().float().cpu().numpy(),
        target=chosen,
        notes=notes,
    )


class _Unmerge:
    """Layer tensors of a token-merged forward, back on the N input tokens (identity when the
    model merges nothing). Attention A (n × n) at layer l becomes Sᵀ·A·diag(1/size)·S with S the
    layer's 0/1 source matrix: each input token takes the row of the token it was merged into,
    and the attention a merged token receives is shared equally by its members (rows still sum
    to 1). Gradients map as Sᵀ·G·S, token features as Sᵀ·X (every patch gets its token's)."""

    def __init__(self, trace: Any, notes: list[str]) -> None:
        self.trace = trace
        counts = [] if trace is None else trace.tokens_per_layer
        if counts and counts[0] != counts[-1]:
            notes.append(f"token merging: {counts[0]} tokens in, {counts[-1]} out of the last layer; "
                         f"each layer's attention is mapped back onto the {counts[0]} input tokens "
                         f"(a merged token's attention shared by the patches it holds)")

    def attention(self, layer: int, attention: np.ndarray) -> np.ndarray:
        return attention if self.trace is None else self.trace.attention_to_tokens(layer, attention)

    def gradient(self, layer: int, gradient: np.ndarray) -> np.ndarray:
        return gradient if self.trace is None else self.trace.gradient_to_tokens(layer, gradient)

    def tokens(self, index: int, tokens: np.ndarray) -> np.ndarray:
        """Tokens at the input of layer `index` (-1 or the layer count: the encoder's output)."""
        return tokens if self.trace is None else self.trace.features_to_tokens(index, tokens)


def _forward(tower: Any, config: Any, pixel_values: Any, kwargs: dict[str, Any], with_gradients: bool,
             target: int | None, notes: list[str]) -> tuple[Any, ...]:
    import torch

    grad_context = torch.enable_grad() if with_gradients else torch.no_grad()
    with grad_context:
        outputs = tower(
            pixel_values=pixel_values,
            output_attentions=True,
            # heads (…ForImageClassification) return no last_hidden_state: take the last hidden state
            output_hidden_states=True,  # per-layer tokens (similarity per layer, artifacts)
            return_dict=True,
            **kwargs,
        )
        attentions = outputs.attentions
        if not attentions:
            raise RuntimeError(
                f"{type(tower).__name__} returned no attention weights even with eager attention."
            )
        n = attentions[0].shape[-1]
        layout = layout_from_config(config, tuple(pixel_values.shape[-2:]), num_tokens=n)
        features = _final_features(outputs, tower)
        gradients = None
        chosen = None
        logits = getattr(outputs, "logits", None)
        if with_gradients:
            score, chosen = _score(outputs, features, layout, target, notes)
            grads = torch.autograd.grad(score, list(attentions), allow_unused=True)
            gradients = [  # per layer: shapes differ when tokens merge (stacked once unmerged)
                np.zeros(tuple(a.shape[1:]), np.float32) if g is None
                else g[0].detach().float().cpu().numpy()
                for a, g in zip(attentions, grads)
            ]
    return outputs, attentions, layout, features, gradients, chosen, logits
