"""load_runner end to end: a tiny model published on the local hub, fetched, loaded, run."""

from __future__ import annotations

import json

import pytest
import torch

from engine.catalog.card import ModelCard
from engine.errors import RemoteCodeRefused
from engine.runtimes import RunnerCache, load_runner
from engine.settings import RemoteCodeGrant, Settings
from tests.fixtures.repos import tiny_vit_classifier


def hub_card(repo: str, revision: str | None = None) -> ModelCard:
    return ModelCard(
        id=f"hub:{repo}",
        name=repo,
        tasks=("features",),
        runtime="transformers",
        repo=repo,
        revision=revision,
    )


def test_fetch_then_load_and_run(hub, tmp_path):
    folder = tiny_vit_classifier(tmp_path / "vit")
    sha = hub.add_repo("org/tiny-vit", folder)
    events = []
    runner = load_runner(
        hub_card("org/tiny-vit", sha), device="cpu", settings=Settings(), progress=events.append
    )
    stages = [e.stage for e in events]
    assert "download" in stages and stages[-1] == "load"  # download, then load, in one stream
    assert runner.placement.describe() == "transformers on cpu (fp32)"
    import transformers

    reference = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        expected = reference(pixel_values=x).logits
    torch.testing.assert_close(runner.forward({"pixel_values": x}).logits, expected, rtol=0, atol=0)
    assert runner.processor is not None
    # a second load comes from the cache: no new file downloads
    before = len([r for r in hub.log if "/resolve/" in r.path])
    cache = RunnerCache(64, settings=Settings())
    again = cache.get_or_load(hub_card("org/tiny-vit", sha), device="cpu")
    assert len([r for r in hub.log if "/resolve/" in r.path]) == before
    torch.testing.assert_close(again.forward({"pixel_values": x}).logits, expected, rtol=0, atol=0)


def test_remote_code_repo_on_the_hub_needs_a_grant_for_that_revision(hub, tmp_path):
    folder = tiny_vit_classifier(tmp_path / "vit")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    sha = hub.add_repo("org/custom", folder)
    with pytest.raises(RemoteCodeRefused) as info:
        load_runner(hub_card("org/custom", sha), device="cpu", settings=Settings())
    assert info.value.revision == sha and "org/custom" in str(info.value)
    # granted for an older revision only: still refused
    stale = Settings(allowed_remote_code=[RemoteCodeGrant("org/custom", "0" * 40)])
    with pytest.raises(RemoteCodeRefused):
        load_runner(hub_card("org/custom", sha), device="cpu", settings=stale)
