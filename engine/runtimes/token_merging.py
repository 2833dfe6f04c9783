"""Token merging (ToMe: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) for the
ViT-family encoders of transformers models: the `speed` setting (off | balanced | fast).

Training-free. In every encoder layer, between the attention and the MLP, the tokens are
split into two alternating sets A and B (the CLS, distillation and register tokens are kept
out of both and never merge); each A token's edge goes to its most similar B token (cosine of
the layer's keys, averaged over the heads), and the r most similar edges are merged: the B
token becomes the size-weighted average of itself and the A tokens that chose it. Each token
carries its size (how many input patches it holds); attention adds log(size) to its logits
(proportional attention), so a merged token gets the attention its patches would have had.

    apply_token_merging(model, "fast")   # patches the loaded model's encoder layers in place

Only the layers' classes are swapped (for subclasses with a merging forward), so the model's
own output capture (`output_attentions`, `output_hidden_states`) still sees every layer; with
r = 0 the patched layers compute exactly what the originals do.

Attention maps back on the patch grid. `TokenMerging.tracing()` records, per layer, which
input tokens each current token holds: a 0/1 source matrix S (tokens × N input tokens, one 1
per column; its row sums are the sizes). `MergeTrace` maps a layer's tensors back to the N
input tokens: an attention A (n × n) becomes Sᵀ·A·diag(1/size)·S (every input token takes the
attention row of the token it was merged into, and the attention a merged token receives is
shared equally by its members, so each row still sums to 1); token features become Sᵀ·X
(every input token gets its merged token's feature). engine.explain uses it duck-typed (the
`token_merging` attribute of the module), so it never imports this module.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.errors import UnsupportedModelError
from engine.registry import Registry
from engine.vocabulary import SPEED_MODES

# speed -> the encoder's FLOPs reduction it aims at; r per layer is the smallest that reaches it
# (`tokens_per_layer`). The targets are set a little above the throughput wanted (≈1.4× and ≈2×),
# since merging costs some (the smaller matmuls run less efficiently, the patch embedding is
# not reduced): ViT-B/16 at 224 gets r = 10 and 17, measured 1.44× and ≈2× (single-thread CPU
# time; tests/benchmarks/bench_token_merging.py prints the figures of the machine it runs on).
TARGET_SPEEDUP: dict[str, float] = dict(zip(SPEED_MODES, (1.0, 1.45, 2.1), strict=True))


def encoder_flops(tokens: int, protected: int, layers: int, width: int, mlp_width: int,
                  r: int) -> float:
    """Multiply-adds of the encoder layers when each merges r tokens: q, k, v, o projections
    and the two attention products on the layer's input tokens, the MLP on the merged ones."""
    total, n = 0.0, tokens
    for _ in range(layers):
        total += 4 * width * width * n + 2 * n * n * width
        n -= max(0, min(r, (n - protected) // 2))
        total += 2 * width * mlp_width * n
    return total


def tokens_per_layer(speed: str, *, tokens: int, protected: int, layers: int, width: int,
                     mlp_width: int) -> int:
    """r: the fewest tokens per layer whose merging cuts `encoder_flops` by the speed's target."""
    if speed not in TARGET_SPEEDUP:
        raise UnsupportedModelError(f"speed '{speed}' is not one of {', '.join(TARGET_SPEEDUP)}.")
    target = TARGET_SPEEDUP[speed]
    most = max(0, (tokens - protected) // 2)
    if target <= 1.0:
        return 0
    full = encoder_flops(tokens, protected, layers, width, mlp_width, 0)
    for r in range(1, most + 1):
        if full / encoder_flops(tokens, protected, layers, width, mlp_width, r) >= target:
            return r
    return most


# -- bipartite soft matching ---------------------------------------------------------------------


@dataclass(frozen=True)
class Matching:
    """Which tokens one layer merges. Indices (batch, k, 1) into the A set (tokens p, p+2, …
    after the `protected` prefix) and the B set (p+1, p+3, …)."""

    protected: int
    unmerged: torch.Tensor  # A tokens kept, in their original order
    merged: torch.Tensor  # A tokens merged away
    targets: torch.Tensor  # the B token each merged A token goes into

    @property
    def r(self) -> int:
        return int(self.merged.shape[1])

    def merge(self, x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        """(batch, n, C) -> (batch, n - r, C): prefix, kept A tokens, then the B tokens with
        the merged A tokens reduced into them (`mode`: "sum", "amax", … of scatter_reduce)."""
        prefix, rest = x[:, :self.protected], x[:, self.protected:]
        a, b = rest[:, ::2], rest[:, 1::2]
        batch, _, channels = a.shape
        kept = a.gather(1, self.unmerged.expand(batch, -1, channels))
        moved = a.gather(1, self.merged.expand(batch, -1, channels))
        b = b.scatter_reduce(1, self.targets.expand(batch, -1, channels), moved, reduce=mode)
        return torch.cat([prefix, kept, b], dim=1)


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 1) -> Matching | None:
    """ToMe's matching on `metric` (batch, n, C): the r most similar A→B edges, at most half the
    unprotected tokens; None when nothing merges."""
    r = min(r, (metric.shape[1] - protected) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        metric = metric[:, protected:]
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]
        scores = a @ b.transpose(-1, -2)
        best, best_b = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)[..., None]
        unmerged = order[:, r:].sort(dim=1).values
        merged = order[:, :r]
        targets = best_b[..., None].gather(1, merged)
    return Matching(protected, unmerged, merged, targets)


def merge_weighted(matching: Matching, x: torch.Tensor,
                   size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average of the merged tokens, and the new sizes (batch, n - r, 1)."""
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = matching.merge(x * size, mode="sum")
    size = matching.merge(size, mode="sum")
    return x / size, size


# -- what each family's layer looks like ------------------------------------------------------------


@dataclass(frozen=True)
class EncoderBlock:
    """One transformers layer class, split where ToMe merges: after the attention's residual
    add, before the MLP's norm."""

    layer_class: str
    attention_half: Callable[[Any, torch.Tensor, Any, dict], torch.Tensor]
    mlp_half: Callable[[Any, torch.Tensor], torch.Tensor]


def _vit_attention(layer: Any, x: torch.Tensor, mask: Any, kwargs: dict) -> torch.Tensor:
    out, _ = layer.attention(layer.layernorm_before(x), mask, **kwargs)
    return layer.dropout(out) + x


def _vit_mlp(layer: Any, x: torch.Tensor) -> torch.Tensor:
    return layer.dropout(layer.mlp(layer.layernorm_after(x))) + x


def _dinov2_attention(layer: Any, x: torch.Tensor, mask: Any, kwargs: dict) -> torch.Tensor:
    out, _ = layer.attention(layer.norm1(x), attention_mask=mask, **kwargs)
    return layer.drop_path(layer.layer_scale1(out)) + x


def _dinov2_mlp(layer: Any, x: torch.Tensor) -> torch.Tensor:
    return layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x)))) + x


