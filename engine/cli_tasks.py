"""`ocula caption|detect|segment|restore|explain …` (and `ocula run TASK …`, `ocula run
--recipe FILE`): one job per command, its flags built from the task's options dataclass
(engine.options), so every option has its type, range, default and help in one place.

Inputs may come before, between or after the options (`parse_intermixed_args`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.errors import UsageError
from engine.options import Option, options_class, options_of
from engine.vocabulary import DEVICE_FAMILIES, JOB_TASKS, PRECISION_CHOICES

TASK_HELP = {
    "caption": "caption images and videos (.txt sidecars + captions.jsonl)",
    "detect": "find objects (COCO, YOLO, VOC, CSV, overlays; videos with tracks)",
    "segment": "segment images (label maps, COCO RLE, overlays, cut-outs)",
    "restore": "upscale or denoise images, tiled for any size",
    "explain": "attention maps: what the model looked at",
}
TASK_EXAMPLES = {
    "caption": ["ocula caption photos/ --model distilvit --out captions/"],
    "detect": ["ocula detect photos/ --model rtdetr-r18 --out results/ --formats coco,overlay",
               'ocula detect photos/ --model owlv2-base --classes "red car,dog" --out det/',
               "ocula detect clip.mp4 --model rtdetr-r18 --out video/ --every-nth-frame 2"],
    "segment": ["ocula segment photos/ --model segformer-b0-ade --out seg/",
                "ocula segment photo.jpg --model slimsam-77 --points 320,240 --out seg/"],
    "restore": ["ocula restore photos/ --model swin2sr-x2 --out big/ --tile-size 256"],
    "explain": ["ocula explain cat.jpg --model dino-vits16 --method rollout --out maps/",
                "ocula explain cat.jpg --model dino-vits16 --method raw --layer 11 --head 3 "
                "--out maps/"],
}
RESTART_HELP = ("start a fresh job even if an unfinished one with the same command and "
                "output folder exists (by default that one is resumed: finished inputs are "
                "not redone)")
EXECUTOR_HELP = {
    "--executor": "where the job runs: local (this machine) or ray (a Ray cluster; "
                  "pip install 'ocula[cluster]') [default: local]",
    "--address": "ray: the cluster to join, `auto` (the one `ray start` runs here) or "
                 "ray://HOST:10001 [default: start a local Ray runtime]",
    "--workers": "ray: model replicas [default: the cluster's CPUs / threads per worker]",
    "--threads-per-worker": "ray: torch/onnxruntime threads per replica "
                            "[default: CPUs / workers]",
    "--gpus-per-worker": "ray: GPUs per replica (Ray's num_gpus) [default: 0]",
}
GROUP_TITLES = {"task": "{task} options", "output": "output files", "video": "video inputs",
                "advanced": "advanced"}


def _kind_arguments(option: Option) -> dict[str, Any]:
    """argparse settings for one option kind; values stay raw for `parse_options`."""
    kind = option.kind
    if kind == "int":
        return {"type": int, "metavar": "N"}
    if kind == "float":
        return {"type": float, "metavar": "X"}
    if kind == "bool":
        return {"action": argparse.BooleanOptionalAction}
    if kind == "choice":
        return {"choices": option.choices, "metavar": "{" + ",".join(option.choices or ()) + "}"}
    if kind in ("str_list", "formats"):
        return {"metavar": "A,B"}
    if kind == "points":
        return {"nargs": "+", "metavar": "X,Y"}
    if kind == "boxes":
        return {"nargs": "+", "metavar": "X0,Y0,X1,Y1"}
    if kind == "point":
        return {"metavar": "X,Y"}
    if kind == "time_range":
        return {"metavar": "START[,END]"}
    return {"metavar": "TEXT"}


def _help(option: Option) -> str:
    if option.default is None:
        shown = option.none_label
    elif isinstance(option.default, bool):
        shown = "on" if option.default else "off"
    else:
        shown = str(option.default)
    if not shown or "default" in option.help:  # the help already says what the default is
        return option.help
    return f"{option.help} [default: {shown}]"


def add_task_arguments(parser: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    """The job flags shared by every task, then one flag per field of the task's options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:\n" + "\n".join(f"  {e}" for e in TASK_EXAMPLES[task]) + (
        "\n\nInputs (files, folders, globs, videos) may come before, between or after the "
        "options.")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image or video files, folders (recursive) or globs")
    job = parser.add_argument_group("job")
    job.add_argument("--model", "-m", help="catalog id, imported id, hub repo owner/name[@rev]"
                     + (", or a path to an .onnx ViT" if task == "explain" else ""))
    job.add_argument("--out", "-o", help="output folder (created; inputs are never overwritten)")
    job.add_argument("--device", default="auto",
                     help=f"{' | '.join(DEVICE_FAMILIES)} | cuda:N [default: auto = Settings]")
    job.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                     help="[default: auto = Settings]")
    job.add_argument("--save-recipe", metavar="FILE", help="also save this job as a recipe")
    job.add_argument("--restart", action="store_true", help=RESTART_HELP)
    job.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_arguments(parser.add_argument_group("executor"))
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in options_of(options_class(task)):
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(
                GROUP_TITLES[option.group].format(task=task))
        group.add_argument(option.flag, dest=f"opt_{option.name}", default=None,
                           help=_help(option), **_kind_arguments(option))
    parser.set_defaults(task=task, recipe=None)
    return parser


