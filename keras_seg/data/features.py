"""TFRecord feature keys and parse spec: the single source of truth.

``data_prep`` writes records with :func:`make_example`; :mod:`keras_seg.data.decode`
parses them with :func:`parse_spec`. Nothing else spells a feature key.

Record layout (one ``tf.train.Example`` per image):

* ``image/encoded``: the source PNG or JPEG bytes, unchanged.
* ``image/format``: ``b"png"`` or ``b"jpeg"``.
* ``image/height``, ``image/width``: int64.
* ``image/key``: a unique id, e.g. the file stem (Cityscapes: ``frankfurt_000000_000294``).
* ``image/meta``: JSON object of dataset-specific fields (city, frame id, ...); ``{}`` if none.
* ``label/encoded``: an 8-bit single-channel PNG of class indices (the ignore label too).
* ``weight/raw``: optional float32 little-endian per-pixel loss weights, H*W values.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional

import numpy as np
import tensorflow as tf

IMAGE = "image/encoded"
IMAGE_FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
KEY = "image/key"
META = "image/meta"
LABEL = "label/encoded"
WEIGHT = "weight/raw"

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def shard_name(split: str, index: int, count: int) -> str:
    """File name of shard ``index`` of ``count`` for ``split``."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _bytes(v: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))


def make_example(
    *,
    image: bytes,
    image_format: str,
    height: int,
    width: int,
    label_png: bytes,
    key: str,
    meta: Optional[Mapping] = None,
    weight: Optional[np.ndarray] = None,
) -> tf.train.Example:
    """Builds one serialisable record; see the module docstring for the layout."""
    feats = {
        IMAGE: _bytes(image),
        IMAGE_FORMAT: _bytes(image_format.encode()),
        HEIGHT: _int(height),
        WIDTH: _int(width),
        KEY: _bytes(key.encode()),
        META: _bytes(json.dumps(dict(meta or {}), sort_keys=True).encode()),
        LABEL: _bytes(label_png),
    }
    if weight is not None:
        w = np.asarray(weight, dtype="<f4")
        if w.shape != (height, width):
            raise ValueError(f"weight map shape {w.shape} != image size {(height, width)} for {key}")
        feats[WEIGHT] = _bytes(w.tobytes())
    return tf.train.Example(features=tf.train.Features(feature=feats))


def parse_spec(with_weights: bool) -> dict:
    """The ``tf.io.parse_single_example`` spec; ``with_weights`` comes from the manifest."""
    spec = {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
        KEY: tf.io.FixedLenFeature([], tf.string),
        META: tf.io.FixedLenFeature([], tf.string, default_value=b"{}"),
        LABEL: tf.io.FixedLenFeature([], tf.string),
    }
    if with_weights:
        spec[WEIGHT] = tf.io.FixedLenFeature([], tf.string)
    return spec
