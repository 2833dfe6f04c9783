"""Image restoration and super-resolution on any loaded image-to-image model.

`restore(runner, image)` works the same for a transformers Swin2SR, any spandrel
checkpoint and an ONNX image-to-image export: a `RestorerSpec` read from the runner
(scale, size requirement, input/output ranges, half-precision support) tells the
tiler what the model needs, and `engine.media.tiling` does the rest (overlapping
tiles, feathered seams, padding to the size requirement, out-of-memory halving,
bounded memory). RGB goes through the model; alpha is resized with Lanczos; 16-bit
inputs are processed in float and come back 16-bit.

Spec builders are a registry keyed by the card's runtime (no elif chains on names).
ONNX exports describe themselves in the card's sidecar (engine.catalog.sidecar):
`scale` (probed with one small tile when absent), `range` ([0, 1] or [0, 255]; the
output is read in the same range), `mean`/`std`, `input_size` [width, height] for
fixed-shape graphs, `input_layout`, `input_name`, `output_names`, `multiple_of`, and
`border`/`border_mode` for models of unpadded convolutions (output = scale·(input −
2·border); each tile is fed with `border` pixels of real context per side, so the
output covers the tile exactly and seams stay exact).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import UnsupportedModelError
from engine.events import CancelToken, ProgressCallback
from engine.media import resize
from engine.media.tiling import MIN_TILE, SizeRequirement, TileScheduler
from engine.registry import Registry
from engine.results import RestoredImage

if TYPE_CHECKING:
    from engine.media.image import LoadedImage
    from engine.runtimes.base import Runner

DEFAULT_OVERLAP = 32
MAX_AUTO_TILE = 2048
CPU_BUDGET_BYTES = 2 * 2**30  # working memory for one tile on the CPU, at most


@dataclass(frozen=True)
class RestorerSpec:
    """What restoration needs to know about a model (spandrel's descriptor, in short)."""

    scale: int
    requirement: SizeRequirement = field(default_factory=SizeRequirement)
    supports_half: bool = False
    input_name: str = "pixel_values"
    output_name: str = "reconstruction"
    input_range: float = 1.0  # the model wants pixels in [0, input_range]
    output_range: float = 1.0
    input_channels: int = 3
    bytes_per_pixel: int = 4096  # working memory per input pixel at fp32 (auto tile size)
    tiling: str = "supported"  # supported | discouraged | internal (spandrel's ModelTiling)
    layout: str = "NCHW"  # or NHWC (some ONNX exports)
    mean: tuple[float, ...] = (0.0,)  # applied after range scaling: (x - mean) / std
    std: tuple[float, ...] = (1.0,)


SpecBuilder = Callable[["Runner"], RestorerSpec]
# runtime -> what a restorer of that runtime is (scale, range, tiling…); a runtime
# registered twice is an error naming both.
SPEC_BUILDERS: Registry[str, SpecBuilder] = Registry("restorer spec builder")


def register_spec(runtime: str, *, replace: bool = False) -> Callable[[SpecBuilder], SpecBuilder]:
    """Register `fn(runner) -> RestorerSpec` for a runtime (`replace=True`: on purpose).
    (`replace` shadows dataclasses.replace only in here.)"""

    def deco(fn: SpecBuilder) -> SpecBuilder:
        return SPEC_BUILDERS.register(runtime, fn, replace=replace, stacklevel=2)

    return deco


def spec_for(runner: Runner) -> RestorerSpec:
    """The runner's RestorerSpec; sidecar keys override what the model says."""
    builder = SPEC_BUILDERS.find(runner.card.runtime)
    if builder is None:
        raise UnsupportedModelError(
            f"{runner.card.name}: restoration does not support the '{runner.card.runtime}' "
            f"runtime (only {', '.join(SPEC_BUILDERS)}).")
    spec = builder(runner)
    return _apply_sidecar(spec, runner.card.sidecar or {})


# -- spec builders ------------------------------------------------------------------------


@register_spec("transformers")
def _transformers_spec(runner: Runner) -> RestorerSpec:
    module = runner.module
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "upscale") and getattr(config, "model_type", "") != "swin2sr":
        raise UnsupportedModelError(
            f"{runner.card.name}: not an image-to-image model (restoration runs Swin2SR, "
            f"spandrel checkpoints and ONNX image-to-image exports).")
    upsampler = getattr(config, "upsampler", "pixelshuffle")
    # Swin2SR without an upsampler (denoising, JPEG artefacts) keeps the input size.
    scale = int(config.upscale) if upsampler in (
        "pixelshuffle", "pixelshuffle_aux", "pixelshuffledirect", "nearest+conv") else 1
    window = int(getattr(config, "window_size", 8))
    embed = int(getattr(config, "embed_dim", 180))
    heads = max(getattr(config, "num_heads", (6,)) or (6,))
    # token features (several live copies) + one window's attention row per head
    bytes_per_pixel = embed * 4 * 12 + window * window * int(heads) * 4 + 64 * scale * scale * 4
    return RestorerSpec(scale=scale, requirement=SizeRequirement(multiple_of=window),
                        supports_half=True, bytes_per_pixel=bytes_per_pixel,
                        input_channels=int(getattr(config, "num_channels", 3)))


