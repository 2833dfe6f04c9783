"""The `ocula` entry point: the command line, which opens the desktop app when it is given
no command. It lives in desktop/ because the engine (engine.cli) never imports the GUI;
the GUI is handed to it."""
from __future__ import annotations

import sys
from collections.abc import Sequence


def _gui(argv: list[str]) -> int:
    from desktop.app import main as gui_main  # Qt loads only when the app is wanted

    return gui_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from engine.cli import main as cli_main

    return cli_main(argv, gui=_gui)


if __name__ == "__main__":  # python -m desktop.launcher
    sys.exit(main())
