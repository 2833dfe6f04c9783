"""Ocula's PySide6 front end (see desktop/app.py). Engine work goes through desktop.workers."""
from desktop import qt_compat

qt_compat.install()  # before any other Qt use: see qt_compat for the PySide6 6.12.0 bug
