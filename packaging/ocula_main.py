"""Entry script of the frozen app (both executables: `ocula` and `ocula-cli`).

Without arguments it opens the desktop app; with arguments it is the `ocula` command
line (`--version`, `--self-test`, `run`, `models`, ...), exactly like the pip-installed
`ocula` entry point (desktop.launcher:main).
"""

import multiprocessing
import os
import sys


def _main() -> int:
    # torch / PyAV may start helper processes; in a frozen app they re-enter here.
    multiprocessing.freeze_support()
    # A windowed executable (Windows/macOS, no console) has no stdout/stderr; progress
    # bars and prints must not fail there, so they go nowhere instead.
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
    from desktop.launcher import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_main())
