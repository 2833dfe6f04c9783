"""The sidecar: how to feed an ONNX graph and read its outputs.

An ONNX file says nothing about pixel range, mean/std or what its outputs mean, so a
sidecar says it. The same keys serve two places:

* a catalog entry's `[models.sidecar]` table (hub-layout ONNX repos), and
* a `model.toml` written by a user next to `model.onnx` (local import), which adds
  `task`, `name`, `license`, `description` and `labels_file`.

Normalised keys in `ModelCard.sidecar` (what the ONNX runtime and tasks read):

    graphs       {role: path}  role "model", or encoder/decoder (output "seq2seq"),
                 or vision_encoder/prompt_decoder (output "sam"); paths relative to the
                 snapshot folder (hub) or to the .onnx file's folder (local)
    preprocessor "preprocessor_config.json" when the repo ships one: it is authoritative
                 (build the transformers image processor from it); the keys below then
                 summarise it for display and for processor-less runtimes
    input_size   [width, height] the graph expects; absent = any size (dynamic axes)
    input_layout "NCHW" | "NHWC" (a user's model.toml may say `layout`)
    range        [0, 1] or [0, 255]: pixel values before mean/std
    mean, std    per channel, applied after range scaling: (x - mean) / std
    output       how to read the outputs (see OUTPUTS)
    labels       class names (list), or "config.json:id2label"
    scale        restoration upscale factor (restore only)
    multiple_of  restoration inputs' edges must be multiples of this (1-256; restore only)
    border       whole input pixels a restoration model loses on each side (0-256; restore
                 only): models built from unpadded ("valid") convolutions, such as the
                 waifu2x family, return scale·(H − 2·border) × scale·(W − 2·border). Each
                 tile is fed with `border` pixels of real neighbouring context per side, so
                 the output covers exactly the tile (× scale); absent = 0
    border_mode  how that context is made up past the image's edges: "edge" (repeat the
                 edge pixels; the default) or "reflect" (mirror them about the edge)
    precisions   ["fp32", "fp16", "bf16"]: the precisions the graph can run in
    variants     {precision: {role: path}}: the repo's published int8/fp16 files of the
                 graphs (`onnx/model_quantized.onnx`); downloaded only when that precision
                 is asked for (`--precision int8`), then chosen instead of the fp32 graph
    input_name, output_names   graph I/O names (filled from the graph on local import)
    family, model_type   derived from `output` for the task's dispatch: YOLO outputs get
                 family = "yolo", semantic_logits family = "semantic_logits" (segment);
                 detr/rtdetr get model_type "detr"/"rt_detr" (a hub repo's
                 config.json says it instead). Written by Ocula, not by users.

Every file a sidecar or catalog entry names (`graphs`, `preprocessor`, a model.toml's
`labels_file`) must be inside the model's own folder: relative, no `..`, and, where the
file is on disk at import, no symbolic link pointing out (`confined_path`,
`resolve_inside`). Values are bounded (MAX_INPUT_EDGE, MAX_INPUT_PIXELS, MAX_LABELS, ...)
so an absurd sidecar fails at import, naming the field, not at run time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from engine.errors import CatalogError
from engine.vocabulary import PRECISIONS, VARIANT_PRECISIONS

MAX_BORDER = 256
# sane bounds for what a sidecar may ask for (issue 16: an absurd input_size imported,
# then failed at run time asking OpenCV for gigabytes without naming the sidecar)
MAX_INPUT_EDGE = 16_384  # pixels per side of input_size
MAX_INPUT_PIXELS = 8192 * 8192  # width x height of input_size (~67 megapixels)
MAX_LABELS = 100_000  # class names (ImageNet-21k has 21,843)
MAX_LABEL_CHARS = 256  # one class name
MAX_LABELS_FILE_BYTES = 16 * 2**20  # a labels_file is read whole
MAX_NORM_VALUE = 1e4  # |mean| and std, in the sidecar's pixel range units
# = engine.media.tiling.BORDER_MODES (this module stays numpy-free)
BORDER_MODES = ("edge", "reflect")

# output layout -> (task, graph roles, what it means)
OUTPUTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "detr": ("detect", ("model",), "logits [B,Q,C+1] (softmax, last = no-object) + pred_boxes [B,Q,4] cx,cy,w,h in 0..1"),
    "rtdetr": ("detect", ("model",), "logits [B,Q,C] (sigmoid) + pred_boxes [B,Q,4] cx,cy,w,h in 0..1"),
    "yolov8": ("detect", ("model",), "one tensor [B,4+C,N]: cx,cy,w,h in input pixels, then class scores"),
    "yolov5": ("detect", ("model",), "one tensor [B,N,5+C]: cx,cy,w,h, objectness, class scores"),
    "semantic_logits": ("segment", ("model",), "logits [B,C,h,w], one channel per class"),
    "mask_logits": ("segment", ("model",), "one-channel foreground logits [B,1,H,W] (apply sigmoid)"),
    "sam": ("segment", ("vision_encoder", "prompt_decoder"), "SAM image encoder + prompt/mask decoder"),
    "image": ("restore", ("model",), "image [B,C,H*scale,W*scale] in the input range"),
    "seq2seq": ("caption", ("encoder", "decoder"), "vision encoder + merged text decoder with past"),
    "hidden_states": ("features", ("model",), "last_hidden_state [B,T,D]"),
    "mtcnn": ("detect", ("pnet", "rnet", "onet"), "MTCNN face cascade: P-Net (any size), "
              "R-Net (24x24), O-Net (48x48), each [regression…, probabilities last]"),
}
LAYOUTS = ("NCHW", "NHWC")
RANGES = ([0.0, 1.0], [0.0, 255.0])
CONFIG_LABELS = "config.json:id2label"
_MODEL_FOLDER = "the model's folder (its repo snapshot, or the .onnx file's folder)"

# keys only a user's model.toml may carry (they describe the card, not the graph)
CARD_KEYS = {"task", "name", "license", "description", "labels_file", "commercial_use"}
SIDECAR_KEYS = {
    "graphs", "preprocessor", "input_size", "input_layout", "layout", "range", "mean", "std",
    "output", "labels", "scale", "input_name", "output_names", "family", "model_type",
    "multiple_of", "precisions", "border", "border_mode", "variants",
    "min_face_size", "stage_thresholds",
}
# what the detect task dispatches on, derived from `output` (engine.tasks.detect reads these)
DERIVED_KEYS: dict[str, dict[str, str]] = {
    "yolov8": {"family": "yolo"},
    "yolov5": {"family": "yolo"},
    "detr": {"model_type": "detr"},
    "rtdetr": {"model_type": "rt_detr"},
    "semantic_logits": {"family": "semantic_logits"},
    "mtcnn": {"family": "mtcnn-onnx"},
}


def confined_path(rel: Any, *, field: str, where: str, folder: str) -> str:
    """A path a sidecar or catalog entry names, checked to stay inside its own folder
    (`folder` says which, for the message): relative, no `..`, no drive or root."""
    def fail(problem: str) -> CatalogError:
        return CatalogError(f"{where}: field '{field}' {problem}; files a model names must be "
                            f"inside {folder}")

    if not isinstance(rel, str) or not rel.strip():
        raise fail(f"is {rel!r}, not a file name")
    if "\0" in rel:
        raise fail(f"is {rel!r}, which holds a NUL character")
    win = PureWindowsPath(rel)
    if PurePosixPath(rel).is_absolute() or win.is_absolute() or win.drive or win.root:
        raise fail(f"is {rel!r}, an absolute path")
    if ".." in win.parts:  # Windows parsing splits on both / and \
        raise fail(f"is {rel!r}, which leaves its folder ('..')")
    return rel


def resolve_inside(folder: Path, rel: Any, *, field: str, where: str) -> Path:
    """`folder / rel` when it really is inside `folder`, also after following symlinks
    (a link pointing out of the folder is refused like a `..` path)."""
    confined_path(rel, field=field, where=where, folder=str(folder))
    base = folder.resolve()
    target = (folder / rel).resolve()
    if not target.is_relative_to(base):
        raise CatalogError(f"{where}: field '{field}' names {rel!r}, which leads to {target} "
                           f"(through a symbolic link), outside the model's folder {base}; "
                           f"files a model names must be inside {base}")
    return target


def _variants(variants: Any, graphs: dict[str, str], fail: Any, where: str) -> dict:
    """`variants = { int8 = { model = "onnx/model_quantized.onnx" } }`: per precision, the
    published file of some of the graphs' roles; fetched only when that precision is asked."""
    if not isinstance(variants, dict) or not graphs:
        raise fail("variants", "must be a table of precision = { role = \"file.onnx\" } "
                               "next to 'graphs'")
    checked: dict[str, dict[str, str]] = {}
    for precision, files in variants.items():
        if precision not in VARIANT_PRECISIONS:
            raise fail("variants", f"has precision {precision!r}; expected "
                                   f"{' or '.join(VARIANT_PRECISIONS)}")
        if not isinstance(files, dict) or not files or not set(files) <= set(graphs):
            raise fail("variants", f"{precision} must name files for the graphs' roles "
                                   f"({', '.join(graphs)})")
        for role, rel in files.items():
            if not isinstance(rel, str) or not rel.endswith(".onnx"):
                raise fail("variants", f"{precision}.{role} is {rel!r}, not an .onnx file")
            confined_path(rel, field=f"variants.{precision}.{role}", where=where,
                          folder=_MODEL_FOLDER)
        checked[precision] = dict(files)
    return checked


