"""One typed contract per task: every option of engine.options reaches both front ends with
the same default. The CLI's flags and the GUI's controls are walked from the dataclass, so a
field added to a task's options without a flag or a control fails here."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from engine.cli import _parse, build_parser
from engine.cli_tasks import add_task_arguments, options_from_args
from engine.jobs import JobSpec
from engine.options import OPTIONS, defaults, options_of, parse_options
from engine.vocabulary import EXPLAIN_METHODS, JOB_TASKS

pytestmark = pytest.mark.usefixtures("qapp")  # pytest-qt's QApplication


def test_every_job_task_has_one_options_dataclass():
    assert set(OPTIONS) == set(JOB_TASKS)
    for task, cls in OPTIONS.items():
        assert dataclasses.is_dataclass(cls) and cls.task == task
        for option in options_of(cls):
            assert option.help, f"{task}.{option.name} has no help text"


@pytest.mark.parametrize("task", JOB_TASKS)
def test_the_cli_offers_every_option_with_the_dataclass_default(task):
    parser = add_task_arguments(argparse.ArgumentParser(), task)
    flags = parser._option_string_actions  # noqa: SLF001 — what argparse will accept
    for option in options_of(OPTIONS[task]):
        assert option.flag in flags, f"ocula {task} has no {option.flag}"
        assert option.help.split(" (")[0] in (flags[option.flag].help or "")
    args = _parse(build_parser(), [task, "in.png", "--model", "m", "--out", "o"])
    spec = JobSpec(task, "m", ["in.png"], "o", options=options_from_args(args))
    assert spec.options == defaults(task)  # no flag given = exactly the dataclass defaults


@pytest.mark.parametrize("task", JOB_TASKS)
def test_the_gui_form_offers_every_option_with_the_dataclass_default(task):
    from desktop.views.task_panel import TaskPanel

    panel = TaskPanel()
    form = panel.forms[task]
    for option in options_of(OPTIONS[task]):
        assert option.name in form.controls, f"the {task} form has no control for {option.name}"
        assert form.value(option.name) == option.default, (
            f"{task}.{option.name}: the form starts at {form.value(option.name)!r}, "
            f"the dataclass default is {option.default!r}")
    assert parse_options(task, form.options()) == defaults(task)


def test_a_gui_choice_is_what_the_cli_flag_would_give():
    """Set a few controls; the job spec from the form equals the one from the flags."""
    from desktop.views.task_panel import TaskPanel

    panel = TaskPanel()
    form = panel.forms["restore"]
    form.tile_size.setValue(256)
    form.set_value("output_format", "webp")
    form.set_value("quality", 90)
    form.set_value("time_range", "2,5")
    gui = parse_options("restore", form.options())
    args = _parse(build_parser(), ["restore", "x.png", "-m", "m", "-o", "o", "--tile-size",
                                   "256", "--output-format", "webp", "--quality", "90",
                                   "--time-range", "2,5"])
    assert gui == parse_options("restore", options_from_args(args))
    assert gui.tile_size == 256 and gui.time_range == (2.0, 5.0)


def test_the_explain_picker_lists_every_method_once():
    from desktop.views.task_panel import TaskPanel

    panel = TaskPanel()
    combo = panel.explain_form.method
    assert [combo.itemData(i) for i in range(combo.count())] == list(EXPLAIN_METHODS)


def test_gui_device_and_precision_choices_are_accepted_by_a_job():
    from desktop.views.task_panel import TaskPanel

    panel = TaskPanel()
    for i in range(panel.device.count()):
        for j in range(panel.precision.count()):
            JobSpec("detect", "m", ["x"], "o", device=panel.device.itemText(i),
                    precision=panel.precision.itemText(j)).validate()