BLOCKS: Registry[str, EncoderBlock] = Registry("token-merging encoder layer")
for _block in (
    EncoderBlock("ViTLayer", _vit_attention, _vit_mlp),
    EncoderBlock("DeiTLayer", _vit_attention, _vit_mlp),
    EncoderBlock("Dinov2Layer", _dinov2_attention, _dinov2_mlp),
    EncoderBlock("Dinov2WithRegistersLayer", _dinov2_attention, _dinov2_mlp),
):
    BLOCKS.register(_block.layer_class, _block)

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")  # take proportional attention as an additive mask


# -- the per-forward state ---------------------------------------------------------------------------


@dataclass
class MergeTrace:
    """Source matrices of one encoder forward: `sources[l]` (batch, n_l, N) is what each token
    at the input of layer l holds (sources[0] is the identity, sources[-1] the output's)."""

    sources: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.sources[0].shape[-1])

    @property
    def tokens_per_layer(self) -> list[int]:
        """Token count at the input of each layer, then at the output."""
        return [int(s.shape[1]) for s in self.sources]

    def source(self, index: int, item: int = 0) -> np.ndarray:
        """(n, N) float32 0/1: row t marks the input tokens that token t holds."""
        return self.sources[index][item].detach().float().cpu().numpy()

    def attention_to_tokens(self, layer: int, attention: np.ndarray, item: int = 0) -> np.ndarray:
        """Layer `layer`'s attention (..., n, n) as (..., N, N): Sᵀ·A·diag(1/size)·S."""
        s = self.source(layer, item)
        return (s.T @ attention @ (s / s.sum(axis=1, keepdims=True))).astype(np.float32)

    def gradient_to_tokens(self, layer: int, gradient: np.ndarray, item: int = 0) -> np.ndarray:
        """d score / d attention (..., n, n) as (..., N, N): Sᵀ·G·S (the chain rule through
        the column sums that `attention_to_tokens` inverts)."""
        s = self.source(layer, item)
        return (s.T @ gradient @ s).astype(np.float32)

    def columns_to_tokens(self, index: int, weights: np.ndarray, item: int = 0) -> np.ndarray:
        """Attention onto the tokens of `sources[index]` (..., n) as (..., N): each merged token's
        share split equally among the input tokens it holds (cross-attention onto the encoder)."""
        s = self.source(index, item)
        return (weights @ (s / s.sum(axis=1, keepdims=True))).astype(np.float32)

    def features_to_tokens(self, index: int, features: np.ndarray, item: int = 0) -> np.ndarray:
        """Token features (n, D) at `sources[index]` as (N, D): Sᵀ·X."""
        return (self.source(index, item).T @ features).astype(np.float32)


