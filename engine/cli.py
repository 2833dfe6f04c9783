"""`ocula` command line: a thin front end over the engine.

Everything heavy is imported inside the command that needs it, so `ocula --help`
and `ocula doctor` answer quickly. Exit codes: 0 ok, 1 some inputs failed or an
operation failed, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from engine import __version__
from engine.errors import OculaError, UsageError
from engine.format import human_bytes, human_params

from engine.catalog.card import TASKS as MODEL_TASKS  # what a model does (import, list)

TASK_CHOICES = ("caption", "detect", "segment", "restore", "explain")  # what a job does


# -- helpers ---------------------------------------------------------------------------


def _emit(args: argparse.Namespace, payload: Any, text: str | Callable[[], str]) -> None:
    """Print JSON for scripts (--json) or human text."""
    if getattr(args, "json", False):
        print(json.dumps(_jsonable(payload), indent=2))
    else:
        print(text() if callable(text) else text)


def _jsonable(value: Any) -> Any:
    """Dataclasses, enums, paths and tuples as plain JSON values."""
    import dataclasses
    import enum
    from pathlib import PurePath

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _settings():
    from engine.settings import Settings

    return Settings.load()


def _card_dict(card) -> dict:
    return _jsonable(card)


class _ProgressBars:
    """Renders engine Progress events as tqdm bars on stderr, one per item."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        key = f"{event.stage}:{event.item}"
        bar = self.bars.get(key)
        if bar is None:
            unit_scale = event.unit == "bytes"
            bar = tqdm(total=event.total, desc=(event.item or event.stage)[-40:],
                       unit="B" if unit_scale else event.unit, unit_scale=unit_scale,
                       unit_divisor=1024 if unit_scale else 1000, leave=False, file=sys.stderr)
            self.bars[key] = bar
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
        bar.n = event.done
        bar.refresh()
        if event.total is not None and event.done >= event.total:
            bar.close()
            self.bars.pop(key, None)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


# -- models ----------------------------------------------------------------------------


def cmd_models_list(args) -> int:
    from engine.catalog.catalog import load_catalog
    from engine.hub import is_installed

    catalog = load_catalog()
    cards = catalog.list(task=args.task)
    settings = _settings()
    rows = [(c, is_installed(c, settings=settings)) for c in cards]
    if args.installed:
        rows = [(c, inst) for c, inst in rows if inst]

    def text() -> str:
        lines = [f"{'ID':28} {'TASKS':18} {'RUNTIME':15} {'SIZE':>9} {'PARAMS':>7}  LICENSE  INSTALLED"]
        for c, inst in rows:
            lic = c.license + {True: "", False: " (non-commercial)",
                               None: " (commercial use unclear)"}[c.commercial_use]
            lines.append(f"{c.id:28} {','.join(c.tasks):18} {c.runtime:15} "
                         f"{human_bytes(c.download_bytes):>9} {human_params(c.params):>7}  "
                         f"{lic}  {'yes' if inst else ''}")
        return "\n".join(lines)

    _emit(args, [dict(_card_dict(c), installed=inst) for c, inst in rows], text)
    return 0


def cmd_models_search(args) -> int:
    if args.hub:
        from engine.catalog.search import search_hub

        task = args.task or "caption"
        hits = search_hub(task, args.query or "", limit=args.limit)
        payload = [h.__dict__ if hasattr(h, "__dict__") else h for h in hits]
        _emit(args, payload, lambda: "\n".join(
            f"{h.repo_id:50} {h.downloads:>10} downloads  {h.pipeline_tag or ''}" for h in hits)
            or "No hub models found.")
        return 0
    from engine.catalog.catalog import load_catalog

    cards = load_catalog().search(args.query or "")
    if args.task:
        cards = [c for c in cards if c.supports(args.task)]
    _emit(args, [_card_dict(c) for c in cards],
          lambda: "\n".join(f"{c.id:28} {c.name}" for c in cards) or "No catalog models match.")
    return 0