def add_recipe_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("task_or_recipe", nargs="?", metavar="TASK",
                        help=f"{' | '.join(JOB_TASKS)} (then that command's arguments)")
    parser.add_argument("--recipe", help="run a saved job recipe (TOML)")
    parser.add_argument("--restart", action="store_true", help=RESTART_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_arguments(parser.add_argument_group("executor (overrides the recipe's)"))
    parser.set_defaults(task=None, save_recipe=None)
    return parser


def add_executor_arguments(group) -> None:
    """--executor and the Ray executor's settings (engine.jobs.spec.ExecutorChoice)."""
    from engine.jobs.spec import EXECUTORS

    group.add_argument("--executor", choices=EXECUTORS, default=None,
                       help=EXECUTOR_HELP["--executor"])
    group.add_argument("--address", default=None, help=EXECUTOR_HELP["--address"])
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help=EXECUTOR_HELP["--workers"])
    group.add_argument("--threads-per-worker", type=int, default=None, metavar="N",
                       help=EXECUTOR_HELP["--threads-per-worker"])
    group.add_argument("--gpus-per-worker", type=float, default=None, metavar="X",
                       help=EXECUTOR_HELP["--gpus-per-worker"])


def executor_from_args(args: argparse.Namespace, default=None):
    """The ExecutorChoice the flags give (the ones not given keep `default`'s values)."""
    from dataclasses import replace

    from engine.jobs.spec import ExecutorChoice, RecipeError

    choice = default or ExecutorChoice()
    given = {key: getattr(args, key, None) for key in
             ("address", "workers", "threads_per_worker", "gpus_per_worker")}
    given = {key: value for key, value in given.items() if value is not None}
    name = getattr(args, "executor", None)
    if name is not None and name != choice.name:
        choice = ExecutorChoice(name=name)  # another executor: the recipe's settings go
    try:
        return replace(choice, **given).validate()
    except RecipeError as exc:
        raise UsageError(str(exc)) from exc


