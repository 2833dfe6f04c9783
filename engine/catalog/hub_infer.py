"""A ModelCard for any hub repo, inferred from its metadata (no weights downloaded).

`card_from_hub(repo, revision)` asks the hub for the repo's metadata
(`HfApi().model_info(..., files_metadata=True)`) and `card_from_model_info(info)` turns
it into a card: task from the pipeline tag (or the config's architecture), runtime from
the files present, the files to fetch, parameters, licence, gating, attention support
and remote-code needs.

What the engine cannot run is refused here with UnsupportedModelError naming the repo
and the reason: a pipeline tag outside Ocula's tasks, TensorFlow/JAX-only weights, no
weights in a loadable format, an architecture unknown to the installed transformers.

Remote code: a repo whose config has `auto_map` (or the `custom_code` tag) yields a card
with `trust_remote_code=True` and the repo's .py files in `files`; the card is pinned
to the resolved commit SHA, so the runtime can refuse it unless the user allowed that
exact repo and revision (Settings.allows_remote_code). Refusing here instead would make
the allow-list unreachable.

huggingface_hub errors (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError)
pass through unchanged: their messages are already actionable.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.catalog.card import AttentionSupport, ModelCard, Source
from engine.catalog.entries import memory_for
from engine.catalog.families import (
    TRANSFORMERS_FAMILIES,
    task_for_architecture,
    transformers_family,
)
from engine.errors import OfflineError, UnsupportedModelError
from engine.settings import Settings

if TYPE_CHECKING:
    from huggingface_hub.hf_api import ModelInfo

# hub pipeline tag -> (Ocula task, variant)
PIPELINE_TASKS: dict[str, tuple[str, str | None]] = {
    "image-to-text": ("caption", None),
    "image-text-to-text": ("caption", None),
    "object-detection": ("detect", None),
    "zero-shot-object-detection": ("detect", "open-vocab"),
    "image-segmentation": ("segment", None),
    "mask-generation": ("segment", "promptable"),
    "image-to-image": ("restore", None),
    "image-feature-extraction": ("features", None),
    "image-classification": ("features", None),
}
TASK_PIPELINES: dict[str, tuple[str, ...]] = {}
for _tag, (_task, _) in PIPELINE_TASKS.items():
    TASK_PIPELINES.setdefault(_task, ())
    TASK_PIPELINES[_task] += (_tag,)

# libraries whose repos Ocula cannot run, with the reason shown to the user
UNSUPPORTED_LIBRARIES = {
    "diffusers": "a diffusers pipeline (generative image model)",
    "timm": "a timm model (Ocula does not bundle timm)",
    "open_clip": "an open_clip model",
    "sentence-transformers": "a sentence-transformers model",
    "keras": "a Keras model", "tf-keras": "a Keras model", "tensorflowtts": "a TensorFlow model",
    "mlx": "an MLX (Apple) model", "gguf": "a GGUF (llama.cpp) model", "ultralytics": "an Ultralytics model",
    "paddlenlp": "a PaddlePaddle model", "paddleocr": "a PaddlePaddle model", "jax": "a JAX model",
}
PERMISSIVE_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "bsd-2-clause", "bsd", "isc", "cc0-1.0",
                       "cc-by-4.0", "cc-by-sa-4.0", "unlicense", "bsl-1.0", "zlib", "mpl-2.0"}

_CONFIG_FILES = ("config.json", "generation_config.json", "preprocessor_config.json",
                 "processor_config.json", "image_processor_config.json", "video_preprocessor_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "vocab.txt", "merges.txt", "added_tokens.json", "spiece.model", "tokenizer.model",
                    "sentencepiece.bpe.model", "chat_template.json", "chat_template.jinja")
_TF_JAX_WEIGHTS = ("tf_model.h5", "flax_model.msgpack", "model.msgpack", "saved_model.pb")
# Transformers.js ONNX layouts: roles -> file name under onnx/ (or the repo root)
_ONNX_LAYOUTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("seq2seq", {"encoder": "encoder_model.onnx", "decoder": "decoder_model_merged.onnx"}),
    ("sam", {"vision_encoder": "vision_encoder.onnx", "prompt_decoder": "prompt_encoder_mask_decoder.onnx"}),
    ("", {"model": "model.onnx"}),
)


OFFLINE_NOTE = "offline:"


def card_from_hub(repo: str, revision: str | None = None, *, token: str | None = None,
                  settings: Settings | None = None) -> ModelCard:
    """Read a hub repo's metadata and infer its card. Network: one or two small requests.

    In offline mode (settings.offline, HF_HUB_OFFLINE) the card is inferred from the model
    cache instead (`card_from_cache`), without a request."""
    from huggingface_hub import HfApi  # lazy
    from huggingface_hub.errors import OfflineModeIsEnabled

    if _offline(settings):
        return card_from_cache(repo, revision, cache=hub_cache_dir(settings))
    api = HfApi(token=token)
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True, token=token)
    except OfflineModeIsEnabled:  # huggingface_hub read HF_HUB_OFFLINE at its import
        return card_from_cache(repo, revision, cache=hub_cache_dir(settings))
    config = info.config if isinstance(info.config, dict) and info.config else None
    names = {s.rfilename for s in info.siblings or []}
    if "config.json" in names:
        # model_info carries only a few keys of config.json (no backbone_config, upscale,
        # id2label), so read the file itself: a few kB, pinned to the resolved commit
        from huggingface_hub.errors import GatedRepoError

        try:
            path = api.hf_hub_download(repo, "config.json", revision=info.sha or revision, token=token)
        except GatedRepoError:
            path = None  # metadata is public, files are not: infer from model_info alone
        if path is not None:
            try:
                with open(path, encoding="utf-8") as fh:
                    loaded = json.load(fh)
            except (ValueError, UnicodeDecodeError) as exc:
                raise UnsupportedModelError(
                    f"Hub repo '{repo}': config.json is not valid JSON ({exc}).") from exc
            if isinstance(loaded, dict):
                config = {**(config or {}), **loaded}
    return card_from_model_info(info, config=config, requested_revision=revision)


def _offline(settings: Settings | None) -> bool:
    if settings is not None:
        return settings.effective_offline
    if Settings().effective_offline:  # the HF_HUB_OFFLINE switch alone
        return True
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_cache_dir(settings: Settings | None = None) -> Path:
    """The model cache (engine.paths.model_cache_dir, with the settings' cache folder)."""
    from engine.paths import model_cache_dir

    return model_cache_dir(settings.cache_dir if settings is not None else None)


def offline_note(card: ModelCard) -> str | None:
    """For a card built from the cache in offline mode: which revision it uses."""
    if card.source is Source.HUB and card.description.startswith(OFFLINE_NOTE):
        return card.description.split("\n", 1)[0]
    return None


def card_from_cache(repo: str, revision: str | None, *, cache: Path) -> ModelCard:
    """A hub repo's card from its cached snapshot, without the hub (offline mode).

    The snapshot is the one `revision` names in the cache (a commit, or a branch/tag by
    its `refs/` file); with no revision, the newest cached snapshot. Its files come from
    huggingface_hub's cached tree listing (else the snapshot folder), the architecture
    and labels from its config.json, the parameter count from the safetensors headers.
    The hub's pipeline tag, library and licence are not cached: the task comes from the
    architecture and the licence reads "unknown"."""
    from huggingface_hub.hf_api import ModelInfo

    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshots = folder / "snapshots"
    cached = sorted((p for p in snapshots.iterdir() if p.is_dir()),
                    key=lambda p: p.stat().st_mtime, reverse=True) if snapshots.is_dir() else []
    refs = _cached_refs(folder)
    if not cached:
        raise OfflineError(
            f"Hub repo '{repo}' is not in the model cache ({cache}) and offline mode is on, "
            f"so the hub cannot be asked about it. Turn offline mode off (Settings, or unset "
            f"HF_HUB_OFFLINE) and download it with `ocula models pull {repo}`.")
    if revision:
        commit = revision if _COMMIT.match(revision) else refs.get(revision)
        if commit is None or not (snapshots / commit).is_dir():
            have = ", ".join(f"{p.name[:12]}" + (f" ({', '.join(r for r, c in refs.items() if c == p.name)})"
                                               if p.name in refs.values() else "")
                             for p in cached)
            raise OfflineError(
                f"Hub repo '{repo}' revision '{revision}' is not in the model cache and "
                f"offline mode is on. Cached revisions: {have}. Ask for one of them "
                f"({repo}@<revision>), or turn offline mode off to download it.")
    else:
        commit = cached[0].name
    snapshot = snapshots / commit
    siblings = _cached_siblings(repo, commit, cache, snapshot)
    config: dict | None = None
    if (snapshot / "config.json").is_file():
        try:
            with open(snapshot / "config.json", encoding="utf-8") as fh:
                loaded = json.load(fh)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UnsupportedModelError(
                f"Hub repo '{repo}': the cached config.json is not valid JSON ({exc}).") from exc
        config = loaded if isinstance(loaded, dict) else None
    params = _safetensors_params(snapshot, [s["rfilename"] for s in siblings])
    info = ModelInfo(id=repo, sha=commit, siblings=siblings, config=config,
                     safetensors={"parameters": {}, "total": params} if params else None)
    card = card_from_model_info(info, config=config, requested_revision=revision)
    names = [r for r, c in sorted(refs.items()) if c == commit]
    note = (f"{OFFLINE_NOTE} using the cached revision {commit[:12]}"
            + (f" ({', '.join(names)})" if names else "")
            + f" of {repo}; the hub was not asked (its task tag and licence are unknown here).")
    return dataclasses.replace(card, description=f"{note}\n{card.description}")


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _cached_refs(folder: Path) -> dict[str, str]:
    """Branch/tag -> commit, from the cache's refs/ files (refs/pr/1 included)."""
    root = folder / "refs"
    out: dict[str, str] = {}
    if root.is_dir():
        for path in root.rglob("*"):
            if path.is_file():
                try:
                    commit = path.read_text(encoding="ascii").strip()
                except (OSError, UnicodeDecodeError):
                    continue
                if _COMMIT.match(commit):
                    out[path.relative_to(root).as_posix()] = commit
    return out


def _cached_siblings(repo: str, commit: str, cache: Path, snapshot: Path) -> list[dict[str, Any]]:
    """The repo's files at `commit`: the cached tree listing (all files, with sizes), else
    the files present in the snapshot."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        listing = get_cached_repo_tree(repo, revision=commit, cache_dir=cache)
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        listing = None
    if listing:
        return [{"rfilename": f.path, "size": getattr(f, "size", None)} for f in listing]
    return [{"rfilename": p.relative_to(snapshot).as_posix(), "size": p.stat().st_size}
            for p in sorted(snapshot.rglob("*")) if p.is_file()]


def _safetensors_params(snapshot: Path, names: list[str]) -> int | None:
    """Parameters in the cached root .safetensors files, from their headers (no tensors read)."""
    total = 0
    files = [n for n in names if "/" not in n and n.endswith(".safetensors")]
    for name in files:
        try:
            with open(snapshot / name, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size < 100_000_000:
                    return None
                header = json.loads(fh.read(size))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        for key, tensor in header.items():
            if key != "__metadata__" and isinstance(tensor, dict):
                n = 1
                for dim in tensor.get("shape", ()):
                    n *= int(dim)
                total += n
    return total or None


@dataclass(frozen=True)
class _Files:
    names: dict[str, int | None]  # file -> size (None when the hub did not say)

    def has(self, name: str) -> bool:
        return name in self.names

    def root(self, suffix: str) -> list[str]:
        return sorted(n for n in self.names if "/" not in n and n.endswith(suffix))

    def size(self, selected: list[str]) -> int | None:
        sizes = [self.names.get(n) for n in selected]
        return sum(s for s in sizes if s) if all(s is not None for s in sizes) and sizes else None


def card_from_model_info(info: ModelInfo, *, config: dict | None = None,
                         requested_revision: str | None = None) -> ModelCard:
    """Infer a card from a huggingface_hub ModelInfo (+ the repo's config.json, if known)."""
    repo = info.id
    config = config if config is not None else (info.config if isinstance(info.config, dict) else None)
    config = config or {}
    tags = [str(t) for t in (info.tags or [])]
    library = (info.library_name or "").lower() or None
    files = _Files({s.rfilename: (s.size if s.size is not None else (s.lfs.size if s.lfs else None))
                    for s in info.siblings or []})
    if not files.names:
        raise UnsupportedModelError(f"Hub repo '{repo}' lists no files; nothing to run.")

    def refuse(reason: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"Ocula cannot run hub repo '{repo}': {reason}.")

    # -- task ------------------------------------------------------------------------------
    pipeline = info.pipeline_tag or (info.transformers_info.pipeline_tag if info.transformers_info else None)
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if pipeline is not None and pipeline not in PIPELINE_TASKS:
        raise refuse(f"its pipeline tag is '{pipeline}'; Ocula runs "
                     f"{', '.join(sorted(PIPELINE_TASKS))} models")
    arch_task = task_for_architecture(architecture) if architecture else None
    if pipeline is not None:
        task, variant = PIPELINE_TASKS[pipeline]
        if arch_task and arch_task[0] == task and arch_task[1]:
            variant = variant or arch_task[1]
    elif arch_task is not None:
        task, variant = arch_task
    else:
        raise refuse("it has no pipeline tag and its architecture "
                     f"({architecture or 'unknown'}) is not an image task Ocula runs")
    if variant is None and "background-removal" in tags:
        variant = "matting"

    if library in UNSUPPORTED_LIBRARIES:
        raise refuse(f"it is {UNSUPPORTED_LIBRARIES[library]}")

    trust_remote_code = bool(config.get("auto_map")) or "custom_code" in tags
    safetensors = files.root(".safetensors")
    pickles = [n for n in files.root(".bin") if n.startswith("pytorch_model")]
    index_files = [n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json") if files.has(n)]
    onnx = [n for n in files.names if n.endswith(".onnx")]
    has_config = files.has("config.json")

    # -- runtime and files -------------------------------------------------------------------
    sidecar: dict[str, Any] = {}
    if has_config and (safetensors or pickles) and library in (None, "transformers", "pytorch"):
        runtime = "transformers"
        if architecture is None and not trust_remote_code:
            raise refuse("config.json names no architecture")
        if not trust_remote_code and arch_task is None:
            raise refuse(f"its architecture {architecture} is unknown to the installed transformers "
                         f"(or not an image task); upgrading transformers may help")
        if files.has("model.safetensors"):
            weights = ["model.safetensors"]
        elif safetensors:  # shards, or a differently named single file
            weights = [n for n in safetensors if n.startswith("model-")] or safetensors
        else:
            weights = pickles
        chosen = [n for n in (*_CONFIG_FILES, *_TOKENIZER_FILES) if files.has(n)]
        chosen += weights + [n for n in index_files if (n.startswith("model") == bool(safetensors))]
        if trust_remote_code:
            chosen += sorted(n for n in files.names if n.endswith(".py") and "/" not in n)
        family = transformers_family(config)
        attention = family.attention
        if task == "caption" and attention is AttentionSupport.GRADCAM:
            attention = AttentionSupport.CROSS  # captioners: words attend to image tokens
        seed = family.seed
    elif onnx:
        runtime = "onnx"
        chosen, sidecar = _onnx_files(repo, files, onnx, config, task)
        attention, seed = AttentionSupport.NONE, transformers_family(config).seed
    elif task == "restore" and (safetensors or files.root(".pth")) and not has_config:
        runtime = "spandrel"
        candidates = safetensors or files.root(".pth")
        if len(candidates) != 1:
            raise refuse(f"it holds {len(candidates)} checkpoints ({', '.join(candidates[:5])}); "
                         f"download the one you want and import it with `ocula models import FILE`")
        chosen = candidates
        attention, seed = AttentionSupport.GRADCAM, ""
        architecture = None  # spandrel detects it when the file is loaded
    else:
        present = [n for n in _TF_JAX_WEIGHTS if files.has(n)]
        if present:
            raise refuse(f"it has only TensorFlow/JAX weights ({', '.join(present)}), no PyTorch "
                         f"(safetensors/.bin) or ONNX weights")
        if library and library not in ("transformers", "transformers.js", "onnx", "pytorch"):
            raise refuse(f"its library is '{library}', which Ocula does not run")
        raise refuse("no weights in a format Ocula loads (model.safetensors, pytorch_model.bin "
                     "with config.json, or .onnx)")

    params = info.safetensors.total if info.safetensors and runtime != "onnx" else None
    memory = memory_for(params, runtime)
    if runtime == "onnx":  # ONNX weights are fp32: estimate from the graphs' bytes
        graph_bytes = files.size(list(sidecar["graphs"].values()))
        memory = memory_for(graph_bytes // 4 if graph_bytes else None, "onnx")
    license_, commercial = _license(info, tags)
    name = repo.split("/", 1)[1]
    card_id = f"hub:{repo}" + (f"@{requested_revision}" if requested_revision else "")
    description = f"Hub model {repo} ({pipeline or task}, {library or 'unknown library'})."
    if pickles and not safetensors and runtime == "transformers":
        description += " Weights are a pickle (.bin), loaded weights-only."
    if trust_remote_code:
        description += " Needs trust_remote_code: refused unless you allow this repo and revision."
    return ModelCard(
        id=card_id, name=name, tasks=(task,), runtime=runtime, repo=repo,
        revision=info.sha or requested_revision, files=tuple(chosen),
        download_bytes=files.size(chosen), params=params, license=license_,
        commercial_use=commercial, memory_mb=memory, attention=attention,
        seed=seed, architecture=architecture, variant=variant, trust_remote_code=trust_remote_code,
        gated=bool(info.gated), source=Source.HUB, sidecar=sidecar, description=description,
    )


def _onnx_files(repo: str, files: _Files, onnx: list[str], config: dict,
                task: str) -> tuple[list[str], dict[str, Any]]:
    """Pick the fp32 graph(s) of a Transformers.js-style repo and describe them."""
    for output, roles in _ONNX_LAYOUTS:
        graphs: dict[str, str] = {}
        for role, file_name in roles.items():
            for folder in ("onnx/", ""):
                if files.has(folder + file_name):
                    graphs[role] = folder + file_name
                    break
        if len(graphs) == len(roles):
            break
    else:
        if len(onnx) == 1:
            output, graphs = "", {"model": onnx[0]}
        else:
            raise UnsupportedModelError(
                f"Ocula cannot run hub repo '{repo}': it holds {len(onnx)} ONNX files "
                f"({', '.join(sorted(onnx)[:4])}...) and none is the usual onnx/model.onnx.")
    family_output = TRANSFORMERS_FAMILIES.get(str(config.get("model_type") or ""))
    if not output and family_output and family_output.onnx_output:
        output = family_output.onnx_output
    chosen = [n for n in (*_CONFIG_FILES, *_TOKENIZER_FILES) if files.has(n)]
    for rel in graphs.values():
        chosen.append(rel)
        for data_file in (rel + "_data", rel + ".data"):  # external weights of large graphs
            if files.has(data_file):
                chosen.append(data_file)
    sidecar: dict[str, Any] = {"graphs": graphs, "input_layout": "NCHW"}
    if files.has("preprocessor_config.json"):
        sidecar["preprocessor"] = "preprocessor_config.json"
    if output:
        sidecar["output"] = output
    if config.get("id2label") and task in ("detect", "segment"):
        sidecar["labels"] = "config.json:id2label"
    if task == "restore" and isinstance(config.get("upscale"), int):
        sidecar["scale"] = config["upscale"]
    return chosen, sidecar


def _license(info: ModelInfo, tags: list[str]) -> tuple[str, bool | None]:
    card_data = info.card_data
    license_ = None
    if card_data is not None:
        license_ = getattr(card_data, "license", None)
        if license_ == "other" and getattr(card_data, "license_name", None):
            license_ = f"other ({card_data.license_name})"
    if not license_:
        license_ = next((t.split(":", 1)[1] for t in tags if t.startswith("license:")), "unknown")
    if isinstance(license_, list):
        license_ = license_[0] if license_ else "unknown"
    license_ = str(license_)
    lowered = license_.lower()
    if lowered in PERMISSIVE_LICENSES:
        return license_, True
    if "-nc" in lowered or "noncommercial" in lowered or "non-commercial" in lowered:
        return license_, False
    return license_, None  # "other", openrail, custom: read the terms