def cmd_models_info(args) -> int:
    from engine.catalog.catalog import load_catalog
    from engine.hub import disk_usage, is_installed

    card = load_catalog().resolve(args.model)
    settings = _settings()
    installed = is_installed(card, settings=settings)
    data = dict(_card_dict(card), installed=installed,
                disk_bytes=disk_usage(card, settings=settings) if installed else 0)

    def text() -> str:
        lines = [f"{card.name}  [{card.id}]"]
        keys = ("package", "install") if card.package else ("repo", "revision")
        for key in (*keys, "runtime", "architecture", "variant", "license"):
            lines.append(f"  {key:14} {getattr(card, key)}")
        lines.append(f"  {'tasks':14} {', '.join(card.tasks)}")
        lines.append(f"  {'commercial':14} {card.commercial_use}")
        lines.append(f"  {'download':14} {human_bytes(card.download_bytes)}")
        lines.append(f"  {'parameters':14} {human_params(card.params)}")
        lines.append(f"  {'memory (MB)':14} " + ", ".join(
            f"{p}: {card.memory_estimate_mb(p)}" for p in ("fp32", "fp16")))
        lines.append(f"  {'attention':14} {card.attention.value}")
        lines.append(f"  {'seed':14} {card.seed}")
        lines.append(f"  {'installed':14} {installed}"
                     + (f" ({human_bytes(data['disk_bytes'])})" if installed else ""))
        if card.description:
            lines.append("  " + card.description)
        return "\n".join(lines)

    _emit(args, data, text)
    return 0


def cmd_models_pull(args) -> int:
    from engine.catalog.catalog import load_catalog
    from engine.hub import fetch

    card = load_catalog().resolve(args.model)
    if card.package:  # weights that ship inside a Python package: nothing to download
        from engine.catalog import packaged

        path = packaged.locate(card)
        _emit(args, {"model": card.id, "path": str(path), "package": card.package},
              f"{card.id}: nothing to download; its weights ship with the {card.package} "
              f"package ({path})")
        return 0
    bars = _ProgressBars(enabled=not args.json and not args.quiet)
    try:
        path = fetch(card, progress=bars, settings=_settings())
    finally:
        bars.close()
    _emit(args, {"model": card.id, "path": str(path)}, f"{card.id}: ready at {path}")
    return 0


def cmd_models_rm(args) -> int:
    from engine.catalog.catalog import load_catalog
    from engine.hub import delete

    card = load_catalog().resolve(args.model)
    freed = delete(card, settings=_settings())
    _emit(args, {"model": card.id, "freed_bytes": freed},
          f"{card.id}: removed, {human_bytes(freed)} freed")
    return 0


def cmd_models_import(args) -> int:
    from engine.catalog.local_import import import_model

    card = import_model(args.path, task=args.task, name=args.name)
    _emit(args, _card_dict(card), f"Imported '{card.id}' ({', '.join(card.tasks)}, {card.runtime})")
    return 0


def cmd_models_login(args) -> int:
    from engine.hub import save_token

    token = args.token or sys.stdin.readline().strip()
    if not token:
        raise UsageError("No token given: pass it as an argument or on standard input.")
    save_token(token)
    _emit(args, {"saved": True}, "Token saved.")
    return 0


def cmd_models_optimize(args) -> int:
    from engine.catalog.catalog import load_catalog
    from engine.export_onnx import optimize, sample_image
    from engine.runtimes import load_runner

    card = load_catalog().resolve(args.model)
    settings = _settings()
    settings.use_onnx_fast_path = False  # export from the torch model itself
    runner = load_runner(card, device="cpu", precision="fp32", settings=settings)
    path = optimize(card, runner, sample_image(), force=args.force)
    _emit(args, {"model": card.id, "onnx": str(path)}, f"{card.id}: ONNX fast path at {path}")
    return 0


# -- doctor ----------------------------------------------------------------------------


def cmd_doctor(args) -> int:
    from engine.devices import describe_plan, describe_report, discover, plan

    report = discover()
    payload: dict[str, Any] = {"version": __version__, "devices": report}
    text = describe_report(report)
    if args.model:
        from engine.catalog.catalog import load_catalog

        card = load_catalog().resolve(args.model)
        placement = plan(card, device=args.device, precision=args.precision, report=report)
        payload["model"] = {"id": card.id, "placement": placement}
        text += f"\n\nModel {card.id}:\n" + describe_plan(card, placement, report)
    _emit(args, payload, text)
    return 0


# -- run / explain -----------------------------------------------------------------------


def cmd_run(args) -> int:
    from engine.jobs import JobSpec, run_job

    if args.recipe:
        spec = JobSpec.from_toml(args.recipe)
    else:
        options = _task_options(args)  # first: a misplaced input inside --points says so
        if not args.task or not args.model or not args.inputs or not args.out:
            raise UsageError("ocula run needs TASK, --model, at least one INPUT and --out "
                             "(or --recipe FILE).")
        spec = JobSpec(task=args.task, model=args.model, inputs=list(args.inputs),
                       output_dir=args.out, options=options,
                       device=args.device, precision=args.precision)
    spec.validate()
    _check_model_fits_task(spec)  # a lookup or usage error exits 2 before any work
    if args.save_recipe:
        from pathlib import Path

        Path(args.save_recipe).write_text(spec.to_toml(), encoding="utf-8")
    import engine.tasks.handlers  # noqa: F401  registers the task handlers

    printer = _JobPrinter(quiet=args.quiet or args.json)
    summary = run_job(spec, on_event=printer)
    printer.close()
    data = summary.to_dict() if hasattr(summary, "to_dict") else summary
    _emit(args, data, lambda: printer.summary_text(summary))
    return 1 if getattr(summary, "failed", 0) else 0