def parse_task_argv(command: str, argv: list[str]) -> argparse.Namespace:
    """`ocula TASK …` / `ocula run TASK …` / `ocula run --recipe FILE`."""
    if command == "run" and argv and argv[0] in JOB_TASKS:
        command, argv = argv[0], argv[1:]
    if command == "run":
        parser = argparse.ArgumentParser(prog="ocula run", description=(
            "run a saved recipe, or a task: `ocula run TASK …` is `ocula TASK …`"))
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        args = add_recipe_arguments(parser).parse_args(argv)
        if args.task_or_recipe is not None:
            parser.error(f"unknown task '{args.task_or_recipe}'; choose one of "
                         f"{', '.join(JOB_TASKS)}")
        if not args.recipe:
            parser.error("give a TASK (ocula run detect …) or --recipe FILE")
        return args
    parser = argparse.ArgumentParser(prog=f"ocula {command}", description=TASK_HELP[command])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return add_task_arguments(parser, command).parse_intermixed_args(argv)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave, by option name (absent flags keep the task's defaults)."""
    return {name[4:]: value for name, value in vars(args).items()
            if name.startswith("opt_") and value is not None}


def cmd_task(args: argparse.Namespace) -> int:
    """Run one job (a task command or a recipe) to the end; 1 if some inputs failed.

    The same command again on the same output folder resumes the job it left unfinished
    (killed, crashed, cancelled): finished inputs are kept, the rest are done. `--restart`
    starts a fresh job instead."""
    from engine.cli_output import user_settings
    from engine.jobs import JobSpec, resume_job, run_job
    from engine.jobs.executors import job_run_for

    if args.recipe:
        spec = JobSpec.from_toml(args.recipe)
    else:
        spec = JobSpec(task=args.task, model=args.model or "", inputs=list(args.inputs),
                       output_dir=args.out or "", options=options_from_args(args),
                       device=args.device, precision=args.precision)
        if not args.model or not args.inputs or not args.out:
            raise UsageError(f"ocula {args.task} needs --model, at least one INPUT and --out "
                             f"(see `ocula {args.task} --help`).")
    spec.executor = executor_from_args(args, spec.executor)
    spec.validate()
    job_run = job_run_for(spec.executor)  # no Ray installed: said here, before any work
    settings = user_settings()
    _check_model_fits_task(spec, settings)  # a lookup or usage error exits 2 before any work
    store = open_store()
    if args.save_recipe:
        from pathlib import Path

        from engine.errors import InputError

        try:
            Path(args.save_recipe).write_text(spec.to_toml(), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{args.save_recipe}: the recipe cannot be saved "
                             f"({exc.strerror}).") from exc
    job_id = None if getattr(args, "restart", False) else store.find_unfinished(spec)
    if job_id is not None:
        from engine.errors import InputError

        pid = store.live_pid(job_id)
        if pid is not None:
            raise InputError(f"job {job_id} (this command, into {spec.output_dir}) is still "
                             f"running in process {pid}; wait for it (`ocula jobs show "
                             f"{job_id}`), or choose another --out.")
        say_resuming(store, job_id)
        store.mark_unexpanded(job_id)  # inputs added to the folders since are queued too
        return run_printed(args, lambda printer: resume_job(
            job_id, on_event=printer, store=store, settings=settings, job_run=job_run))
    return run_printed(args, lambda printer: run_job(
        spec, on_event=printer, store=store, settings=settings, job_run=job_run))


def open_store():
    """The user's job store, opened before any work: a damaged or unwritable store is one
    message (engine.jobs.store.JobStoreDamaged names `ocula jobs reset-store`)."""
    from engine.jobs import JobStore

    return JobStore()


def say_resuming(store, job_id: str) -> None:
    counts = store.counts(job_id)
    total = sum(counts.values())
    failed = f", {counts['failed']} failed" if counts["failed"] else ""
    print(f"resuming job {job_id} ({counts['done']} of {total} done{failed}); "
          f"--restart starts a fresh job", file=sys.stderr)


def run_printed(args: argparse.Namespace, run) -> int:
    """Run a job (`run(printer)` returns its JobSummary) with a progress bar; print its
    notes and summary (text or --json). 1 if some inputs failed."""
    from engine.cli_output import emit

    printer = JobPrinter(quiet=getattr(args, "quiet", False) or getattr(args, "json", False))
    try:
        summary = run(printer)
    finally:
        printer.close()
    for note in printer.notes:
        print(f"note: {note}", file=sys.stderr)
    emit(args, summary.to_dict(), lambda: printer.summary_text(summary))
    return 1 if summary.failed else 0


def _check_model_fits_task(spec, settings=None) -> None:
    """Resolve the job's model now: an unknown id or a model for another task is a usage
    error (exit 2) reported before a progress bar or an output folder appears."""
    from pathlib import Path

    from engine.catalog.catalog import load_catalog

    if spec.task == "explain" and spec.model.lower().endswith(".onnx") \
            and Path(spec.model).expanduser().is_file():
        return  # an .onnx ViT file: explained from the graph itself
    card = load_catalog().resolve(spec.model, settings=settings)
    note_offline_card(card)
    if spec.task != "explain" and not card.supports(spec.task):
        raise UsageError(f"Model '{card.id}' does {', '.join(card.tasks)}, not {spec.task}. "
                         f"Pick a {spec.task} model (`ocula models list --task {spec.task}`).")


def note_offline_card(card) -> None:
    """A hub model resolved from the cache in offline mode: say which revision is used."""
    from engine.catalog.hub_infer import offline_note

    note = offline_note(card)
    if note:
        print(f"note: {note}", file=sys.stderr)


class JobPrinter:
    """Renders JobEvents as one progress bar on stderr; failures as lines; keeps notes."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        self.failures: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def __call__(self, event) -> None:
        if event.kind == "item_failed":
            self.failures.append((str(event.item), event.message))
            if not self.quiet:
                self._write(f"failed: {event.item}: {event.message}")
        result = getattr(getattr(event, "result", None), "result", None)  # ItemResult.result
        for note in getattr(result, "notes", None) or ():  # e.g. attention maps' notes
            if isinstance(note, str) and note not in self.notes:
                self.notes.append(note)
        if self.quiet or event.kind not in ("progress", "item_done", "item_failed"):
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=event.total, unit="item", file=sys.stderr, leave=False)
        if event.kind == "progress" and hasattr(event.result, "workers"):  # Ray's ClusterStatus
            self.bar.set_postfix_str(event.message, refresh=False)
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
        text = f"{summary.done} done, {summary.failed} failed. Outputs in {summary.output_dir}"
        if summary.report_json:
            text += f"\nReport: {summary.report_json}"
        return text
