"""ONNX Runtime backend: one or more .onnx graphs -> OnnxRunner.

Provider choice comes from `engine.devices.plan` (what onnxruntime offers for the
requested device); after each session is created we read back `session.get_providers()`
and announce in `placement.fallback` if it did not get what was asked (a CUDA request
that ended on the CPU is said out loud, never silent).

Files: a single .onnx file, the card sidecar's `graphs` {role: path}, or every .onnx in
the folder (Transformers.js / optimum layout: `onnx/model.onnx`, `onnx/model_fp16.onnx`,
`encoder_model.onnx` + `decoder_model_merged.onnx` …). One precision variant per graph
is loaded: `_fp16` when fp16 is asked and exists, `_quantized` / `_int8` / `_uint8` when
int8 is asked and exists, otherwise the plain fp32 file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from engine.catalog.sidecar import confined_path
from engine.errors import OculaError, UnsupportedModelError
from engine.events import CancelToken, Progress, ProgressCallback
from engine.runtimes import session_tuning
from engine.runtimes.base import Outputs, Placement, Runner, register_loader

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard

# Transformers.js / optimum file-name suffixes for precision variants, best fp32 match first.
_VARIANT_RE = re.compile(
    r"^(?P<base>.+?)(?:_(?P<variant>fp16|quantized|int8|uint8|q4f16|q4|bnb4))?$"
)
_FALLBACK_VARIANTS = ("fp16", "quantized", "int8", "uint8", "q4", "q4f16", "bnb4")
# Decoders that the merged decoder replaces (loading them too would double the memory).
_SUPERSEDED_BY_MERGED = ("decoder_model", "decoder_with_past_model")

_NUMPY_FOR_ONNX = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
# Output names some exports use for what transformers calls otherwise.
_OUTPUT_ALIASES = {"pred_logits": "logits", "last_hidden_states": "last_hidden_state"}
# Sidecar output layouts -> the transformers names tasks read, in graph output order.
_LAYOUT_OUTPUTS = {
    "detr": ("logits", "pred_boxes"),
    "rtdetr": ("logits", "pred_boxes"),
    "semantic_logits": ("logits",),
    "mask_logits": ("logits",),
    "image": ("reconstruction",),
    "hidden_states": ("last_hidden_state",),
}


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


class OnnxRunner(Runner):
    """ONNX Runtime sessions. `sessions` holds each graph under its file stem (variant
    suffix removed: `encoder_model`, `decoder_model_merged`); single-graph models use
    "model"; a sidecar role (`encoder`, `decoder`, …) is an extra key to the same session."""

    def __init__(
        self,
        card: ModelCard,
        placement: Placement,
        sessions: dict[str, ort.InferenceSession],
        processor: Any = None,
        *,
        memory_bytes: int = 0,
        output_aliases: Mapping[str, str] | None = None,
        input_aliases: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(card, placement, processor=processor, memory_bytes=memory_bytes)
        self.sessions = dict(sessions)
        self.output_aliases = dict(_OUTPUT_ALIASES, **(output_aliases or {}))
        self.input_aliases = dict(input_aliases or {})  # our name -> graph input name
        self.onnx_path: Path | None = None  # the main graph file, when loaded from disk
        self.folder: Path | None = None  # the snapshot folder the graphs came from
        # read from each session once (not per call): graph inputs, output names, metadata
        self._session_facts: dict[tuple[int, str], tuple[ort.InferenceSession, Any]] = {}

    @property
    def main_session_name(self) -> str:
        if not self.sessions:
            raise RuntimeError(f"Model '{self.card.id}' was released; load it again.")
        if "model" in self.sessions:
            return "model"
        distinct = {id(s) for s in self.sessions.values()}
        if len(distinct) == 1:
            return next(iter(self.sessions))
        raise UnsupportedModelError(
            f"Model '{self.card.id}' has several ONNX graphs ({', '.join(self.sessions)}); "
            f"run one by name with runner.run(name, inputs)."
        )

    def input_names(self, name: str | None = None) -> list[str]:
        session = self._session(name or self.main_session_name)
        return [i.name for i in session.get_inputs()]

    def output_names(self, name: str | None = None) -> list[str]:
        session = self._session(name or self.main_session_name)
        return [o.name for o in session.get_outputs()]

    def forward(self, inputs: Mapping[str, Any]) -> Outputs:
        return self.run(self.main_session_name, inputs)

    def run(self, name: str, inputs: Mapping[str, Any]) -> Outputs:
        """Run graph `name` on named inputs; torch tensors out, keyed by graph output names
        (what transformers' post-processing reads). `run_arrays` is the same without torch."""
        import torch

        outputs = Outputs()
        tensors: dict[int, Any] = {}  # an alias is the same tensor as the output it names
        for out_name, value in self.run_arrays(name, inputs).items():
            tensor = tensors.get(id(value))
            if tensor is None:
                tensor = tensors[id(value)] = torch.from_numpy(value)
            outputs[out_name] = tensor
        return outputs

    def forward_arrays(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.run_arrays(self.main_session_name, inputs)

    def run_arrays(self, name: str, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run graph `name`; numpy arrays out (fp16 widened to fp32, as the torch backends'
        post-processing runs in fp32), graph output names plus their aliases. No torch."""
        session = self._session(name)
        feed = self._feed(session, name, inputs)
        names = self._output_names(session)
        try:
            with self.lock:
                values = (session_tuning.run_bound(session, names, feed) if self._bound(session)
                          else session.run(names, feed))
        except (
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.Fail,
        ) as exc:
            shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in feed.items())
            raise OculaError(
                f"Model '{self.card.id}' ONNX graph '{name}' rejected its inputs ({shapes}): {exc}"
            ) from exc
        outputs: dict[str, np.ndarray] = {}
        for out_name, value in zip(names, values):
            value = np.ascontiguousarray(value)
            if value.dtype == np.float16:
                value = value.astype(np.float32)
            outputs[out_name] = value
        for graph_name, our_name in self.output_aliases.items():
            if graph_name in outputs and our_name not in outputs:
                outputs[our_name] = outputs[graph_name]
        return outputs

    def graph_metadata(self, name: str | None = None) -> dict[str, str]:
        """The graph's metadata_props (Ultralytics: names, imgsz, stride) plus "input_hw"
        (JSON [H, W]) for a static [N, 3, H, W] image input; read from the session once."""
        session = self._session(name or self.main_session_name)

        def read() -> dict[str, str]:
            meta = dict(session.get_modelmeta().custom_metadata_map)
            inputs = self._graph_inputs(session)
            if len(inputs) == 1:
                dims = [d if isinstance(d, int) else 0 for d in inputs[0].shape]
                if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
                    meta["input_hw"] = json.dumps([dims[2], dims[3]])
            return meta

        return dict(self._once(session, "metadata", read))

    def _once(self, session: ort.InferenceSession, what: str, read: Callable[[], Any]) -> Any:
        """`read()` once per session (a session swapped in under the same name is re-read)."""
        key = (id(session), what)
        cached = self._session_facts.get(key)
        if cached is None or cached[0] is not session:
            cached = self._session_facts[key] = (session, read())
        return cached[1]

    def intra_op_threads(self) -> int | None:
        """The intra-op thread count of the sessions (read back from ONNX Runtime)."""
        counts = [s.get_session_options().intra_op_num_threads for s in self.sessions.values()]
        return max(counts) if counts else None

    def set_intra_op_threads(self, threads: int) -> None:
        """Remake the CPU sessions with `threads` intra-op threads (a video job gives the
        model its share of the cores; OCULA_ONNX_THREADS still wins)."""
        with self.lock:
            remade: dict[int, ort.InferenceSession] = {}
            for key, session in list(self.sessions.items()):
                if id(session) not in remade:
                    remade[id(session)] = session_tuning.with_threads(session, threads) or session
                self.sessions[key] = remade[id(session)]

    def _bound(self, session: ort.InferenceSession) -> bool:
        """Run through IOBinding: when it measured faster for this graph (session_tuning)."""
        applied = session_tuning.applied_settings(session)
        return bool(applied and applied.io_binding)

    def _graph_inputs(self, session: ort.InferenceSession) -> list[Any]:
        return self._once(session, "inputs", lambda: list(session.get_inputs()))

    def _output_names(self, session: ort.InferenceSession) -> list[str]:
        return self._once(session, "outputs", lambda: [o.name for o in session.get_outputs()])

    def _session(self, name: str) -> ort.InferenceSession:
        if not self.sessions:
            raise RuntimeError(f"Model '{self.card.id}' was released; load it again.")
        try:
            return self.sessions[name]
        except KeyError:
            raise UnsupportedModelError(
                f"Model '{self.card.id}' has no ONNX graph '{name}'; it has: "
                f"{', '.join(self.sessions)}."
            ) from None

    def _feed(
        self, session: ort.InferenceSession, name: str, inputs: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        graph_inputs = self._graph_inputs(session)
        reverse = {graph: ours for ours, graph in self.input_aliases.items()}
        arrays = {
            k: v for k, v in inputs.items() if v is not None and not isinstance(v, (bool, str))
        }
        feed: dict[str, np.ndarray] = {}
        missing = []
        for graph_input in graph_inputs:
            source = (
                graph_input.name if graph_input.name in arrays else reverse.get(graph_input.name)
            )
            if source is None or source not in arrays:
                if len(graph_inputs) == 1 and len(arrays) == 1:
                    source = next(iter(arrays))  # one image in, one graph input: names may differ
                else:
                    missing.append(graph_input.name)
                    continue
            array = _to_numpy(arrays[source])
            dtype = _NUMPY_FOR_ONNX.get(graph_input.type)
            if dtype is not None and array.dtype != dtype:
                array = array.astype(dtype)
            feed[graph_input.name] = array
        if missing:
            raise OculaError(
                f"Model '{self.card.id}' ONNX graph '{name}' needs input(s) "
                f"{', '.join(missing)}; got {', '.join(inputs) or 'none'}."
            )
        return feed

    def release(self) -> None:
        self.sessions.clear()
        self._session_facts.clear()


# -- loading --------------------------------------------------------------------------


def default_thread_count() -> int:
    """Intra-op threads: the physical cores this process may use (OCULA_ONNX_THREADS overrides)."""
    return session_tuning.with_user_choices(session_tuning.default_settings()).intra_op_threads


def provider_list(placement: Placement) -> list[str | tuple[str, dict[str, Any]]]:
    """What to ask onnxruntime for, best first, always ending with the CPU."""
    provider = placement.provider or "CPUExecutionProvider"
    index = int(placement.device.rpartition(":")[2]) if ":" in placement.device else 0
    available = ort.get_available_providers()
    chain: list[str | tuple[str, dict[str, Any]]] = []
    if provider == "TensorrtExecutionProvider":
        from engine import paths

        cache = paths.app_home() / "tensorrt-cache"
        chain.append(
            (
                provider,
                {
                    "device_id": index,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache),
                },
            )
        )
        if "CUDAExecutionProvider" in available:
            chain.append(("CUDAExecutionProvider", {"device_id": index}))
    elif provider in ("CUDAExecutionProvider", "DmlExecutionProvider"):
        chain.append((provider, {"device_id": index}))
    elif provider != "CPUExecutionProvider":
        chain.append(provider)
    chain.append("CPUExecutionProvider")
    return chain


def create_session(path: Path, placement: Placement) -> tuple[ort.InferenceSession, str | None]:
    """An InferenceSession for `path` plus a fallback sentence if it did not get the provider asked."""
    wanted = placement.provider or "CPUExecutionProvider"
    # On the CPU: the settings measured for this graph (engine.runtimes.session_tuning), the
    # user's explicit choices on top; elsewhere the defaults (the records are CPU timings).
    settings = (session_tuning.settings_for(path) if wanted == "CPUExecutionProvider"
                else session_tuning.with_user_choices(session_tuning.default_settings()))
    options = settings.session_options()  # log level 3: our fallback note replaces ORT's
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=provider_list(placement)
        )
    except Exception as exc:
        if wanted == "CPUExecutionProvider":
            raise UnsupportedModelError(f"ONNX Runtime could not load {path}: {exc}") from exc
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return session, (
            f"{wanted} failed to create a session for {path.name} ({exc}); "
            f"running on CPUExecutionProvider"
        )
    session_tuning.remember(session, settings, path)
    actual = session.get_providers()[0]
    if actual != wanted:
        return session, (
            f"{wanted} was requested but the session for {path.name} runs on "
            f"{actual} (its libraries did not load; see `ocula doctor`)"
        )
    return session, None


def _split_variant(stem: str) -> tuple[str, str | None]:
    match = _VARIANT_RE.match(stem)
    assert match is not None
    return match.group("base"), match.group("variant")


# The hub-published variant file suffixes that serve a requested precision, best first.
PRECISION_SUFFIXES = {"fp16": ("fp16",), "int8": ("quantized", "int8", "uint8")}


def _pick_variant(files: dict[str | None, Path], precision: str) -> tuple[Path, str | None]:
    """One file among the variants of a graph; returns (file, note when not what was asked)."""
    for suffix in PRECISION_SUFFIXES.get(precision, ()):
        if suffix in files:
            return files[suffix], None
    if None in files:
        return files[None], None  # a missing fp16 export is announced as a fallback by the loader
    for variant in _FALLBACK_VARIANTS:
        if variant in files:
            return files[variant], f"only the {variant} export of this graph is present; using it"
    raise AssertionError("empty variant group")


def select_graphs(
    card: ModelCard, snapshot: Path, precision: str
) -> tuple[dict[str, Path], dict[str, str], list[str]]:
    """({session key: file}, {role alias: session key}, notes) for the model at `snapshot`."""
    notes: list[str] = []
    if snapshot.is_file():
        if snapshot.suffix.lower() != ".onnx":
            raise UnsupportedModelError(f"Model '{card.id}': {snapshot} is not an .onnx file.")
        return {"model": snapshot}, {}, notes
    graphs = (card.sidecar or {}).get("graphs")
    if graphs:
        chosen: dict[str, Path] = {}
        roles: dict[str, str] = {}
        published = ((card.sidecar or {}).get("variants") or {}).get(precision, {})
        for role, rel in graphs.items():
            confined_path(rel, field=f"sidecar graphs.{role}", where=f"Model '{card.id}'",
                          folder=str(snapshot))  # cards are validated; this is the last line
            path = snapshot / rel
            base, _ = _split_variant(path.stem)
            siblings = [path.with_name(f"{base}_{suffix}.onnx")  # Transformers.js names
                        for suffix in PRECISION_SUFFIXES.get(precision, ())]
            if role in published:  # the card names the hub's file for this precision
                confined_path(published[role], field=f"sidecar variants.{precision}.{role}",
                              where=f"Model '{card.id}'", folder=str(snapshot))
                siblings.insert(0, snapshot / published[role])
            path = next((p for p in siblings if p.is_file()), path)
            if not path.is_file():
                raise UnsupportedModelError(
                    f"Model '{card.id}': graph '{role}' ({rel}) is missing "
                    f"from {snapshot}; download the model again."
                )
            key = "model" if len(graphs) == 1 else base
            chosen[key] = path
            if role != key:
                roles[role] = key
        return chosen, roles, notes
    groups: dict[str, dict[str | None, Path]] = {}
    for path in sorted(snapshot.rglob("*.onnx")):
        base, variant = _split_variant(path.stem)
        groups.setdefault(base, {}).setdefault(variant, path)
    if not groups:
        raise UnsupportedModelError(
            f"Model '{card.id}': no .onnx file in {snapshot}. Check the "
            f"card's runtime or download the model again."
        )
    if "decoder_model_merged" in groups:
        for superseded in _SUPERSEDED_BY_MERGED:
            groups.pop(superseded, None)
    chosen = {}
    for base, variants in groups.items():
        path, note = _pick_variant(variants, precision)
        key = "model" if len(groups) == 1 else base
        chosen[key] = path
        if note:
            notes.append(f"{path.name}: {note}")
    return chosen, {}, notes


def _graph_precision(session: ort.InferenceSession) -> str:
    float_types = [
        i.type for i in session.get_inputs() if i.type in ("tensor(float)", "tensor(float16)")
    ]
    return "fp16" if float_types and float_types[0] == "tensor(float16)" else "fp32"


def _file_bytes(path: Path) -> int:
    """The graph plus its external-data files (same stem, any suffix after .onnx)."""
    total = path.stat().st_size
    for extra in path.parent.glob(path.name + "*"):
        if extra != path and extra.is_file():
            total += extra.stat().st_size
    return total


def _output_aliases(card: ModelCard, main: ort.InferenceSession) -> dict[str, str]:
    sidecar = card.sidecar or {}
    names = [o.name for o in main.get_outputs()]
    wanted = _LAYOUT_OUTPUTS.get(sidecar.get("output", ""), ())
    if not wanted and card.primary_task == "restore":
        wanted = ("reconstruction",)
    if wanted and not set(wanted) <= set(names) and len(names) >= len(wanted):
        return dict(zip(names, wanted))
    return {}


@register_loader("onnx")
def load_onnx(
    card: ModelCard,
    snapshot: Path,
    placement: Placement,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **_: Any,
) -> OnnxRunner:
    snapshot = Path(snapshot)
    files, roles, notes = select_graphs(card, snapshot, placement.precision)
    sessions: dict[str, ort.InferenceSession] = {}
    fallbacks = [placement.fallback] if placement.fallback else []
    actual_provider = placement.provider
    for done, (key, path) in enumerate(files.items()):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if progress is not None:
            progress(
                Progress(
                    stage="load",
                    done=done,
                    total=len(files),
                    item=path.name,
                    message=f"creating ONNX Runtime session for {path.name}",
                )
            )
        session, fallback = create_session(path, placement)
        sessions[key] = session
        if fallback:
            fallbacks.append(fallback)
            actual_provider = session.get_providers()[0]
    for role, key in roles.items():
        sessions[role] = sessions[key]
    main = sessions.get("model") or next(iter(sessions.values()))
    suffixes = {_split_variant(p.stem)[1] for p in files.values()}
    half_files = bool(suffixes & {"fp16", "q4f16"})
    int8_files = bool(suffixes & set(PRECISION_SUFFIXES["int8"]))
    precision = "fp16" if half_files else "int8" if int8_files else _graph_precision(main)
    if placement.precision in ("fp16", "int8") and precision != placement.precision:
        fallbacks.append(f"{placement.precision} requested but no {placement.precision} ONNX "
                         f"graph is present; running {precision} (make one with `ocula models "
                         f"optimize {card.id} --precision {placement.precision}`)")
    device = placement.device
    if actual_provider == "CPUExecutionProvider":
        device = "cpu"
    final = dataclasses.replace(
        placement,
        device=device,
        precision=precision,
        provider=actual_provider,
        fallback="; ".join(fallbacks) or None,
    )
    folder = snapshot.parent if snapshot.is_file() else snapshot
    processor = None
    try:
        from engine.runtimes.processors import load_onnx_processor

        processor = load_onnx_processor(folder)
    except Exception as exc:  # noqa: BLE001 - a broken processor config must not block the sidecar path
        notes.append(
            f"processor files in {folder} could not be loaded ({exc}); the sidecar describes "
            f"pre-processing instead"
        )
    sidecar = card.sidecar or {}
    input_aliases = {"pixel_values": sidecar["input_name"]} if sidecar.get("input_name") else {}
    runner = OnnxRunner(
        card,
        final,
        sessions,
        processor,
        memory_bytes=sum(_file_bytes(p) for p in files.values()),
        output_aliases=_output_aliases(card, main),
        input_aliases=input_aliases,
    )
    main_key = "model" if "model" in files else next(iter(files))
    runner.onnx_path = files[main_key]  # explain re-reads the graph to expose attention
    runner.folder = folder  # generation_config.json, tokenizer files beside the graphs
    runner.notes.extend(notes)
    if final.fallback:
        runner.notes.append(f"fallback: {final.fallback}")
    if progress is not None:
        progress(
            Progress(
                stage="load",
                done=len(files),
                total=len(files),
                item=card.id,
                message=f"loaded {card.name} ({final.describe()})",
            )
        )
    return runner
