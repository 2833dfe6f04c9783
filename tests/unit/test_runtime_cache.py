"""RunnerCache: LRU by measured runner size against settings.runner_cache_mb."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.catalog.card import ModelCard, Source
from engine.runtimes import RunnerCache
from engine.settings import Settings

MB = 2**20


def onnx_model(folder: Path, name: str, width: int) -> ModelCard:
    """An ONNX linear layer of width*width floats (its file size is what the cache counts)."""
    path = folder / f"{name}.onnx"
    torch.onnx.export(
        torch.nn.Linear(width, width),
        (torch.rand(1, width),),
        str(path),
        dynamo=False,
        input_names=["pixel_values"],
        output_names=["logits"],
    )
    return ModelCard(
        id=name,
        name=name,
        tasks=("features",),
        runtime="onnx",
        source=Source.LOCAL,
        local_path=str(path),
    )


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> dict[str, ModelCard]:
    folder = tmp_path_factory.mktemp("cache-models")
    return {name: onnx_model(folder, name, 330) for name in ("a", "b", "c")}  # ~0.42 MB each


def test_lru_eviction_by_size(cards):
    cache = RunnerCache(settings=Settings(runner_cache_mb=1))
    assert cache.budget_bytes == MB
    a = cache.get_or_load(cards["a"], device="cpu")
    b = cache.get_or_load(cards["b"], device="cpu")
    size = Path(cards["a"].local_path).stat().st_size
    assert a.memory_bytes == size and 0.4 * MB < size < 0.5 * MB
    assert cache.total_bytes == a.memory_bytes + b.memory_bytes
    assert cache.get_or_load(cards["a"], device="cpu") is a  # hit; a is now most recent
    c = cache.get_or_load(cards["c"], device="cpu")  # 3 x 0.42 MB > 1 MB: evict b (LRU)
    assert [k[0] for k in cache] == ["a", "c"]
    assert [k[0] for k in cache.evictions] == ["b"]
    assert b.sessions == {}  # evicted runners are released
    assert cache.total_bytes == a.memory_bytes + c.memory_bytes <= cache.budget_bytes
    assert cache.get_or_load(cards["b"], device="cpu") is not b  # reloaded fresh
    assert [k[0] for k in cache] == ["c", "b"]


def test_keys_normalise_auto_and_separate_attention(cards):
    cache = RunnerCache(16)
    auto = cache.get_or_load(cards["a"])  # on this machine auto resolves like an explicit device
    explicit = cache.get_or_load(cards["a"], device=auto.placement.device)
    assert explicit is auto
    key = next(iter(cache))
    assert key == ("a", None, auto.placement.device, "fp32", False, "off")  # last: speed
    other = cache.get_or_load(cards["a"], attention=True)
    assert other is not auto and len(cache) == 2


def test_runner_bigger_than_budget_is_kept_until_the_next_load(cards):
    cache = RunnerCache(0)
    a = cache.get_or_load(cards["a"], device="cpu")
    assert next(iter(cache))[0] == "a" and a.sessions  # the job that asked still gets it
    cache.get_or_load(cards["b"], device="cpu")
    assert [k[0] for k in cache] == ["b"] and a.sessions == {}


def test_release_by_card_and_all(cards):
    cache = RunnerCache(16)
    a = cache.get_or_load(cards["a"], device="cpu")
    cache.get_or_load(cards["b"], device="cpu")
    cache.get_or_load(cards["c"], device="cpu")
    assert cache.release("a") == 1 and a.sessions == {}
    assert [k[0] for k in cache] == ["b", "c"]
    assert cache.release() == 2 and len(cache) == 0 and cache.total_bytes == 0