@dataclass
class _Run:
    """One encoder forward in progress (thread-local: a cached model may serve two threads)."""

    schedule: list[int]
    trace: MergeTrace | None
    size: torch.Tensor | None = None
    source: torch.Tensor | None = None
    key: torch.Tensor | None = None
    layer: int = 0


class TokenMerging:
    """The merging state of one patched encoder: its r per layer and protected prefix."""

    def __init__(self, tower: Any, layers: list[Any], *, r: int, protected: int, speed: str) -> None:
        self.speed = speed
        self.r = r
        self.protected = protected
        self.num_layers = len(layers)
        self.heads = [int(layer.attention.num_attention_heads) for layer in layers]
        self.originals = [(layer, type(layer)) for layer in layers]
        self.hooks: list[Any] = []
        self._local = threading.local()
        self.tower = tower
        self.owners: tuple[Any, ...] = ()  # modules that carry `token_merging` besides the tower

    # -- called by the patched modules --
    def begin(self, *_: Any) -> None:
        trace = MergeTrace() if getattr(self._local, "tracing", False) else None
        self._local.run = _Run([self.r] * self.num_layers, trace)
        if trace is not None:
            self._local.last_trace = trace

    def end(self, *_: Any) -> None:
        self._local.run = None

    def current(self) -> _Run | None:
        return getattr(self._local, "run", None)

    def keep_key(self, _module: Any, _inputs: Any, output: torch.Tensor) -> None:
        run = self.current()
        if run is not None and run.layer < self.num_layers and run.schedule[run.layer] > 0:
            run.key = output

    def layer_forward(self, layer: Any, block: EncoderBlock, hidden_states: torch.Tensor,
                      attention_mask: Any, kwargs: dict) -> torch.Tensor:
        run = self.current()
        if run is None:  # called outside the encoder's forward: plain layer
            x = block.attention_half(layer, hidden_states, attention_mask, kwargs)
            return block.mlp_half(layer, x)
        if run.trace is not None:
            if run.source is None:
                batch, n = hidden_states.shape[:2]
                run.source = torch.eye(n, device=hidden_states.device)[None].expand(batch, n, n)
            run.trace.sources.append(run.source)
        x = block.attention_half(layer, hidden_states, _proportional(attention_mask, run.size), kwargs)
        index, run.layer = run.layer, run.layer + 1
        key, run.key = run.key, None
        if key is not None:
            batch, n = key.shape[:2]
            metric = key.view(batch, n, self.heads[index], -1).mean(dim=2)
            matching = bipartite_soft_matching(metric, run.schedule[index], self.protected)
            if matching is not None:
                if run.source is not None:
                    run.source = matching.merge(run.source, mode="amax")
                x, run.size = merge_weighted(matching, x, run.size)
        if run.trace is not None and run.layer == self.num_layers:
            run.trace.sources.append(run.source)
        return block.mlp_half(layer, x)

    # -- used by engine.explain (duck-typed) --
    @contextlib.contextmanager
    def tracing(self) -> Iterator[_TraceHandle]:
        """Record source matrices while the block runs; yields a handle whose `.trace` is the
        last encoder forward's MergeTrace (generate + a teacher-forced pass: the latter's)."""
        handle = _TraceHandle(self)
        before = getattr(self._local, "tracing", False)
        self._local.tracing, self._local.last_trace = True, None
        try:
            yield handle
        finally:
            self._local.tracing = before

    def last_trace(self) -> MergeTrace | None:
        return getattr(self._local, "last_trace", None)

    def describe(self) -> str:
        return (f"token merging ({self.speed}): {self.r} tokens merged per layer over "
                f"{self.num_layers} layers (ToMe, proportional attention)")

    def remove(self) -> None:
        """Undo the patch (the layers get their own classes back)."""
        for hook in self.hooks:
            hook.remove()
        for layer, cls in self.originals:
            layer.__class__ = cls
            del layer.token_merging
        for module in (self.tower, *self.owners):
            if getattr(module, "token_merging", None) is self:
                del module.token_merging