@register_spec("spandrel")
def _spandrel_spec(runner: Runner) -> RestorerSpec:
    descriptor = getattr(runner, "descriptor", None)
    req = getattr(runner, "size_requirements", None) or getattr(descriptor, "size_requirements", None)
    requirement = SizeRequirement(
        multiple_of=int(getattr(req, "multiple_of", 1)), minimum=int(getattr(req, "minimum", 0)),
        square=bool(getattr(req, "square", False))) if req is not None else SizeRequirement()
    scale = int(getattr(runner, "scale", None) or getattr(descriptor, "scale", 1))
    tiling = getattr(descriptor, "tiling", None)
    tiling_name = str(getattr(tiling, "name", "SUPPORTED")).lower()
    supports_half = bool(getattr(runner, "supports_half",
                                 getattr(descriptor, "supports_half", False)))
    channels = int(getattr(descriptor, "input_channels", 3))
    params = sum(p.numel() for p in runner.module.parameters()) if runner.module is not None else 0
    # bigger networks carry wider feature maps; 64-channel ESRGAN-class nets ~ 4 KB/pixel
    bytes_per_pixel = int(4096 * max(1.0, math.sqrt(params / 16e6)) + 12 * scale * scale * 4)
    return RestorerSpec(scale=scale, requirement=requirement, supports_half=supports_half,
                        tiling=tiling_name, input_channels=channels,
                        bytes_per_pixel=bytes_per_pixel)


@register_spec("onnx")
def _onnx_spec(runner: Runner) -> RestorerSpec:
    sessions = getattr(runner, "sessions", None) or {}
    session = sessions.get("model") or next(iter(sessions.values()), None)
    input_name, output_name, half, fixed = "pixel_values", "reconstruction", False, None
    scale, multiple, minimum = 0, 1, 0
    if session is not None:
        first_in, first_out = session.get_inputs()[0], session.get_outputs()[0]
        input_name, output_name = first_in.name, first_out.name
        half = "float16" in str(first_in.type)
        shape = list(first_in.shape)
        if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
            fixed = (int(shape[2]), int(shape[3]))
        # exports made by `ocula models optimize` describe themselves (engine.export_onnx)
        meta = session.get_modelmeta().custom_metadata_map
        scale = int(meta.get("ocula.scale", 0))
        multiple = int(meta.get("ocula.multiple_of", 1))
        minimum = int(meta.get("ocula.minimum", 0))
    requirement = SizeRequirement(fixed=fixed) if fixed else SizeRequirement(
        multiple_of=multiple, minimum=minimum)
    return RestorerSpec(scale=scale, input_name=input_name, output_name=output_name,
                        supports_half=half, requirement=requirement)


