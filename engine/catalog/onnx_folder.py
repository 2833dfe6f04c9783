"""Importing an ONNX export in the hub's Transformers.js / optimum layout, without torch.

    folder/config.json                 (architectures, model_type, id2label)
    folder/preprocessor_config.json    (or processor_config.json + tokenizer.json)
    folder/model.onnx                  or onnx/model.onnx
    folder/encoder_model.onnx + decoder_model_merged.onnx   (captioners; also under onnx/)

The task comes from the architecture's class-name suffix (a table, readable without
transformers, so the Lite build can import these), the sidecar Ocula needs from the
layout: which graphs, which output decoding, the processor file. The graphs themselves
are read by onnxruntime when the model loads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.catalog.card import ModelCard, Source
from engine.catalog.sidecar import validate_sidecar, with_derived_keys
from engine.errors import UnsupportedModelError

# architecture class-name suffix -> (task, sidecar output)
SUFFIX_TASKS: tuple[tuple[str, str, str], ...] = (
    ("ForObjectDetection", "detect", "detr"),
    ("ForSemanticSegmentation", "segment", "semantic_logits"),
    ("ForImageSuperResolution", "restore", "image"),
    ("VisionEncoderDecoderModel", "caption", "seq2seq"),
    ("ForImageClassification", "features", "hidden_states"),
    ("Model", "features", "hidden_states"),
)
# DETR-likes decoded by a sigmoid over classes (no no-object class)
SIGMOID_DETECTORS = ("rt_detr", "rt_detr_v2", "d_fine", "deimv2", "lw_detr", "rf_detr")
SINGLE = ("model.onnx", "onnx/model.onnx")
SEQ2SEQ = (("encoder_model.onnx", "decoder_model_merged.onnx"),
           ("onnx/encoder_model.onnx", "onnx/decoder_model_merged.onnx"))


def onnx_graphs(folder: Path) -> dict[str, str] | None:
    """{"model": …} or {"encoder": …, "decoder": …} relative to `folder`, or None."""
    for encoder, decoder in SEQ2SEQ:
        if (folder / encoder).is_file() and (folder / decoder).is_file():
            return {"encoder": encoder, "decoder": decoder}
    for rel in SINGLE:
        if (folder / rel).is_file():
            return {"model": rel}
    return None


def task_for(architecture: str) -> tuple[str, str] | None:
    for suffix, task, output in SUFFIX_TASKS:
        if architecture.endswith(suffix):
            return task, output
    return None


def card_from_onnx_folder(folder: Path, config: dict[str, Any], *, task: str | None,
                          name: str | None, slug: str) -> ModelCard:
    graphs = onnx_graphs(folder)
    if graphs is None:
        raise UnsupportedModelError(f"Cannot import folder {folder}: no model.onnx (or "
                                    f"encoder_model.onnx + decoder_model_merged.onnx).")
    architecture = (config.get("architectures") or [None])[0]
    inferred = task_for(architecture) if architecture else None
    if inferred is None:
        raise UnsupportedModelError(
            f"Cannot import folder {folder}: architecture {architecture or '(none in config.json)'} "
            f"is not one Ocula runs from ONNX (detection, semantic segmentation, super-resolution, "
            f"VisionEncoderDecoder captioning or a vision backbone).")
    task_name, output = inferred
    if task is not None and task != task_name and not (task == "explain" and task_name == "features"):
        raise UnsupportedModelError(f"Cannot import folder {folder} as task '{task}': its "
                                    f"architecture {architecture} is a '{task_name}' model.")
    if output == "detr" and config.get("model_type") in SIGMOID_DETECTORS:
        output = "rtdetr"
    sidecar: dict[str, Any] = {"graphs": graphs, "output": output, "input_layout": "NCHW",
                               "range": [0, 1]}
    if (folder / "preprocessor_config.json").is_file():
        sidecar["preprocessor"] = "preprocessor_config.json"
    if output in ("detr", "rtdetr", "semantic_logits") and config.get("id2label"):
        sidecar["labels"] = "config.json:id2label"
    where = f"{folder} (ONNX folder)"
    sidecar = with_derived_keys(validate_sidecar(sidecar, where=where, task=task_name))
    if output in ("detr", "rtdetr"):  # the config's own model type picks the decoder
        sidecar["model_type"] = config.get("model_type") or sidecar.get("model_type")
    if output == "semantic_logits":  # decoded by the model's processor, as the torch path is
        sidecar.pop("family", None)
    label = name or folder.name
    return ModelCard(
        id=f"local:{slug}", name=label, tasks=(task_name,), runtime="onnx",
        architecture=architecture, source=Source.LOCAL, local_path=str(folder), sidecar=sidecar,
        description=f"Imported ONNX folder ({architecture}, {', '.join(graphs.values())}).",
    )


def card_from_sidecar_folder(folder: Path, *, task: str | None, name: str | None,
                             slug: str) -> ModelCard:
    """A folder of several ONNX graphs that one `model.toml` describes (e.g. the MTCNN
    cascade: pnet/rnet/onet = "…onnx"); single-graph models import as model.onnx + model.toml."""
    import tomllib

    from engine.errors import CatalogError

    sidecar_file = folder / "model.toml"
    try:
        data = tomllib.loads(sidecar_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{sidecar_file} is not valid TOML ({exc}).") from exc
    where = str(sidecar_file)
    task_name = data.get("task") or task
    sidecar = validate_sidecar(data, where=where, task=task_name, allow_card_keys=True)
    if "graphs" not in sidecar:
        raise CatalogError(f"{where}: field 'graphs' is missing (role = \"file.onnx\").")
    for role, rel in sidecar["graphs"].items():
        if not (folder / rel).is_file():
            raise CatalogError(f"{where}: graph '{role}' = {rel!r} is not in {folder}.")
    card_keys = {k: data[k] for k in ("name", "license", "description", "commercial_use")
                 if k in data}
    for key in ("task", "name", "license", "description", "commercial_use", "labels_file"):
        sidecar.pop(key, None)
    sidecar = with_derived_keys(sidecar)
    label = name or card_keys.get("name") or folder.name
    commercial = card_keys.get("commercial_use")
    return ModelCard(
        id=f"local:{slug}", name=label, tasks=(str(task_name),), runtime="onnx",
        license=str(card_keys.get("license", "unknown")),
        commercial_use=commercial if isinstance(commercial, bool) else None,
        source=Source.LOCAL, local_path=str(folder), sidecar=sidecar,
        description=str(card_keys.get("description")
                        or f"Imported ONNX folder ({', '.join(sidecar['graphs'].values())})."),
    )
