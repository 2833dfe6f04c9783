"""Ocula's on-device engine. Pure Python + torch/onnxruntime; never imports Qt.

Heavy libraries (torch, transformers, onnxruntime) are imported lazily, inside the
functions that load models, so that `ocula --help` and `ocula doctor` stay fast.
"""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("ocula")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"