def _apply_sidecar(spec: RestorerSpec, sidecar: Mapping[str, Any]) -> RestorerSpec:
    """Sidecar keys (engine.catalog.sidecar) override what the runner says."""
    changes: dict[str, Any] = {}
    if "scale" in sidecar:
        changes["scale"] = int(sidecar["scale"])
    value_range = sidecar.get("range")
    if value_range is not None:
        top = float(value_range[-1] if isinstance(value_range, (list, tuple)) else value_range)
        changes["input_range"] = changes["output_range"] = top  # output in the input range
    if sidecar.get("mean") is not None or sidecar.get("std") is not None:
        changes["mean"] = tuple(float(v) for v in sidecar.get("mean", (0.0,)))
        changes["std"] = tuple(float(v) for v in sidecar.get("std", (1.0,)))
    if sidecar.get("input_name"):
        changes["input_name"] = str(sidecar["input_name"])
    if sidecar.get("output_names"):
        changes["output_name"] = str(sidecar["output_names"][0])
    layout = sidecar.get("input_layout", sidecar.get("layout"))
    if isinstance(layout, str) and layout.upper() in ("NCHW", "NHWC"):
        changes["layout"] = layout.upper()
    if "bytes_per_pixel" in sidecar:
        changes["bytes_per_pixel"] = int(sidecar["bytes_per_pixel"])
    size = sidecar.get("input_size")
    multiple = sidecar.get("multiple_of")
    border, border_mode = sidecar.get("border"), sidecar.get("border_mode")
    if size is not None or multiple is not None or border is not None or border_mode is not None:
        req = spec.requirement
        fixed = req.fixed
        if size is not None:
            w, h = (int(size), int(size)) if isinstance(size, (int, float)) else map(int, size)
            fixed = (h, w)
        changes["requirement"] = replace(
            req, fixed=fixed,
            multiple_of=int(multiple) if multiple is not None else req.multiple_of,
            border=int(border) if border is not None else req.border,
            border_mode=str(border_mode) if border_mode is not None else req.border_mode)
    return replace(spec, **changes) if changes else spec


# -- running one tile -----------------------------------------------------------------------


def _module_dtype_device(runner: Runner) -> tuple[Any, Any]:
    module = runner.module
    if module is None:
        return None, None
    try:
        param = next(module.parameters())
    except StopIteration:
        return None, None
    return param.dtype, param.device


def _pick_output(outputs: Mapping[str, Any], name: str) -> Any:
    if name in outputs:
        return outputs[name]
    return next(iter(outputs.values()))


@dataclass
class _TileCaller:
    """Turns a (C, h, w) float32 [0, 1] tile into the model's output tile, [0, 1] float32."""

    runner: Runner
    spec: RestorerSpec
    compute: str  # fp32 | fp16 | bf16 actually used for the tile

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        spec = self.spec
        if spec.input_channels == 1:  # luminance models: Rec. 601 luma in, grey out
            tile = (0.299 * tile[0] + 0.587 * tile[1] + 0.114 * tile[2])[None].astype(np.float32)
        if self.runner.placement.backend == "onnx":  # numpy end to end (no torch: Lite)
            return self._call_arrays(tile)
        import torch

        x = torch.from_numpy(np.ascontiguousarray(tile))[None]
        if spec.input_range != 1.0:
            x = x * spec.input_range
        if spec.mean != (0.0,) or spec.std != (1.0,):
            mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
            x = (x - mean) / std
        if spec.layout == "NHWC":
            x = x.permute(0, 2, 3, 1).contiguous()
        dtype, device = _module_dtype_device(self.runner)
        autocast = None
        if device is not None:
            x = x.to(device=device, dtype=dtype)
            if self.compute != _precision_of(dtype):
                from engine.runtimes.base import torch_dtype

                autocast = torch.autocast(device_type=device.type,
                                          dtype=torch_dtype(self.compute))
        elif spec.supports_half:  # fp16 ONNX export
            x = x.half()
        with torch.inference_mode():
            if autocast is not None:
                with autocast:
                    outputs = self.runner.forward({spec.input_name: x})
            else:
                outputs = self.runner.forward({spec.input_name: x})
        y = _pick_output(outputs, spec.output_name)
        y = torch.as_tensor(y)
        if spec.layout == "NHWC":
            y = y.permute(0, 3, 1, 2)
        y = y[0].float()
        if spec.output_range != 1.0:
            y = y / spec.output_range
        # clamp each tile before blending, as spandrel does: blending out-of-range values
        # and clamping afterwards would make torch and ONNX runs of one model disagree
        return _three_channels(y.clamp(0.0, 1.0).cpu().numpy())

    def _call_arrays(self, tile: np.ndarray) -> np.ndarray:
        """The same arithmetic as the torch route, in float32 numpy, for ONNX runners."""
        spec = self.spec
        x = np.ascontiguousarray(tile, dtype=np.float32)[None]
        if spec.input_range != 1.0:
            x = x * np.float32(spec.input_range)
        if spec.mean != (0.0,) or spec.std != (1.0,):
            mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
            x = (x - mean) / std
        if spec.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if spec.supports_half:  # fp16 ONNX export
            x = x.astype(np.float16)
        y = np.asarray(_pick_output(self.runner.forward_arrays({spec.input_name: x}),
                                    spec.output_name))
        if spec.layout == "NHWC":
            y = y.transpose(0, 3, 1, 2)
        y = y[0].astype(np.float32)
        if spec.output_range != 1.0:
            y = y / np.float32(spec.output_range)
        return _three_channels(np.clip(y, 0.0, 1.0))