@dataclass
class _TraceHandle:
    merging: TokenMerging

    @property
    def trace(self) -> MergeTrace | None:
        return self.merging.last_trace()


def _proportional(mask: Any, size: torch.Tensor | None) -> Any:
    """The attention mask plus log(size) on each key (proportional attention); untouched while
    no token has merged, so r = 0 computes exactly what the unpatched layer does."""
    if size is None:
        return mask
    if mask is not None:
        raise UnsupportedModelError("token merging cannot combine with an attention mask over the "
                                    "image tokens; run with speed off.")
    return size.log()[:, None, None, :, 0].to(size.dtype)


_PATCHED: dict[type, type] = {}


def _patched_class(cls: type, block: EncoderBlock) -> type:
    """`cls` with a merging forward (a subclass, so `isinstance` and output capture still hold)."""
    found = _PATCHED.get(cls)
    if found is None:
        def forward(self: Any, hidden_states: torch.Tensor, attention_mask: Any = None,
                    **kwargs: Any) -> torch.Tensor:
            return self.token_merging.layer_forward(self, block, hidden_states, attention_mask, kwargs)

        found = type(f"TokenMerging{cls.__name__}", (cls,), {"forward": forward})
        _PATCHED[cls] = found
    return found


# -- patching a loaded model ---------------------------------------------------------------------------


def _prefix_tokens(tower: Any) -> int:
    """CLS, plus DeiT's distillation token and DINOv2's registers: never merged."""
    embeddings = tower.embeddings
    count = 1 if getattr(embeddings, "cls_token", None) is not None else 0
    count += getattr(embeddings, "distillation_token", None) is not None
    count += int(getattr(tower.config, "num_register_tokens", 0) or 0)
    return count


def _schedule_r(speed: str, tower: Any, layers: list[Any], protected: int) -> int:
    """r for `speed` from the encoder's own sizes (native input size: the token count the
    position embeddings were trained for)."""
    config = tower.config
    width = int(config.hidden_size)
    mlp = getattr(layers[0].mlp, "fc1", None) or getattr(layers[0].mlp, "up_proj", None)
    mlp_width = int(mlp.out_features) if mlp is not None else 4 * width
    tokens = int(tower.embeddings.patch_embeddings.num_patches) + protected
    return tokens_per_layer(speed, tokens=tokens, protected=protected, layers=len(layers),
                            width=width, mlp_width=mlp_width)


