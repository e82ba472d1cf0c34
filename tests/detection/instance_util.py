"""Helpers for the instance-data tests: reading converted instance records back."""

from __future__ import annotations

import json
import pathlib
from typing import Dict

import numpy as np


def read_instances(out: pathlib.Path, split: str) -> Dict[str, dict]:
    """``{key: decoded example as NumPy}`` of every record of ``split``, via the library decoder."""
    import tensorflow as tf

    from keras_seg.detection.data import decode_instance_example

    manifest = json.loads((out / "manifest.json").read_text())
    found = {}
    for name in manifest["splits"][split]["files"]:
        for raw in tf.data.TFRecordDataset(str(out / name)):
            ex = {k: v.numpy() for k, v in decode_instance_example(raw, name).items()}
            found[ex["key"].decode()] = ex
    return found


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """``[min_row, min_col, max_row + 1, max_col + 1]`` of each mask, typed again here (not imported)."""
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return np.asarray(out, np.float32).reshape(-1, 4)
