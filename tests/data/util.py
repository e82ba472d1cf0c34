"""Helpers for the data_prep tests: temporary source layouts and reading records back."""

from __future__ import annotations

import os
import pathlib
import struct
from typing import Dict, List

import numpy as np
from PIL import Image


def link(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    """Symlinks ``dst`` -> ``src`` (real data is never copied into the repository)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


def save_image(path: pathlib.Path, arr: np.ndarray) -> pathlib.Path:
    """Saves uint8 ``arr`` (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)
    return path


def records(out: pathlib.Path, split: str) -> list:
    """Every decoded record of ``split`` (data_prep.verify.iter_examples)."""
    from data_prep.verify import iter_examples

    return list(iter_examples(str(out), split))


def by_key(out: pathlib.Path, split: str) -> Dict[str, object]:
    return {r.key: r for r in records(out, split)}


def record_offsets(path: pathlib.Path) -> List[int]:
    """Byte offsets of each record's payload in a TFRecord file (8-byte length, 4-byte CRC)."""
    data = path.read_bytes()
    offsets, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        offsets.append(pos + 12)
        pos += 12 + n + 4
    return offsets