def validate_sidecar(data: dict[str, Any], *, where: str, task: str | None = None,
                     allow_card_keys: bool = False) -> dict[str, Any]:
    """Check a sidecar table and return it normalised. Errors start with `where`."""

    def fail(field: str, problem: str) -> CatalogError:
        return CatalogError(f"{where}: field '{field}' {problem}")

    allowed = SIDECAR_KEYS | (CARD_KEYS if allow_card_keys else set())
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise fail(unknown[0], f"is not a sidecar field; known fields: {', '.join(sorted(allowed))}")
    out: dict[str, Any] = {}

    output = data.get("output")
    if output is None:
        raise fail("output", f"is missing; expected one of {', '.join(OUTPUTS)}")
    if output not in OUTPUTS:
        raise fail("output", f"is {output!r}; expected one of {', '.join(OUTPUTS)}")
    out_task, roles, _ = OUTPUTS[output]
    if task is not None and task != out_task:
        raise fail("output", f"is {output!r}, an output for task '{out_task}', but the task is '{task}'")
    out["output"] = output

    if "graphs" in data:
        graphs = data["graphs"]
        if not isinstance(graphs, dict) or not all(isinstance(v, str) and v for v in graphs.values()):
            raise fail("graphs", "must be a table of role = \"path/to/file.onnx\"")
        if set(graphs) != set(roles):
            raise fail("graphs", f"has roles {sorted(graphs)}; output {output!r} needs {list(roles)}")
        for role, rel in graphs.items():
            if not rel.endswith(".onnx"):
                raise fail("graphs", f"entry '{role}' is {rel!r}, not an .onnx file")
            confined_path(rel, field=f"graphs.{role}", where=where, folder=_MODEL_FOLDER)
        out["graphs"] = dict(graphs)

    if "variants" in data:  # the hub's own int8/fp16 files of the graphs (Transformers.js names)
        out["variants"] = _variants(data["variants"], out.get("graphs", {}), fail, where)

    if "preprocessor" in data:
        if not isinstance(data["preprocessor"], str):
            raise fail("preprocessor", "must be a file name such as \"preprocessor_config.json\"")
        confined_path(data["preprocessor"], field="preprocessor", where=where,
                      folder=_MODEL_FOLDER)
        out["preprocessor"] = data["preprocessor"]

    if "input_size" in data:
        size = data["input_size"]
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise fail("input_size", f"is {data['input_size']!r}; expected [width, height] in pixels")
        if max(size) > MAX_INPUT_EDGE:
            raise fail("input_size", f"is {size[0]}×{size[1]}; each side must be from 1 to "
                                     f"{MAX_INPUT_EDGE:,} pixels")
        if size[0] * size[1] > MAX_INPUT_PIXELS:
            raise fail("input_size", f"is {size[0]}×{size[1]} = {size[0] * size[1]:,} pixels; "
                                     f"the limit is {MAX_INPUT_PIXELS:,} pixels per input")
        out["input_size"] = list(size)

    if "layout" in data and "input_layout" in data:
        raise fail("layout", "and 'input_layout' are the same setting; give one")
    layout = data.get("input_layout", data.get("layout", "NCHW"))
    layout_field = "input_layout" if "input_layout" in data else "layout"
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        hint = " (the YOLO version goes in output = \"yolov8\" or \"yolov5\")" if str(layout).lower() in (
            "v5", "v8", "yolov5", "yolov8") else ""
        raise fail(layout_field, f"is {layout!r}; expected NCHW or NHWC{hint}")
    out["input_layout"] = layout.upper()

    value_range = data.get("range", [0, 1])
    if (not isinstance(value_range, list) or len(value_range) != 2
            or [float(v) for v in value_range if isinstance(v, (int, float))] not in RANGES):
        raise fail("range", f"is {value_range!r}; expected [0, 1] or [0, 255]")
    out["range"] = [float(v) for v in value_range]

    channels = None
    for key, default in (("mean", 0.0), ("std", 1.0)):
        if key not in data:
            continue
        values = data[key]
        if (not isinstance(values, list) or len(values) not in (1, 3)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise fail(key, f"is {values!r}; expected a list of 1 or 3 numbers (one per channel)")
        if channels is not None and len(values) != channels:
            raise fail(key, f"has {len(values)} values but 'mean' has {channels}")
        if not all(math.isfinite(v) for v in values):
            raise fail(key, f"is {values!r}; every value must be a finite number")
        if key == "std" and not all(v > 0 for v in values):
            raise fail("std", f"is {values!r}; every value must be > 0")
        if not all(abs(v) <= MAX_NORM_VALUE for v in values):
            raise fail(key, f"is {values!r}; values are in pixel units (range [0, 1] or "
                            f"[0, 255]), so each must be within ±{MAX_NORM_VALUE:g}")
        channels = len(values)
        out[key] = [float(v) for v in values]

    if "labels" in data:
        labels = data["labels"]
        if labels != CONFIG_LABELS and (
                not isinstance(labels, list) or not labels or not all(isinstance(v, str) for v in labels)):
            raise fail("labels", f"must be a list of class names or {CONFIG_LABELS!r}")
        if isinstance(labels, list):
            if len(labels) > MAX_LABELS:
                raise fail("labels", f"names {len(labels):,} classes; the limit is {MAX_LABELS:,}")
            long = next((v for v in labels if len(v) > MAX_LABEL_CHARS or not v.strip()), None)
            if long is not None:
                raise fail("labels", f"has the class name {long[:40]!r}"
                                     f"{'…' if len(long) > 40 else ''}; each name must be 1 to "
                                     f"{MAX_LABEL_CHARS} characters")
        out["labels"] = labels if isinstance(labels, str) else list(labels)

    if "scale" in data:
        scale = data["scale"]
        if out_task != "restore":
            raise fail("scale", f"is the restoration upscale factor; output {output!r} is not restoration")
        if not isinstance(scale, int) or isinstance(scale, bool) or not 1 <= scale <= 16:
            raise fail("scale", f"is {scale!r}; expected a whole upscale factor from 1 to 16")
        out["scale"] = scale
    elif out_task == "restore":
        raise fail("scale", "is missing; restoration models need their upscale factor (1 for denoisers)")

    if "multiple_of" in data:
        multiple = data["multiple_of"]
        if out_task != "restore":
            raise fail("multiple_of", f"pads restoration inputs; output {output!r} is not restoration")
        if not isinstance(multiple, int) or isinstance(multiple, bool) or not 1 <= multiple <= 256:
            raise fail("multiple_of", f"is {multiple!r}; expected a whole number of pixels (1-256) "
                                      f"that input edges must be a multiple of")
        out["multiple_of"] = multiple
    if "border" in data:
        border = data["border"]
        if out_task != "restore":
            raise fail("border", f"is the input pixels a restoration model loses per side; output "
                                 f"{output!r} is not restoration")
        if not isinstance(border, int) or isinstance(border, bool) or not 0 <= border <= MAX_BORDER:
            raise fail("border", f"is {border!r}; expected a whole number of input pixels "
                                 f"(0-{MAX_BORDER}) the model loses on each side")
        size = out.get("input_size")
        if size is not None and min(size) <= 2 * border:
            raise fail("border", f"is {border}, which leaves nothing of the {size[0]}×{size[1]} "
                                 f"input_size inside it")
        out["border"] = border
    if "border_mode" in data:
        mode = data["border_mode"]
        if out_task != "restore":
            raise fail("border_mode", f"extends restoration inputs for 'border'; output {output!r} "
                                      f"is not restoration")
        if "border" not in data:
            raise fail("border_mode", "is set without 'border' (the pixels the model loses "
                                      "per side)")
        if mode not in BORDER_MODES:
            raise fail("border_mode", f"is {mode!r}; expected one of {', '.join(BORDER_MODES)}")
        out["border_mode"] = mode
    if "precisions" in data:
        precisions = data["precisions"]
        if (not isinstance(precisions, list) or not precisions
                or not all(p in PRECISIONS for p in precisions)):
            raise fail("precisions", f"is {precisions!r}; expected a list drawn from fp32, fp16, bf16")
        out["precisions"] = list(precisions)
    for key in ("input_name",):
        if key in data:
            if not isinstance(data[key], str):
                raise fail(key, "must be a string")
            out[key] = data[key]
    if "output_names" in data:
        if not isinstance(data["output_names"], list) or not all(isinstance(v, str) for v in data["output_names"]):
            raise fail("output_names", "must be a list of strings")
        out["output_names"] = list(data["output_names"])
    for key in ("family", "model_type"):
        if key in data:
            expected = DERIVED_KEYS.get(output, {}).get(key)
            if data[key] != expected:
                raise fail(key, f"is {data[key]!r}; Ocula derives it from output {output!r}"
                                + (f" as {expected!r}" if expected else " (leave it out)"))
            out[key] = data[key]
    return out


def with_derived_keys(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The sidecar plus the keys the detect task dispatches on (see DERIVED_KEYS)."""
    return {**sidecar, **DERIVED_KEYS.get(sidecar["output"], {})}


# -- cross-check with the graph itself -------------------------------------------------------

_FLOAT_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}


def _dims(value_info: Any) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


@dataclass(frozen=True)
class GraphIO:
    inputs: list[tuple[str, int, list]]  # (name, ONNX element type, dims)
    outputs: list[tuple[str, list]]  # (name, dims)
    params: int  # elements in the graph's initializers (weights)


def read_graph(onnx_path: Path) -> GraphIO:
    """A graph's inputs, outputs and weight count; external weight files are not read."""
    import onnx  # lazy: only local imports of ONNX files need it

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
        raise CatalogError(f"{onnx_path}: not a readable ONNX model ({exc}).") from exc
    initializers = {init.name for init in model.graph.initializer}
    inputs = [(vi.name, vi.type.tensor_type.elem_type, _dims(vi))
              for vi in model.graph.input if vi.name not in initializers]
    outputs = [(vi.name, _dims(vi)) for vi in model.graph.output]
    params = sum(math.prod(init.dims) for init in model.graph.initializer)
    return GraphIO(inputs, outputs, int(params))


def check_against_graph(sidecar: dict[str, Any], onnx_path: Path, *,
                        where: str) -> tuple[dict[str, Any], GraphIO]:
    """Cross-check a normalised single-graph sidecar with the ONNX graph's inputs/outputs.

    Returns the sidecar completed from the graph (input_size when the graph is static,
    input_name, output_names) and the graph summary. Raises CatalogError naming the mismatch.
    """
    output = sidecar["output"]
    if OUTPUTS[output][1] != ("model",):
        raise CatalogError(f"{where}: output {output!r} needs several graphs "
                           f"({', '.join(OUTPUTS[output][1])}); a local import takes one .onnx file.")
    graph = read_graph(onnx_path)
    inputs, outputs = graph.inputs, graph.outputs
    result = dict(sidecar)
    if len(inputs) != 1:
        names = ", ".join(name for name, _, _ in inputs) or "none"
        raise CatalogError(f"{where}: {onnx_path.name} has {len(inputs)} inputs ({names}); "
                           f"output {output!r} expects one image input.")
    name, elem_type, dims = inputs[0]
    if elem_type not in _FLOAT_TYPES:
        raise CatalogError(f"{where}: input '{name}' of {onnx_path.name} has ONNX element type "
                           f"{elem_type}; Ocula feeds float32/float16 images.")
    if len(dims) != 4:
        raise CatalogError(f"{where}: input '{name}' of {onnx_path.name} has {len(dims)} dimensions "
                           f"{dims}; expected 4 (batch, channels, height, width or NHWC).")
    layout = sidecar["input_layout"]
    channel_dim, h_dim, w_dim = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    channels = len(sidecar.get("mean", sidecar.get("std", [0, 0, 0])))
    if isinstance(channel_dim, int) and channel_dim != channels:
        other = "NHWC" if layout == "NCHW" else "NCHW"
        raise CatalogError(f"{where}: input '{name}' is {dims} read as {layout}: {channel_dim} channels, "
                           f"but mean/std give {channels}. Is the layout {other}?")
    static = isinstance(h_dim, int) and isinstance(w_dim, int)
    if static:
        if "input_size" in sidecar and sidecar["input_size"] != [w_dim, h_dim]:
            raise CatalogError(f"{where}: field 'input_size' is {sidecar['input_size']} (width, height) "
                               f"but the graph input '{name}' is fixed at {[w_dim, h_dim]}.")
        result["input_size"] = [w_dim, h_dim]
    result["input_name"] = name
    result["output_names"] = [out_name for out_name, _ in outputs]
    _check_outputs(result, outputs, where=where, file=onnx_path.name, in_hw=(h_dim, w_dim))
    return result, graph


def _check_outputs(sidecar: dict[str, Any], outputs: list[tuple[str, list]], *, where: str,
                   file: str, in_hw: tuple) -> None:
    output = sidecar["output"]
    labels = sidecar.get("labels") if isinstance(sidecar.get("labels"), list) else None
    described = ", ".join(f"{n} {d}" for n, d in outputs)

    def fail(problem: str) -> CatalogError:
        return CatalogError(f"{where}: {file} outputs {described}; {problem}")

    if output in ("yolov8", "yolov5"):
        if len(outputs) < 1 or len(outputs[0][1]) != 3:
            raise fail(f"output {output!r} expects one [batch, ...] tensor of 3 dimensions first.")
        dims = outputs[0][1]
        rows = dims[1] if output == "yolov8" else dims[2]
        extra = 4 if output == "yolov8" else 5
        if isinstance(rows, int):
            if rows <= extra:
                raise fail(f"{output} rows hold {extra} box values plus class scores, but there are {rows}.")
            if labels is not None and rows - extra != len(labels):
                raise fail(f"{output} has {rows - extra} class scores but 'labels' names {len(labels)} classes.")
    elif output in ("detr", "rtdetr"):
        if len(outputs) < 2:
            raise fail(f"output {output!r} expects logits and pred_boxes.")
        logits = next((d for n, d in outputs if n == "logits"), outputs[0][1])
        if labels is not None and len(logits) == 3 and isinstance(logits[2], int):
            expected = len(labels) + (1 if output == "detr" else 0)
            if logits[2] != expected:
                raise fail(f"logits have {logits[2]} classes, 'labels' implies {expected}.")
    elif output in ("semantic_logits", "mask_logits"):
        dims = outputs[0][1]
        if len(dims) not in (3, 4):
            raise fail(f"output {output!r} expects a [B,C,H,W] (or [B,H,W]) tensor.")
        if (output == "semantic_logits" and labels is not None and len(dims) == 4
                and isinstance(dims[1], int) and dims[1] != len(labels)):
            raise fail(f"there are {dims[1]} class channels but 'labels' names {len(labels)}.")
        if output == "mask_logits" and len(dims) == 4 and isinstance(dims[1], int) and dims[1] != 1:
            raise fail(f"mask_logits expects one channel, found {dims[1]}.")
    elif output == "image":
        dims = outputs[0][1]
        if len(dims) != 4:
            raise fail("output 'image' expects a 4-dimensional image tensor.")
        scale = sidecar["scale"]
        border = sidecar.get("border", 0)
        layout = sidecar["input_layout"]
        out_hw = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
        for axis, inp in enumerate(in_hw):
            if isinstance(inp, int) and inp <= 2 * border:
                side = "height" if axis == 0 else "width"
                raise fail(f"input {side} {inp} leaves nothing inside a border of {border} pixels "
                           f"per side; is 'border' right?")
        for axis, (inp, outp) in enumerate(zip(in_hw, out_hw)):
            if (isinstance(inp, int) and isinstance(outp, int)
                    and outp != (inp - 2 * border) * scale):
                side = "height" if axis == 0 else "width"
                raise fail(_image_size_problem(side, inp, outp, scale, border,
                                               in_hw=in_hw, out_hw=out_hw))
    elif output == "hidden_states" and len(outputs[0][1]) != 3:
        raise fail("output 'hidden_states' expects [batch, tokens, dim] first.")


def fitting_border(in_sizes: tuple, out_sizes: tuple, scale: int) -> int | None:
    """The border b with out = scale·(in − 2b) on every static axis, if one fits (b <= 256).

    Also used by the tiler (engine.media.tiling) to explain a wrong-sized output tile.
    """
    borders = set()
    for inp, outp in zip(in_sizes, out_sizes):
        if not (isinstance(inp, int) and isinstance(outp, int)):
            continue
        if outp <= 0 or outp % scale or (inp - outp // scale) < 0 or (inp - outp // scale) % 2:
            return None
        borders.add((inp - outp // scale) // 2)
    if len(borders) != 1:
        return None
    border = borders.pop()
    return border if border <= MAX_BORDER else None


def _image_size_problem(side: str, inp: int, outp: int, scale: int, border: int, *,
                        in_hw: tuple, out_hw: tuple) -> str:
    """Why a restoration graph's output size does not follow from scale and border, and the
    sidecar change that would explain it (a scale, a border, or both)."""
    lost = f" (less 2 x border {border})" if border else ""
    problem = f"output {side} {outp} is not input {side} {inp}{lost} x scale {scale}"
    core = inp - 2 * border
    scale_hint = (f"is 'scale' {outp // core}?" if core > 0 and outp % core == 0
                  and outp // core != scale else None)
    fits = fitting_border(in_hw, out_hw, scale)
    if fits is not None and fits != border:
        border_hint = f"output {outp} = {scale} × ({inp} − 2×{fits}): set border = {fits}"
        if scale_hint:
            return f"{problem}; {scale_hint} (or, if its convolutions are unpadded: {border_hint})"
        return (f"{problem}; {border_hint} (a model of unpadded convolutions loses {fits} "
                f"pixels per side)")
    return f"{problem}; {scale_hint or 'no whole scale or border explains it'}"
