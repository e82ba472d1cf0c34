"""keras_seg.fileio: JSON and text written through a temporary file and a rename."""

import json
import os

import pytest

from keras_seg.fileio import atomic_write_json, atomic_write_text


def test_atomic_writes_replace_and_leave_no_temporary(tmp_path):
    path = str(tmp_path / "m.json")
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": [1, 2]})
    assert json.load(open(path, encoding="utf-8")) == {"b": [1, 2]}
    assert open(path, encoding="utf-8").read().endswith("\n")
    atomic_write_text(str(tmp_path / "f.txt"), "--model=enet\n")
    assert sorted(os.listdir(tmp_path)) == ["f.txt", "m.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "m.json")
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})  # not JSON-serialisable: fails before the rename
    assert json.load(open(path, encoding="utf-8")) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]