def _check_model_fits_task(spec) -> None:
    """Resolve the job's model now: an unknown id or a model for another task is a usage
    error (exit 2) reported before a progress bar or an output folder appears."""
    from engine.catalog.catalog import load_catalog

    card = load_catalog().resolve(spec.model)
    if spec.task != "explain" and not card.supports(spec.task):
        raise UsageError(f"Model '{card.id}' does {', '.join(card.tasks)}, not {spec.task}. "
                         f"Pick a {spec.task} model (`ocula models list --task {spec.task}`).")


def _task_options(args) -> dict:
    options: dict[str, Any] = {}
    for name in ("threshold", "nms_iou", "max_detections", "prompt", "max_new_tokens",
                 "num_beams", "tile_size", "tile_overlap", "quality", "output_format",
                 "every_nth_frame", "mode", "method", "batch_size", "pixel_limit"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start is not None or end is not None:  # video: process only this stretch
        options["time_range"] = [start or 0.0] + ([end] if end is not None else [])
    if getattr(args, "classes", None):
        options["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    if getattr(args, "formats", None):
        options["formats"] = [f.strip() for f in args.formats.split(",") if f.strip()]
    if getattr(args, "points", None):
        options["points"] = [_numbers("--points", p, 2, "x,y") for p in args.points]
    if getattr(args, "boxes", None):
        options["boxes"] = [_numbers("--boxes", b, 4, "x0,y0,x1,y1") for b in args.boxes]
    return options


def _numbers(flag: str, text: str, count: int, shape: str) -> list[float]:
    """`320,240` -> [320.0, 240.0]; anything else is a usage error naming the flag."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise UsageError(f"{flag} takes {shape} values; {text!r} is not one (put inputs before "
                         f"{flag}, or end its values with another option).")
    return values


class _JobPrinter:
    """Renders JobEvents as one progress bar on stderr; failures as lines."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        self.failures: list[tuple[str, str]] = []

    def __call__(self, event) -> None:
        if event.kind == "item_failed":
            self.failures.append((str(event.item), event.message))
            if not self.quiet:
                self._write(f"failed: {event.item}: {event.message}")
        if self.quiet or event.kind not in ("progress", "item_done", "item_failed"):
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=event.total, unit="item", file=sys.stderr, leave=False)
        if event.total is not None:
            self.bar.total = event.total
        self.bar.n = event.done
        self.bar.refresh()

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def summary_text(self, summary) -> str:
        done = getattr(summary, "done", "?")
        failed = getattr(summary, "failed", 0)
        out = getattr(summary, "output_dir", "")
        text = f"{done} done, {failed} failed. Outputs in {out}"
        report = getattr(summary, "report_path", None)
        if report:
            text += f"\nReport: {report}"
        return text


def cmd_explain(args) -> int:
    from pathlib import Path

    from engine.catalog.catalog import load_catalog
    from engine.explain import explain, save_maps
    from engine.media.image import read_image
    from engine.runtimes import load_runner

    if args.model.lower().endswith(".onnx") and Path(args.model).is_file():
        # any ONNX ViT: its attention Softmax outputs are exposed by graph surgery
        from engine.explain import OnnxAttentionModel

        runner = OnnxAttentionModel.from_path(args.model)
    else:
        card = load_catalog().resolve(args.model)
        runner = load_runner(card, device=args.device, precision="fp32", attention=True,
                             settings=_settings())
    for note in getattr(runner, "notes", []):
        print(f"note: {note}", file=sys.stderr)
    out_dir = Path(args.out)
    written: list[str] = []
    failed = 0
    for image_path in args.images:
        try:
            image = read_image(image_path)
            patch = tuple(float(v) for v in args.patch.split(",")) if args.patch else None
            maps = explain(runner, image.rgb, method=args.method, layer=args.layer,
                           head=args.head, head_fusion=args.head_fusion,
                           discard_ratio=args.discard_ratio, patch=patch, target=args.target)
            for note in maps.notes:
                print(f"note: {note}", file=sys.stderr)
            written += [str(p) for p in save_maps(maps, image.rgb, out_dir, Path(image_path).stem)]
        except OculaError as exc:
            failed += 1
            print(f"failed: {image_path}: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 — one image's problem is reported, not a traceback
            failed += 1
            print(f"failed: {image_path}: {type(exc).__name__}: {exc}", file=sys.stderr)
    _emit(args, {"written": written, "failed": failed},
          "\n".join(written) or "Nothing written.")
    return 1 if failed else 0


def cmd_settings(args) -> int:
    from dataclasses import asdict

    from engine.settings import RemoteCodeGrant

    settings = _settings()
    if args.action == "allow-remote-code":
        settings.allowed_remote_code.append(RemoteCodeGrant(args.repo, args.revision))
        settings.save()
    elif args.action == "set":
        field_type = type(getattr(settings, args.key, None))
        if args.key not in settings.__dataclass_fields__ or args.key == "allowed_remote_code":
            raise UsageError(f"Unknown setting '{args.key}'.")
        value: Any = args.value
        if field_type is bool:
            value = args.value.lower() in ("1", "true", "yes", "on")
        elif field_type is int:
            value = int(args.value)
        setattr(settings, args.key, value)
        settings.save()
    _emit(args, asdict(settings), lambda: "\n".join(
        f"{k} = {v}" for k, v in asdict(settings).items()))
    return 0


# -- parser ------------------------------------------------------------------------------


RUN_HELP = "run a task on images, folders or videos"
EXPLAIN_HELP = "attention maps: what the model looked at"
RUN_EXAMPLES = """examples:
  ocula run detect photos/ --model rtdetr-r18 --out results/ --formats coco,overlay
  ocula run detect --model rtdetr-r18 photos/ --out results/
  ocula run caption photos/ --model distilvit --out captions/
  ocula run --recipe job.toml

Inputs (files, folders, globs, videos) may come before, between or after the options."""


def _add_run_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.epilog = RUN_EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("task", nargs="?", choices=TASK_CHOICES, help="what to do with the inputs")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image or video files, folders (recursive) or globs")
    p.add_argument("--model", "-m", help="catalog id, imported id, or hub repo owner/name[@rev]")
    p.add_argument("--out", "-o", help="output folder (created; inputs are never overwritten)")
    p.add_argument("--recipe", help="run a saved job recipe (TOML)")
    p.add_argument("--save-recipe", metavar="FILE", help="also save this job as a recipe")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--threshold", type=float, help="detect/segment: minimum score (0-1)")
    p.add_argument("--nms-iou", type=float, help="detect: IoU above which boxes are merged")
    p.add_argument("--max-detections", type=int, help="detect: most boxes kept per image")
    p.add_argument("--classes", help="detect: comma-separated class filter / open-vocabulary "
                                     "queries")
    p.add_argument("--formats", help="exports, e.g. coco,yolo,voc,csv,overlay")
    p.add_argument("--prompt", help="caption: text the caption starts from")
    p.add_argument("--max-new-tokens", type=int, help="caption: longest caption in tokens")
    p.add_argument("--num-beams", type=int, help="caption: beam search width (1 = greedy)")
    p.add_argument("--mode", help="segment: semantic | panoptic | instance | promptable | matting")
    p.add_argument("--points", nargs="+", help="segment (SAM): point prompts as x,y")
    p.add_argument("--boxes", nargs="+", help="segment (SAM): box prompts as x0,y0,x1,y1")
    p.add_argument("--tile-size", type=int, help="restore: tile edge in pixels")
    p.add_argument("--tile-overlap", type=int, help="restore: overlap between tiles in pixels")
    p.add_argument("--quality", type=int, help="restore: JPEG/WebP quality (1-100)")
    p.add_argument("--output-format", help="restore: png | jpg | webp | tiff")
    p.add_argument("--every-nth-frame", type=int, help="video: process every Nth frame")
    p.add_argument("--start", type=float, help="video: start time (s)")
    p.add_argument("--end", type=float, help="video: end time (s)")
    p.add_argument("--method", help="explain: attention method (see `ocula explain --help`)")
    p.add_argument("--pixel-limit", type=int,
                   help="largest image accepted, in pixels (default: Settings, 178,956,970)")
    return p


def _add_explain_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", "-m", required=True,
                   help="catalog id, imported id, hub repo, or a path to an .onnx ViT")
    p.add_argument("--method", default="rollout",
                   help="rollout | raw | relevance | cross | similarity | dino | gradcam | "
                        "windowed | cls_similarity | patch_similarity (default: rollout)")
    p.add_argument("--patch", help="clicked point x,y (similarity: click-to-segment)")
    p.add_argument("--target", type=int, help="class index for relevance / Grad-CAM")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--layer", type=int, help="raw: layer index (default: last)")
    p.add_argument("--head", type=int, help="raw: head index (default: heads fused)")
    p.add_argument("--head-fusion", default="mean", choices=("mean", "max", "min"),
                   help="how heads are fused (default: mean)")
    p.add_argument("--discard-ratio", type=float, default=0.0,
                   help="rollout: fraction of the weakest attention dropped per layer")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    return p


# Commands whose positionals (inputs) may come anywhere among the options.
_INTERMIXED: dict[str, tuple[Callable, Callable, str]] = {
    "run": (_add_run_arguments, cmd_run, RUN_HELP),
    "explain": (_add_explain_arguments, cmd_explain, EXPLAIN_HELP),
}


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv; `run` and `explain` accept inputs before, between or after options.

    argparse's subparsers consume positionals in one go, so `run detect --model X in/`
    would leave `in/` unrecognised; those two commands get a standalone parser and
    `parse_intermixed_args`, which collects positionals wherever they are.
    """
    if argv and argv[0] in _INTERMIXED:
        build, func, help_text = _INTERMIXED[argv[0]]
        own = argparse.ArgumentParser(prog=f"ocula {argv[0]}", description=help_text)
        own.add_argument("--json", action="store_true", help="machine-readable output")
        build(own)
        args = own.parse_intermixed_args(argv[1:])
        args.command, args.func, args.self_test = argv[0], func, False
        return args
    return parser.parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocula",
        description="Ocula: vision models on your own computer. Without a command, "
                    "starts the desktop app.")
    parser.add_argument("--version", action="version", version=f"ocula {__version__}")
    parser.add_argument("--self-test", action="store_true",
                        help="run the bundled tiny models through every task offline and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(p_sub, name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = p_sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    models = sub.add_parser("models", help="list, search, download and manage models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = add(msub, "list", cmd_models_list, "list catalog models")
    p.add_argument("--task", choices=MODEL_TASKS)
    p.add_argument("--installed", action="store_true", help="only models in the cache")
    p = add(msub, "search", cmd_models_search, "search the catalog (or the hub with --hub)")
    p.add_argument("query", nargs="?", default="")
    p.add_argument("--task", choices=MODEL_TASKS)
    p.add_argument("--hub", action="store_true", help="search the Hugging Face hub")
    p.add_argument("--limit", type=int, default=30)
    p = add(msub, "info", cmd_models_info, "show what is known about a model")
    p.add_argument("model", help="catalog id, imported id, or hub repo owner/name[@revision]")
    p = add(msub, "pull", cmd_models_pull, "download a model (resumes an interrupted download)")
    p.add_argument("model")
    p.add_argument("--quiet", action="store_true")
    p = add(msub, "rm", cmd_models_rm, "delete a model from the cache")
    p.add_argument("model")
    p = add(msub, "import", cmd_models_import,
            "import a local model: hub-layout folder, .safetensors/.pth checkpoint, or .onnx + .toml")
    p.add_argument("path")
    p.add_argument("--task", choices=MODEL_TASKS,
                   help="what the model does, when its files do not say (features: a backbone "
                        "for attention maps)")
    p.add_argument("--name")
    p = add(msub, "login", cmd_models_login, "store a hub token for gated models")
    p.add_argument("token", nargs="?")
    p = add(msub, "optimize", cmd_models_optimize,
            "export a model to ONNX for the CPU fast path (verified against torch)")
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="export again even if cached")

    p = add(sub, "doctor", cmd_doctor, "show devices, runtimes and what a model would use")
    p.add_argument("--model")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")

    _add_run_arguments(add(sub, "run", cmd_run, RUN_HELP))
    _add_explain_arguments(add(sub, "explain", cmd_explain, EXPLAIN_HELP))

    p = add(sub, "settings", cmd_settings, "show or change engine settings")
    p.add_argument("action", nargs="?", choices=("show", "set", "allow-remote-code"),
                   default="show")
    p.add_argument("key", nargs="?", help="setting name (set) or repo (allow-remote-code)")
    p.add_argument("value", nargs="?", help="value (set) or revision (allow-remote-code)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = _parse(parser, argv)
    if args.self_test:
        from engine.selftest import run_self_test

        return run_self_test()
    if args.command is None:
        from desktop.app import main as gui_main

        return gui_main(argv)
    if args.command == "settings" and args.action == "allow-remote-code":
        if not args.key or not args.value:
            parser.error("allow-remote-code needs REPO and REVISION")
        args.repo, args.revision = args.key, args.value
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ocula models list | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OculaError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # python -m engine.cli
    sys.exit(main())
