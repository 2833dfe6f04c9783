"""Import models from disk, for air-gapped users: no hub needed.

Three kinds of path:

(a) a hub-layout folder (config.json + weights + processor files) -> transformers runtime;
    the task comes from config.architectures through transformers' own auto-class tables.
(b) a restoration checkpoint (.safetensors, .pth, .pt, .ckpt) -> spandrel runtime. The
    architecture, scale and channels are detected by spandrel; pickles are read with
    torch's weights-only unpickler, never as code.
(c) an ONNX file with a TOML sidecar next to it (model.onnx + model.toml) -> onnx runtime;
    the sidecar is validated and cross-checked against the graph's inputs and outputs.

Imported models are registered in `<app home>/models/index.toml` (written atomically) and
appear in the catalog across restarts with ids `local:<name>`. Files are referenced in
place, not copied: checkpoints can be gigabytes and often live on an external drive the
user already organises. The index records each file's size, so a moved, deleted or
replaced file gives a clear error that says how to re-import it.

Heavy libraries (torch, spandrel, transformers, onnx) are imported only inside the
functions that need them.
"""
from __future__ import annotations

import json
import os
import re
import struct
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from engine import paths
from engine.catalog.card import TASKS, AttentionSupport, ModelCard, Source
from engine.catalog.entries import (
    CatalogProblem,
    card_from_entry,
    entry_from_card,
    memory_for,
    memory_rule_mb,
)
from engine.catalog.families import spandrel_family, task_for_architecture, transformers_family
from engine.catalog.onnx_folder import (
    card_from_onnx_folder,
    card_from_sidecar_folder,
    onnx_graphs,
)
from engine.catalog.sidecar import (
    MAX_LABELS_FILE_BYTES,
    OUTPUTS,
    check_against_graph,
    resolve_inside,
    validate_sidecar,
    with_derived_keys,
)
from engine.errors import (
    CatalogError,
    UnknownModelError,
    UnsafeCheckpointError,
    UnsupportedModelError,
)

if TYPE_CHECKING:
    from engine.settings import Settings

INDEX_FILE = "index.toml"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
SIDECAR_EXAMPLE = """task = "detect"            # caption | detect | segment | restore | features
name = "My detector"
input_size = [640, 640]     # [width, height]; leave out for any size
layout = "NCHW"             # or "NHWC"
range = [0, 1]              # pixel values before mean/std: [0, 1] or [0, 255]
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
output = "yolov8"           # detr | rtdetr | yolov8 | yolov5 | semantic_logits | mask_logits | image | hidden_states
labels = ["person", "car"]  # or labels_file = "classes.txt" (one name per line)
# scale = 4                 # restoration models: the upscale factor"""
_VARIANT_FOR_OUTPUT = {"semantic_logits": "semantic", "mask_logits": "matting", "sam": "promptable"}


def index_path() -> Path:
    return paths.local_models_dir() / INDEX_FILE


# -- the index -----------------------------------------------------------------------------

def _read_index_entries() -> list[dict[str, Any]]:
    path = index_path()
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"The imported-models index {path} is not valid TOML ({exc}). "
                           f"Fix it, or delete it and import the models again.") from exc
    entries = data.get("models", [])
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _write_index_entries(entries: list[dict[str, Any]]) -> None:
    path = index_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    header = "# Models imported from disk (ocula models import). Written by Ocula; edit with care.\n"
    tmp.write_text(header + tomli_w.dumps({"schema": 1, "models": entries}), encoding="utf-8")
    os.replace(tmp, path)  # atomic: readers see the old or the new index, never half of one


def load_imports() -> tuple[list[ModelCard], list[CatalogProblem]]:
    """Imported cards that are usable, and a problem for each entry that is not."""
    origin = str(index_path())
    try:
        entries = _read_index_entries()
    except CatalogError as exc:
        return [], [CatalogProblem(origin, None, str(exc))]
    cards: list[ModelCard] = []
    problems: list[CatalogProblem] = []
    for position, entry in enumerate(entries):
        try:
            card = card_from_entry(entry, origin=INDEX_FILE, index=position, local=True)
            # Only "is it there": a changed file keeps its card, so using it says
            # "changed since it was imported" (check_available), not "Unknown model".
            _check_entry_file(card, entry, content=False)
        except CatalogError as exc:
            problems.append(CatalogProblem(origin, entry.get("id"), str(exc)))
            continue
        cards.append(card)
    return cards, problems


