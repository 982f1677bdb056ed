"""The one checkpoint writer and reader (kd_env.checkpoint_format): every failure names the file and the fix."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch

from kd_env.checkpoint_format import (
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointReadError,
    read_checkpoint,
    write_checkpoint,
)

FORMAT = "kd_env.widget/2"
FIX = "save the widget again"


def _read(path: Path, **kwargs: Any) -> dict[str, Any]:
    return read_checkpoint(path, FORMAT, what="kd-env widget checkpoint", fix=FIX, **kwargs)


def test_round_trip_stamps_the_format(tmp_path):
    path = write_checkpoint(tmp_path / "sub" / "w.pt", FORMAT, {"kind": "Widget", "weights": torch.arange(3.0)})
    assert path == tmp_path / "sub" / "w.pt"
    checkpoint = _read(path, kind_key="kind", kind="Widget", required={"weights": torch.Tensor})
    assert checkpoint["format"] == FORMAT and checkpoint["kind"] == "Widget"
    assert torch.equal(checkpoint["weights"], torch.arange(3.0))


def test_missing_file_is_a_file_not_found_error_naming_file_and_fix(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(CheckpointNotFoundError) as caught:
        _read(path, missing_fix="create it with make-widget")
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, CheckpointReadError)
    assert caught.value.path == path
    message = str(caught.value)
    assert str(path) in message and "does not exist" in message and "make-widget" in message
    with pytest.raises(CheckpointNotFoundError, match=FIX):  # without missing_fix, fix is the advice
        _read(path)


def test_truncated_file_is_called_corrupt_or_truncated(tmp_path):
    path = write_checkpoint(tmp_path / "w.pt", FORMAT, {"weights": torch.ones(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError) as caught:
        _read(path)
    message = str(caught.value)
    assert str(path) in message and "corrupt or truncated" in message and message.endswith(f"Fix: {FIX}")
    assert not isinstance(caught.value, FileNotFoundError)
    path.write_bytes(b"not a checkpoint")  # not even a zip: torch falls back to its legacy unpickler
    with pytest.raises(CheckpointReadError, match=r"corrupt or truncated .*Unsupported operand"):
        _read(path)


def test_pickled_objects_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"format": FORMAT, "model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointReadError, match="objects other than tensors") as caught:
        _read(path)
    assert str(path) in str(caught.value) and FIX in str(caught.value)


def test_foreign_file_and_wrong_kind(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointReadError, match=r"foreign\.pt.*is not a kd-env widget checkpoint \(format None"):
        _read(foreign)
    not_a_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_a_dict)
    with pytest.raises(CheckpointReadError, match=r"list\.pt.*holds a list"):
        _read(not_a_dict)
    gadget = write_checkpoint(tmp_path / "gadget.pt", FORMAT, {"kind": "Gadget"})
    with pytest.raises(CheckpointReadError, match=r"gadget\.pt.*holds a Gadget checkpoint, not a Widget"):
        _read(gadget, kind_key="kind", kind="Widget")


def test_other_format_version_is_named_as_such(tmp_path):
    older = write_checkpoint(tmp_path / "old.pt", "kd_env.widget/1", {"weights": torch.ones(2)})
    with pytest.raises(CheckpointReadError) as caught:
        _read(older)
    message = str(caught.value)
    assert str(older) in message and "format version 1" in message and "reads version 2" in message
    assert "not a kd-env widget checkpoint" not in message  # it is one, of another version


def test_missing_or_mistyped_required_entry(tmp_path):
    path = write_checkpoint(tmp_path / "w.pt", FORMAT, {"metadata": [1]})
    with pytest.raises(CheckpointReadError, match="'metadata' entry is missing or of the wrong type"):
        _read(path, required={"metadata": dict})
    with pytest.raises(CheckpointReadError, match="'state_dict' entry"):
        _read(path, required={"state_dict": dict})


def test_unreadable_file_is_a_permission_error_not_corrupt(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "w.pt", FORMAT, {})

    def denied(*args: Any, **kwargs: Any) -> Any:  # what a non-root user gets for a 0600 file of root's
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointPermissionError) as caught:
        _read(path)
    assert isinstance(caught.value, PermissionError)
    message = str(caught.value)
    assert "permission denied" in message and "chmod a+r" in message and "corrupt" not in message
    assert path.exists()


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_checkpoint(tmp_path / "w.pt", FORMAT, {"weights": torch.ones(3)})
    before = path.read_bytes()
    with pytest.raises(Exception, match="lambda|pickle|local"):  # torch.save cannot pickle a lambda
        write_checkpoint(path, FORMAT, {"weights": torch.zeros(3), "hook": lambda: None})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]  # no .w.pt.<pid>.<hex>.tmp left
    with pytest.raises(Exception, match="lambda|pickle|local"):
        write_checkpoint(tmp_path / "new.pt", FORMAT, {"hook": lambda: None})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]  # a failed first write leaves nothing


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'format' entry"):
        write_checkpoint(tmp_path / "w.pt", FORMAT, {"format": "x/1"})
    with pytest.raises(ValueError, match="<name>/<version>"):
        write_checkpoint(tmp_path / "w.pt", "kd_env.widget", {})
    with pytest.raises(ValueError, match="kind_key and kind together"):
        _read(tmp_path / "w.pt", kind_key="kind")
    assert not (tmp_path / "w.pt").exists()
