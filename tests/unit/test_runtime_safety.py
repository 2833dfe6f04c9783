"""Pickle checkpoints: plain weights load, anything that could run code is refused unrun."""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from engine.errors import UnsafeCheckpointError
from engine.runtimes.pickle_safety import safe_torch_load, scan_pickle_checkpoint


def weights() -> dict:
    torch.manual_seed(0)
    return collections.OrderedDict(
        conv=torch.randn(4, 3, 3, 3),
        half=torch.randn(3).half(),
        bf=torch.randn(2).bfloat16(),
        ids=torch.arange(5),
        flags=torch.tensor([True, False]),
        shape_info=torch.Size([1, 2]),
    )


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_plain_weights_pass_and_load_equal(tmp_path, zipped):
    path = tmp_path / "w.pth"
    state = weights()
    torch.save(
        {"state_dict": state, "epoch": 3, "names": ["a", "b"]},
        path,
        _use_new_zipfile_serialization=zipped,
    )
    scan_pickle_checkpoint(path)
    loaded = safe_torch_load(path)
    assert loaded["epoch"] == 3 and loaded["names"] == ["a", "b"]
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert (
                torch.equal(loaded["state_dict"][key], value)
                and loaded["state_dict"][key].dtype == value.dtype
            )
    assert loaded["state_dict"]["shape_info"] == torch.Size([1, 2])


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_code_in_a_checkpoint_is_refused_and_never_runs(tmp_path, zipped):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**weights(), "x": Payload(marker)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system|nt\.system"):
        scan_pickle_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(path)
    assert not marker.exists()


def test_non_weight_objects_are_refused(tmp_path):
    path = tmp_path / "args.pth"
    torch.save({"params": weights(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        safe_torch_load(path)


def test_stack_global_through_the_memo_is_resolved(tmp_path):
    """posix.system assembled from a memoised string (what obfuscated payloads do)."""
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()

    def short_unicode(text: bytes) -> bytes:
        return b"\x8c" + struct.pack("<B", len(text)) + text

    data = (
        b"\x80\x04"
        + short_unicode(b"posix")
        + b"\x94"
        + b"0"  # push, memoize, pop
        + short_unicode(b"unrelated")
        + b"0"
        + b"h\x00"
        + short_unicode(b"system")
        + b"\x93"  # BINGET 0, name, STACK_GLOBAL
        + short_unicode(command)
        + b"\x85"
        + b"R"
        + b"."
    )
    path = tmp_path / "raw.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):
        scan_pickle_checkpoint(path)
    assert not marker.exists()
    # the same bytes would really run the command through a plain unpickler: the test is real
    assert os.name != "posix" or pickle.loads(data) == 0
    assert os.name != "posix" or marker.exists()


def test_unreadable_archive_is_refused(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"PK\x03\x04not really a zip")
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(path)


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path):
    from engine.errors import UnsupportedModelError

    path = tmp_path / "w.pth"
    torch.save(weights(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-200:])  # damaged in the middle
    with pytest.raises((UnsupportedModelError, UnsafeCheckpointError)):
        safe_torch_load(path)