def _check_entry_file(card: ModelCard, entry: dict[str, Any], *, content: bool = True) -> None:
    """The imported file is there and (with `content`) is the one imported: size and mtime
    checked cheaply; only when they differ is the sha256 recorded at import compared."""
    path = Path(card.local_path or "")
    if not path.exists():
        raise CatalogError(
            f"Imported model '{card.id}' points to {path}, which no longer exists (moved or "
            f"deleted?). Import it again from its new place (`ocula models import PATH`) or "
            f"remove it (`ocula models remove {card.id}`).")
    if not content or not path.is_file():
        return
    expected = entry.get("file_size")
    st = path.stat()
    same_size = not isinstance(expected, int) or st.st_size == expected
    same_mtime = entry.get("file_mtime_ns") in (None, st.st_mtime_ns)
    if same_size and same_mtime:
        return
    sha = entry.get("file_sha256")
    if same_size and isinstance(sha, str) and _sha256(path) == sha:
        return  # touched (copied, restored from a backup), not changed
    what = (f"{st.st_size} bytes, was {expected}" if not same_size
            else "its contents differ from the imported file's sha256")
    raise CatalogError(
        f"Imported model '{card.id}': {path} has changed since it was imported ({what}). "
        f"Import it again to refresh its card (`ocula models import {path}`).")


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_available(card: ModelCard) -> None:
    """Raise CatalogError if an imported model's file was moved, deleted or replaced."""
    for entry in _read_index_entries():
        if entry.get("id") == card.id:
            _check_entry_file(card, entry)
            return
    _check_entry_file(card, {})


def list_imports() -> list[ModelCard]:
    return load_imports()[0]


def remove_import(model_id: str) -> ModelCard:
    """Forget an imported model (its files on disk are left alone). Returns its card."""
    entries = _read_index_entries()
    for position, entry in enumerate(entries):
        if entry.get("id") == model_id:
            card = card_from_entry(entry, origin=INDEX_FILE, index=position, local=True)
            _write_index_entries(entries[:position] + entries[position + 1:])
            return card
    raise UnknownModelError(model_id, [str(e.get("id")) for e in entries if e.get("id")])