def _three_channels(out: np.ndarray) -> np.ndarray:
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return out[:3]


def _precision_of(dtype: Any) -> str:
    import torch

    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


def _compute_precision(runner: Runner, spec: RestorerSpec, asked: str | None,
                       notes: list[str]) -> str:
    dtype, device = _module_dtype_device(runner)
    loaded = _precision_of(dtype) if dtype is not None else runner.placement.precision
    if asked is None or asked == "auto" or asked == loaded:
        return loaded
    if device is None:
        notes.append(f"precision {asked} ignored: an ONNX export runs in the precision it was "
                     f"exported in ({loaded})")
        return loaded
    if asked in ("fp16", "bf16") and (device.type == "cpu" and asked == "fp16"):
        notes.append("fp16 on the CPU is not supported by most kernels: running in fp32")
        return loaded
    if asked == "fp16" and not spec.supports_half:
        notes.append(f"{runner.card.name} is unstable in fp16 (spandrel says so): running in "
                     f"{loaded}")
        return loaded
    return asked


# -- automatic tile size ---------------------------------------------------------------------


def available_memory_bytes(device: str) -> int:
    """Free memory for one tile's activations on `device` (CUDA: what the driver says)."""
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        return int(free * 0.6)  # leave room for the allocator's fragmentation
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # Windows/macOS: no available-pages query
        try:
            avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
        except (AttributeError, ValueError, OSError):
            avail = 8 * 2**30
    return int(min(avail * 0.25, CPU_BUDGET_BYTES))


def auto_tile_size(spec: RestorerSpec, device: str, image_hw: tuple[int, int],
                   precision: str = "fp32") -> int:
    """Largest tile edge whose working memory fits the device's free memory."""
    if spec.requirement.fixed is not None:
        return spec.requirement.fit_tile(0)  # the fixed input, less any border
    per_pixel = spec.bytes_per_pixel * (0.5 if precision in ("fp16", "bf16") else 1.0)
    edge = int(math.sqrt(max(1, available_memory_bytes(device)) / per_pixel))
    edge = max(MIN_TILE * 4, min(MAX_AUTO_TILE, edge))
    longest = max(image_hw)
    if edge >= longest:
        return longest  # one pass over the whole image
    return spec.requirement.fit_tile(edge)


# -- the task ------------------------------------------------------------------------------


@dataclass
class _Setup:
    """What one restoration decided before its first tile: model facts, precision, tiles."""

    spec: RestorerSpec
    caller: _TileCaller
    compute: str
    tile_size: int
    requested: int | None
    notes: list[str]


def _setup(runner: Runner, height: int, width: int, *, tile_size: int | None,
           precision: str | None) -> _Setup:
    spec = spec_for(runner)
    notes: list[str] = list(getattr(runner, "notes", []) or [])
    compute = _compute_precision(runner, spec, precision, notes)
    caller = _TileCaller(runner, spec, compute)
    if spec.scale <= 0:
        spec = replace(spec, scale=_probe_scale(caller, spec))
        caller.spec = spec
    requested = tile_size
    if spec.tiling == "internal" and tile_size is None:
        notes.append("the model tiles internally: whole image in one pass")
        tile_size = max(height, width)
    if tile_size is None:
        tile_size = auto_tile_size(spec, runner.placement.device, (height, width), compute)
    if spec.tiling == "discouraged" and tile_size < max(height, width):
        notes.append("this architecture prefers whole images; tiles may show seams")
    return _Setup(spec, caller, compute, tile_size, requested, notes)


