"""`ocula` command line: a thin front end over the engine.

Everything heavy is imported inside the command that needs it, so `ocula --help`
and `ocula doctor` answer quickly. Exit codes: 0 ok, 1 some inputs failed or an
operation failed, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from typing import Any, Callable, Sequence

from engine import __version__
from engine.cli_output import emit as _emit
from engine.cli_output import jsonable as _jsonable
from engine.cli_output import user_settings as _settings
from engine.errors import OculaError, UsageError
from engine.format import human_bytes, human_params

from engine.vocabulary import JOB_TASKS, MODEL_TASKS, OPTIMIZE_PRECISIONS, PRECISION_CHOICES


# -- helpers ---------------------------------------------------------------------------


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
    from engine.runtimes.optimized import list_variants

    rows = [(c, is_installed(c, settings=settings)) for c in cards]
    if args.installed:
        rows = [(c, inst) for c, inst in rows if inst]
    variants = {c.id: list_variants(c) for c, _ in rows}

    def variant_words(card) -> str:  # "int8 (recommended, mAP@0.5 0.995)"
        words = []
        for v in variants[card.id]:
            figures = ", ".join(f"{f['metric']} {f['value']:.4g}" for f in v.quality)
            words.append(f"{v.precision} ({'recommended' if v.recommended else 'not recommended'}"
                         + (f", {figures}" if figures else "") + ")")
        return "; ".join(words)

    from engine.catalog.requirements import FULL_BUILD_PIP, missing_packages, needs_full_build

    full_only = {c.id for c, _ in rows if needs_full_build(c)}

    def text() -> str:
        lines = [(f"{'ID':28} {'TASKS':18} {'RUNTIME':15} {'SIZE':>9} {'PARAMS':>7}  LICENSE  "
                  f"INSTALLED  VARIANTS")]
        for c, inst in rows:
            lic = c.license + {True: "", False: " (non-commercial)",
                               None: " (commercial use unclear)"}[c.commercial_use]
            state = "needs the full build" if c.id in full_only else "yes" if inst else ""
            lines.append(f"{c.id:28} {','.join(c.tasks):18} {c.runtime:15} "
                         f"{human_bytes(c.download_bytes):>9} {human_params(c.params):>7}  "
                         f"{lic}  {state}  {variant_words(c)}".rstrip())
        if full_only:
            lines.append(f"{len(full_only)} models run on PyTorch, which this Lite install does not "
                         f"include ({FULL_BUILD_PIP} adds it); the others run here.")
        return "\n".join(lines)

    _emit(args, [dict(_card_dict(c), installed=inst, needs_full_build=c.id in full_only,
                      missing_packages=missing_packages(c),
                      variants=[v.manifest for v in variants[c.id]]) for c, inst in rows], text)
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

    settings = _settings()
    card = load_catalog().resolve(args.model, settings=settings)
    installed = is_installed(card, settings=settings)
    from engine.runtimes.optimized import list_variants

    variants = list_variants(card)
    data = dict(_card_dict(card), installed=installed,
                disk_bytes=disk_usage(card, settings=settings) if installed else 0,
                variants=[v.manifest for v in variants])

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
        lines += _variant_lines(card)
        if card.description:
            lines.append("  " + card.description)
        return "\n".join(lines)

    _emit(args, data, text)
    return 0


def cmd_models_pull(args) -> int:
    from engine.catalog.catalog import load_catalog
    from engine.hub import fetch

    settings = _settings()
    card = load_catalog().resolve(args.model, settings=settings)
    from engine.catalog.requirements import require_runnable

    require_runnable(card)  # a PyTorch model on the Lite install: nothing it could run
    if card.package:  # weights that ship inside a Python package: nothing to download
        from engine.catalog import packaged

        path = packaged.locate(card)
        _emit(args, {"model": card.id, "path": str(path), "package": card.package},
              f"{card.id}: nothing to download; its weights ship with the {card.package} "
              f"package ({path})")
        return 0
    bars = _ProgressBars(enabled=not args.json and not args.quiet)
    notes: list[str] = []  # damaged cached files downloaded again ("repaired")
    try:
        path = fetch(card, progress=bars, settings=settings, on_notice=notes.append)
    finally:
        bars.close()
    _emit(args, {"model": card.id, "path": str(path), "repaired": notes},
          "\n".join([*notes, f"{card.id}: ready at {path}"]))
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

    card = load_catalog().resolve(args.model)
    settings = _settings()
    if args.precision != "fp32":
        return _optimize_variant(args, card, settings)
    if args.calibration:
        raise UsageError("--calibration is for int8/fp16 variants (--precision int8 or fp16); "
                         "the fp32 export is verified on a built-in sample.")
    from engine.export_onnx import optimize, sample_image
    from engine.runtimes import load_runner

    settings.use_onnx_fast_path = False  # export from the torch model itself
    runner = load_runner(card, device="cpu", precision="fp32", settings=settings)
    path = optimize(card, runner, sample_image(), force=args.force)
    _emit(args, {"model": card.id, "onnx": str(path)}, f"{card.id}: ONNX fast path at {path}")
    return 0


def _optimize_variant(args, card, settings) -> int:
    from engine.export_quantize import calibration_images, make_variant

    images, where = calibration_images(args.calibration)
    variant = make_variant(card, args.precision, images, settings=settings, calibration=where,
                           force=args.force)
    data = dict(variant.manifest, model=card.id, path=str(variant.folder))
    lines = [f"{card.id}: {variant.summary()}",
             f"  made from: {variant.manifest.get('recipe_reason', '')}; calibration: {where}",
             f"  stored in {variant.folder}"]
    if variant.latency_ms:
        lines.append(f"  latency per image on this CPU: fp32 {variant.latency_ms['fp32']:.1f} ms, "
                     f"{variant.precision} {variant.latency_ms['variant']:.1f} ms")
    from engine.runtimes.optimized import recommended_variant

    auto = recommended_variant(card)
    lines.append(f"  precision auto on the CPU runs {auto.precision if auto else 'fp32'}; "
                 f"--precision {variant.precision} always runs this variant")
    _emit(args, data, "\n".join(lines))
    return 0


def _variant_lines(card) -> list[str]:
    """What `ocula models info` and `ocula doctor --model` say about a model's variants."""
    from engine.runtimes.optimized import list_variants

    return [f"  variant {v.summary()}" for v in list_variants(card)]


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
        from engine.runtimes.optimized import list_variants

        variants = list_variants(card)
        payload["model"] = {"id": card.id, "placement": placement,
                            "variants": [v.manifest for v in variants]}
        text += f"\n\nModel {card.id}:\n" + describe_plan(card, placement, report)
        text += "".join("\n" + line for line in _variant_lines(card))
        if card.repo and not card.local_path and not card.package:
            from engine.hub import cache_state

            states = cache_state(card, settings=_settings())
            payload["model"]["cache"] = states
            text += "\nCache: " + (", ".join(f"{name} {state}" for name, state
                                             in sorted(states.items())) or "nothing cached")
    _emit(args, payload, text)
    return 0


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


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv. Task commands (`ocula detect …`, `ocula run …`) get their own parser,
    built from the task's options (engine.cli_tasks), which takes inputs anywhere among
    the options: argparse's subparsers consume positionals in one go."""
    if argv and (argv[0] in JOB_TASKS or argv[0] == "run"):
        from engine.cli_tasks import cmd_task, parse_task_argv

        args = parse_task_argv(argv[0], argv[1:])
        args.command, args.func, args.self_test = argv[0], cmd_task, False
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
    p.add_argument("--precision", default="fp32", choices=OPTIMIZE_PRECISIONS,
                   help="fp32: the verified ONNX export; int8 / fp16: a quantized or half-"
                        "precision variant, measured against fp32 on the calibration images")
    p.add_argument("--calibration", metavar="FOLDER",
                   help="your own images to calibrate and measure the variant on (default: "
                        "a bundled synthetic set)")

    p = add(sub, "doctor", cmd_doctor, "show devices, runtimes and what a model would use")
    p.add_argument("--model")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)

    from engine.cli_jobs import add_jobs_commands

    add_jobs_commands(sub, add)

    # Task commands: listed here for `ocula --help`; parsed by engine.cli_tasks (_parse).
    from engine.cli_tasks import TASK_HELP

    for task in JOB_TASKS:
        sub.add_parser(task, help=TASK_HELP[task], add_help=False)
    sub.add_parser("run", help="run a saved recipe (--recipe FILE), or `run TASK …`",
                   add_help=False)

    p = add(sub, "settings", cmd_settings, "show or change engine settings")
    p.add_argument("action", nargs="?", choices=("show", "set", "allow-remote-code"),
                   default="show")
    p.add_argument("key", nargs="?", help="setting name (set) or repo (allow-remote-code)")
    p.add_argument("value", nargs="?", help="value (set) or revision (allow-remote-code)")
    return parser


def main(argv: Sequence[str] | None = None, *,
         gui: Callable[[list[str]], int] | None = None) -> int:
    """The `ocula` command line. Without a command it starts `gui` (the desktop app, which
    desktop.launcher passes in: the engine never imports the GUI), else prints the help."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = _parse(parser, argv)
    if args.self_test:
        from engine.selftest import run_self_test

        return run_self_test()
    if args.command is None:
        if gui is None:
            parser.print_help()
            return 0
        return gui(argv)
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
        return _report(args, exc)
    except sqlite3.DatabaseError as exc:  # the job store went bad under a running command
        from engine.jobs.store import default_store_path, store_error

        return _report(args, store_error(default_store_path(), exc))


def _report(args, exc: OculaError) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
    else:
        print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":  # python -m engine.cli
    sys.exit(main())