def _register(card: ModelCard, path: Path) -> ModelCard:
    """Add or replace (same path) the card in the index; returns the card as stored."""
    entries = _read_index_entries()
    resolved = str(path)
    entries = [e for e in entries if e.get("local_path") != resolved]
    taken = {e.get("id") for e in entries}
    card_id, n = card.id, 2
    while card_id in taken:
        card_id = f"{card.id}-{n}"
        n += 1
    entry = entry_from_card(card)
    entry["id"] = card_id
    entry["imported_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if path.is_file():
        st = path.stat()
        entry["file_size"] = st.st_size
        entry["file_mtime_ns"] = st.st_mtime_ns
        entry["file_sha256"] = _sha256(path)
    if not entry.get("download_bytes"):  # the size `models list` shows: the files on disk
        entry["download_bytes"] = _bytes_on_disk(path)
    stored = card_from_entry(entry, origin=INDEX_FILE, index=len(entries), local=True)
    _write_index_entries([*entries, entry])
    return stored


def _bytes_on_disk(path: Path) -> int:
    """An imported model's size: the file, or every file of the folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "model"


# -- import ------------------------------------------------------------------------------

def import_model(path: str | Path, *, task: str | None = None, name: str | None = None,
                 settings: Settings | None = None) -> ModelCard:
    """Import a folder, restoration checkpoint or ONNX file and register it.

    `settings` is accepted so front ends can pass theirs; nothing in an import reads it today.
    Raises CatalogError (bad sidecar, missing files), UnsupportedModelError (nothing Ocula
    can run) or UnsafeCheckpointError (a pickle that is more than weights).
    """
    del settings  # not needed by any import kind yet (see docstring)
    source = Path(path).expanduser()
    if not source.exists():
        raise CatalogError(f"Cannot import {source}: no such file or folder.")
    source = source.resolve()
    if task is not None and task not in TASKS:
        raise CatalogError(f"Cannot import {source}: task '{task}' is not one of {', '.join(TASKS)}.")
    if source.is_dir():
        card = _card_from_folder(source, task=task, name=name)
    elif source.suffix.lower() == ".onnx":
        card = _card_from_onnx(source, task=task, name=name)
    elif source.suffix.lower() in CHECKPOINT_SUFFIXES:
        card = _card_from_checkpoint(source, task=task, name=name)
    else:
        raise UnsupportedModelError(
            f"Cannot import {source}: expected a hub-layout folder (config.json + weights), a "
            f"restoration checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) or an .onnx file with a "
            f".toml sidecar.")
    return _register(card, source)


# (a) hub-layout folder -----------------------------------------------------------------

def _safetensors_params(files: list[Path]) -> int | None:
    """Parameter count from safetensors headers (8-byte length + JSON), without loading."""
    total = 0
    for file in files:
        try:
            with file.open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
        except (OSError, struct.error, ValueError) as exc:
            raise CatalogError(f"{file} is not a valid safetensors file ({exc}).") from exc
        for key, info in header.items():
            if key != "__metadata__":
                count = 1
                for dim in info.get("shape", []):
                    count *= int(dim)
                total += count
    return total or None


def _card_from_folder(folder: Path, *, task: str | None, name: str | None) -> ModelCard:
    config_file = folder / "config.json"
    if not config_file.is_file() and (folder / "model.toml").is_file():
        return card_from_sidecar_folder(folder, task=task, name=name,
                                        slug=_slug(name or folder.name))
    if not config_file.is_file():
        onnx_files = sorted(folder.rglob("*.onnx"))
        hint = (f" It holds {onnx_files[0].name}: import that file with a .toml sidecar instead."
                if onnx_files else "")
        raise UnsupportedModelError(f"Cannot import folder {folder}: no config.json, so it is not a "
                                    f"hub-layout (transformers) model folder.{hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{config_file} is not valid JSON ({exc}).") from exc
    if not isinstance(config, dict):
        raise CatalogError(f"{config_file} does not hold a JSON object.")
    if config.get("auto_map"):
        raise UnsupportedModelError(
            f"Cannot import folder {folder}: config.json has auto_map, so the model needs "
            f"trust_remote_code (Python files shipped with the weights). Ocula runs such code only "
            f"for hub repos pinned to a revision you allow in Settings ▸ Models, never from a folder.")
    safetensors = sorted(folder.glob("*.safetensors"))
    pickles = sorted(folder.glob("pytorch_model*.bin"))
    if not safetensors and not pickles and onnx_graphs(folder) is not None:
        return card_from_onnx_folder(folder, config, task=task, name=name,
                                     slug=_slug(name or folder.name))
    if not safetensors and not pickles:
        others = [p.name for p in folder.iterdir() if p.suffix in (".h5", ".msgpack", ".onnx")]
        what = f" (found only {', '.join(others)}: TensorFlow/JAX/ONNX weights)" if others else ""
        raise UnsupportedModelError(f"Cannot import folder {folder}: no PyTorch weights "
                                    f"(model.safetensors or pytorch_model.bin){what}.")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    inferred = task_for_architecture(architecture) if architecture else None
    if inferred is None and task is None:
        raise UnsupportedModelError(
            f"Cannot import folder {folder}: architecture {architecture or '(none in config.json)'} "
            f"is not a caption, detection, segmentation, restoration or vision feature model in "
            f"this transformers version.")
    if inferred is not None and task is not None and inferred[0] != task:
        raise CatalogError(f"Cannot import folder {folder} as task '{task}': its architecture "
                           f"{architecture} is a '{inferred[0]}' model.")
    task_name, variant = inferred if inferred else (task, None)
    family = transformers_family(config)
    params = _safetensors_params(safetensors) if safetensors else None
    kind = "safetensors" if safetensors else "pickle (.bin, loaded weights-only)"
    return ModelCard(
        id=f"local:{_slug(name or folder.name)}", name=name or folder.name, tasks=(task_name,),
        runtime="transformers", params=params, memory_mb=memory_for(params, "transformers"),
        attention=family.attention, seed=family.seed, architecture=architecture, variant=variant,
        source=Source.LOCAL, local_path=str(folder),
        description=f"Imported folder ({architecture or config.get('model_type')}, {kind} weights).",
    )


# (b) restoration checkpoint --------------------------------------------------------------

def _load_state_dict(file: Path) -> dict:
    import torch  # lazy

    if file.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except Exception as exc:  # safetensors raises SafetensorError / OSError
            raise CatalogError(f"{file} is not a valid safetensors file ({exc}).") from exc
    import pickle

    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{file} holds more than weights (its pickle refers to code or objects outside "
            f"torch's tensor types), so Ocula will not load it: {str(exc).splitlines()[0]} "
            f"Convert it to .safetensors with a tool you trust.") from exc
    except RuntimeError as exc:
        if "TorchScript" in str(exc) or "constants.pkl" in str(exc):
            raise UnsupportedModelError(f"{file} is a TorchScript archive; import a state dict "
                                        f"(.pth/.safetensors) instead.") from exc
        raise CatalogError(f"{file} could not be read as a PyTorch checkpoint ({exc}).") from exc
    if not isinstance(state, dict):
        raise UnsupportedModelError(f"{file} holds a {type(state).__name__}, not a state dict.")
    return state


def _card_from_checkpoint(file: Path, *, task: str | None, name: str | None) -> ModelCard:
    if task not in (None, "restore"):
        raise UnsupportedModelError(f"Cannot import {file} as task '{task}': single checkpoint files "
                                    f"are restoration models (spandrel). Detection/segmentation "
                                    f"models import as a hub-layout folder or ONNX file.")
    import spandrel  # lazy

    state = _load_state_dict(file)
    try:
        descriptor = spandrel.MAIN_REGISTRY.load(spandrel.canonicalize_state_dict(state))
    except spandrel.UnsupportedModelError as exc:
        raise UnsupportedModelError(
            f"Cannot import {file}: spandrel {spandrel.__version__} does not recognise its "
            f"architecture (it knows ESRGAN/RRDBNet, Real-ESRGAN Compact, SwinIR, Swin2SR, HAT, "
            f"DAT, NAFNet, SCUNet and about 40 more).") from exc
    purpose = descriptor.purpose
    if purpose == "Inpainting":
        raise UnsupportedModelError(f"Cannot import {file}: it is an inpainting model "
                                    f"({descriptor.architecture.name}), which needs a mask; Ocula's "
                                    f"restore task takes images only.")
    if purpose == "FaceSR":
        raise UnsupportedModelError(f"Cannot import {file}: it is a face-restoration model "
                                    f"({descriptor.architecture.name}) that expects aligned face crops; "
                                    f"Ocula's restore task does not align faces.")
    arch_id = str(descriptor.architecture.id)
    params = sum(p.numel() for p in descriptor.model.parameters())
    memory = {"fp32": memory_rule_mb(params, "fp32")}
    if descriptor.supports_half:
        memory["fp16"] = memory_rule_mb(params, "fp16")
    if descriptor.supports_bfloat16:
        memory["bf16"] = memory_rule_mb(params, "bf16")
    req = descriptor.size_requirements
    family = spandrel_family(arch_id)
    sidecar = {
        "scale": int(descriptor.scale), "input_channels": int(descriptor.input_channels),
        "output_channels": int(descriptor.output_channels), "purpose": str(purpose),
        "supports_half": bool(descriptor.supports_half),
        "supports_bfloat16": bool(descriptor.supports_bfloat16),
        "tags": [str(t) for t in descriptor.tags], "tiling": descriptor.tiling.name.lower(),
        "min_size": int(req.minimum), "multiple_of": int(req.multiple_of),
        "square": bool(req.square),
    }
    label = name or file.stem
    return ModelCard(
        id=f"local:{_slug(label)}", name=label, tasks=("restore",), runtime="spandrel",
        params=int(params), memory_mb=memory, attention=family.attention, seed=family.seed,
        architecture=arch_id, source=Source.LOCAL, local_path=str(file), sidecar=sidecar,
        description=f"Imported {descriptor.architecture.name} checkpoint, {descriptor.scale}x "
                    f"({', '.join(descriptor.tags) or 'no tags'}).",
    )


# (c) ONNX + sidecar -----------------------------------------------------------------------

def _card_from_onnx(file: Path, *, task: str | None, name: str | None) -> ModelCard:
    sidecar_file = file.with_suffix(".toml")
    if not sidecar_file.is_file():
        raise CatalogError(
            f"Cannot import {file}: an ONNX file does not say how to feed it or read its outputs, "
            f"so it needs a sidecar {sidecar_file.name} next to it, for example:\n{SIDECAR_EXAMPLE}")
    try:
        data = tomllib.loads(sidecar_file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{sidecar_file} is not valid TOML ({exc}).") from exc
    where = str(sidecar_file)
    declared = data.get("task")
    if declared is None and task is None:
        raise CatalogError(f"{where}: field 'task' is missing; expected one of {', '.join(TASKS)}")
    if declared is not None and declared not in TASKS:
        raise CatalogError(f"{where}: field 'task' is {declared!r}; expected one of {', '.join(TASKS)}")
    if declared is not None and task is not None and declared != task:
        raise CatalogError(f"{where}: field 'task' is {declared!r}, but the import asked for '{task}'")
    task_name = declared or task
    if "labels" in data and "labels_file" in data:
        raise CatalogError(f"{where}: give 'labels' or 'labels_file', not both")
    folder = sidecar_file.parent
    # every file the sidecar names must be inside the model's own folder (symlinks too):
    # a labels_file of "../../etc/passwd" would otherwise copy that file into the outputs
    graphs = data.get("graphs")
    for role, rel in (graphs.items() if isinstance(graphs, dict) else ()):
        resolve_inside(folder, rel, field=f"graphs.{role}", where=where)
    if "preprocessor" in data:
        resolve_inside(folder, data["preprocessor"], field="preprocessor", where=where)
    if "labels_file" in data:
        labels_path = resolve_inside(folder, data["labels_file"], field="labels_file", where=where)
        if not labels_path.is_file():
            raise CatalogError(f"{where}: field 'labels_file' names {labels_path}, which does not exist")
        if labels_path.stat().st_size > MAX_LABELS_FILE_BYTES:
            raise CatalogError(f"{where}: field 'labels_file' names {labels_path}, which is "
                               f"{labels_path.stat().st_size:,} bytes; the limit for a list of "
                               f"class names is {MAX_LABELS_FILE_BYTES:,} bytes")
        try:
            text = labels_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{where}: field 'labels_file' names {labels_path}, which is not "
                               f"UTF-8 text (one class name per line)") from exc
        except OSError as exc:
            raise CatalogError(f"{where}: field 'labels_file' names {labels_path}, which cannot "
                               f"be read ({exc.strerror or exc})") from exc
        labels = [line.strip() for line in text.splitlines() if line.strip()]
        data = {**data, "labels": labels}
    sidecar = validate_sidecar(data, where=where, task=task_name, allow_card_keys=True)
    sidecar["graphs"] = {"model": file.name}  # relative to the .onnx file's folder
    if sidecar["output"] in ("yolov8", "yolov5", "detr", "rtdetr", "semantic_logits") and "labels" not in sidecar:
        raise CatalogError(f"{where}: field 'labels' is missing; output {sidecar['output']!r} needs "
                           f"the class names (labels = [...] or labels_file = \"classes.txt\")")
    sidecar, graph = check_against_graph(sidecar, file, where=where)
    sidecar = with_derived_keys(sidecar)
    commercial = data.get("commercial_use")
    if commercial is not None and not isinstance(commercial, bool):
        raise CatalogError(f"{where}: field 'commercial_use' is {commercial!r}; expected true or false")
    label = name or str(data.get("name") or file.stem)
    params = graph.params or None
    return ModelCard(
        id=f"local:{_slug(label)}", name=label, tasks=(task_name,), runtime="onnx",
        params=params, memory_mb=memory_for(params, "onnx"), license=str(data.get("license", "unknown")),
        commercial_use=commercial, attention=AttentionSupport.NONE,
        variant=_VARIANT_FOR_OUTPUT.get(sidecar["output"]), source=Source.LOCAL,
        local_path=str(file), sidecar=sidecar,
        description=str(data.get("description") or
                        f"Imported ONNX model ({OUTPUTS[sidecar['output']][2]})."),
    )