def _info(runner: Runner, setup: _Setup, tiler: TileScheduler, tile_overlap: int,
          bit_depth: int) -> dict[str, Any]:
    stats, notes = tiler.stats, setup.notes
    if stats.halvings:
        notes.append(f"out of memory: tiles halved {stats.halvings}× to {stats.tile_size} px")
    return {
        "placement": runner.placement.describe(),
        "precision": setup.compute,
        "tiles": stats.tiles_run,
        "tile_size_requested": setup.requested,
        "tile_size_final": stats.tile_size,
        "tile_overlap": tile_overlap,
        "oom_halvings": stats.halvings,
        "tile_sizes_tried": list(stats.history),
        "bit_depth": bit_depth,
        "notes": notes,
    }


def restore(runner: Runner, image: LoadedImage, *, tile_size: int | None = None,
            tile_overlap: int = DEFAULT_OVERLAP, precision: str | None = None,
            progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None) -> RestoredImage:
    """Restore/upscale one image. `tile_size=None` picks it from free memory.

    A tile size >= the image's longest edge means one whole-image pass.
    """
    array = np.asarray(image.array)
    height, width = array.shape[:2]
    if array.dtype == np.uint16:
        max_value, out_dtype = 65535.0, np.uint16
    else:
        max_value, out_dtype = 255.0, np.uint8
        array = array.astype(np.uint8, copy=False)
    setup = _setup(runner, height, width, tile_size=tile_size, precision=precision)
    spec, caller, tile_size = setup.spec, setup.caller, setup.tile_size

    scale = spec.scale
    out = np.empty((height * scale, width * scale, 3), dtype=out_dtype)
    tiler = TileScheduler(caller, scale=scale, channels_out=3, requirement=spec.requirement,
                        tile_size=tile_size, overlap=tile_overlap, progress=progress,
                        cancel=cancel, item=image.name)
    tiler.run(array, out, max_value=max_value)

    result_image = out
    if image.alpha is not None:
        alpha = resize_alpha(np.asarray(image.alpha), (width * scale, height * scale))
        if out_dtype == np.uint16 and alpha.dtype == np.uint8:
            alpha = alpha.astype(np.uint16) * 257
        elif out_dtype == np.uint8 and alpha.dtype == np.uint16:
            alpha = (alpha.astype(np.uint32) * 255 // 65535).astype(np.uint8)
        result_image = np.concatenate([out, alpha[..., None]], axis=2)
        del out

    info = _info(runner, setup, tiler, tile_overlap, 16 if out_dtype == np.uint16 else 8)
    stats = tiler.stats
    whole = stats.planned == 1 and stats.halvings == 0
    return RestoredImage(image=result_image, scale=scale, source_size=(width, height),
                         tile_size=None if whole else stats.tile_size, info=info)


def output_scale(runner: Runner) -> int:
    """The model's scale, as `restore()` finds it (the spec, or one probed tile)."""
    spec = spec_for(runner)
    if spec.scale > 0:
        return spec.scale
    return _probe_scale(_TileCaller(runner, spec, _compute_precision(runner, spec, None, [])),
                        spec)


def _probe_scale(caller: _TileCaller, spec: RestorerSpec) -> int:
    """Scale of a model that does not state it: run one small tile and compare sizes."""
    req = spec.requirement
    edge = req.fit_tile(32)  # a fixed input (less any border) or a small accepted tile
    h, w = req.padded_size(edge, edge)
    b2 = 2 * req.border  # the model's input carries the border; its output does not
    out = caller(np.full((3, h + b2, w + b2), 0.5, np.float32))
    if out.shape[1] % h or out.shape[1] // h < 1:
        raise UnsupportedModelError(
            f"{caller.runner.card.name}: output {out.shape[2]}×{out.shape[1]} is not an integer "
            f"multiple of the input {w}×{h}; set 'scale' in the model's sidecar (and 'border', "
            f"for a model of unpadded convolutions).")
    return out.shape[1] // h


def resize_alpha(alpha: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize an alpha plane (uint8/uint16) with Lanczos (Pillow's: 3 lobes); the dtype is
    kept."""
    if (alpha.shape[1], alpha.shape[0]) == tuple(size_wh):
        return alpha
    return resize.filtered(alpha, size_wh, "lanczos")