def encoder_towers(model: Any) -> list[tuple[Any, list[Any]]]:
    """(tower, its layers) for each ViT-family encoder in `model`: a module with `embeddings`
    (its forward starts one encoder pass) holding layers of the classes in BLOCKS."""
    found = []
    for module in model.modules():
        if getattr(module, "embeddings", None) is None:
            continue
        layers = [m for m in module.modules()
                  if type(m).__name__.removeprefix("TokenMerging") in BLOCKS]
        if layers:
            found.append((module, layers))
    return found


def apply_token_merging(model: Any, speed: str, *, r: int | None = None) -> TokenMerging | None:
    """Patch `model`'s ViT-family encoder to merge tokens at `speed` (or `r` per layer, for
    tests and benchmarks). "off" patches nothing and returns None. A model without such an
    encoder is refused with UnsupportedModelError naming the families that work."""
    if speed == "off" and r is None:
        return None
    if speed not in TARGET_SPEEDUP:
        raise UnsupportedModelError(f"speed '{speed}' is not one of {', '.join(TARGET_SPEEDUP)}.")
    towers = encoder_towers(model)
    if not towers:
        name = type(model).__name__
        raise UnsupportedModelError(
            f"speed '{speed}' (token merging) works on ViT, DeiT and DINOv2 encoders "
            f"(transformers layers {', '.join(BLOCKS)}); {name} has none. Run it with speed off.")
    if len(towers) > 1:
        raise UnsupportedModelError(f"{type(model).__name__} has {len(towers)} ViT encoders; token "
                                    f"merging patches models with one. Run it with speed off.")
    tower, layers = towers[0]
    if getattr(tower, "token_merging", None) is not None:
        raise UnsupportedModelError(f"{type(model).__name__} is already patched for token merging.")
    implementation = getattr(tower.config, "_attn_implementation", "eager") or "eager"
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise UnsupportedModelError(
            f"token merging needs eager or sdpa attention (proportional attention is an additive "
            f"mask); {type(model).__name__} runs {implementation}. Load it with sdpa or run with "
            f"speed off.")
    protected = _prefix_tokens(tower)
    per_layer = _schedule_r(speed, tower, layers, protected) if r is None else int(r)
    merging = TokenMerging(tower, layers, r=per_layer, protected=protected, speed=speed)
    for layer in layers:
        block = BLOCKS.get(type(layer).__name__)
        layer.__class__ = _patched_class(type(layer), block)
        layer.token_merging = merging
        merging.hooks.append(layer.attention.k_proj.register_forward_hook(merging.keep_key))
    merging.hooks.append(tower.register_forward_pre_hook(merging.begin))
    merging.hooks.append(tower.register_forward_hook(merging.end))
    merging.owners = (model,)
    tower.token_merging = merging
    model.token_merging = merging
    return merging


# -- the runner side: `load_runner(card, speed=…)` ------------------------------------------------------


def check_speed_runtime(card: Any, speed: str) -> None:
    """Before loading: `speed` is a known mode and the card runs on the torch path."""
    if speed not in TARGET_SPEEDUP:
        raise UnsupportedModelError(f"speed '{speed}' is not one of {', '.join(TARGET_SPEEDUP)}.")
    if speed != "off" and card.runtime != "transformers":
        raise UnsupportedModelError(
            f"Model '{card.id}': speed '{speed}' (token merging) works on transformers ViT, DeiT "
            f"and DINOv2 models run by torch; this model runs on {card.runtime}. Run it with "
            f"speed off.")


def apply_speed(runner: Any, speed: str) -> TokenMerging | None:
    """Patch a loaded runner's module for `speed`; the runner's notes say what it merges."""
    module = runner.module
    if module is None:
        raise UnsupportedModelError(f"Model '{runner.card.id}': speed '{speed}' needs a torch "
                                    f"module; this runner has none. Run it with speed off.")
    try:
        merging = apply_token_merging(module, speed)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"Model '{runner.card.id}': {exc}") from exc
    if merging is not None:
        runner.notes.append(merging.describe())
    return merging
