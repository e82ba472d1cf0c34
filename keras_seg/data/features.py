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

Instance records (``"task": "instance"`` in the manifest; :func:`make_instance_example`,
:func:`instance_parse_spec`) keep the five ``image/*`` features above and, for ``N >= 0``
instances in a fixed order:

* ``instance/class``: int64 list of ``N`` classes ``1..K`` (0 is the background, never an object).
* ``instance/mask``: bytes list of ``N`` 8-bit grayscale PNGs, each of the full image size with
  values 0/1, so overlapping masks (COCO) are representable.
* ``instance/box``: float list of ``4N`` values, ``[y1, x1, y2, x2]`` per instance: the tight box
  of the mask's pixels, ``[min_row, min_col, max_row + 1, max_col + 1]`` in continuous pixel
  coordinates (pixel ``i`` spans ``[i, i + 1)``).
* ``instance/is_crowd``: int64 list of ``N`` flags, 1 for a crowd or group region (COCO
  ``iscrowd``, a Cityscapes group label) that matching should ignore.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence

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
INSTANCE_CLASS = "instance/class"
INSTANCE_MASK = "instance/mask"
INSTANCE_BOX = "instance/box"
INSTANCE_CROWD = "instance/is_crowd"

TASK_SEMANTIC = "semantic"  # manifests without a "task" key are semantic
TASK_INSTANCE = "instance"

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def shard_name(split: str, index: int, count: int) -> str:
    """File name of shard ``index`` of ``count`` for ``split``."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _bytes(v: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))


def _image_features(image: bytes, image_format: str, height: int, width: int, key: str,
                    meta: Optional[Mapping]) -> dict:
    """The features every record has, semantic or instance: the encoded image and its facts."""
    return {
        IMAGE: _bytes(image),
        IMAGE_FORMAT: _bytes(image_format.encode()),
        HEIGHT: _int(height),
        WIDTH: _int(width),
        KEY: _bytes(key.encode()),
        META: _bytes(json.dumps(dict(meta or {}), sort_keys=True).encode()),
    }


def meta_field(meta: bytes, key: bytes, field: str) -> str:
    """The value of ``field`` in a record's ``image/meta`` JSON, as a string.

    Raises:
      ValueError: the meta is not a JSON object, or lacks ``field`` (the message names the
        record's key and the fields it has).
    """
    name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    try:
        fields = json.loads(meta)
    except ValueError as e:
        raise ValueError(f"record {name!r}: its {META} is not JSON ({e}). Reconvert the dataset.") from None
    if not isinstance(fields, dict) or field not in fields:
        have = sorted(fields) if isinstance(fields, dict) else fields
        raise ValueError(f"record {name!r} has no {field!r} in its {META} (it has {have}). Group by a field "
                         f"its records carry, e.g. sequence for CamVid or city for Cityscapes.")
    return str(fields[field])


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
        **_image_features(image, image_format, height, width, key, meta),
        LABEL: _bytes(label_png),
    }
    if weight is not None:
        w = np.asarray(weight, dtype="<f4")
        if w.shape != (height, width):
            raise ValueError(f"weight map shape {w.shape} != image size {(height, width)} for {key}")
        feats[WEIGHT] = _bytes(w.tobytes())
    return tf.train.Example(features=tf.train.Features(feature=feats))


def _image_spec() -> dict:
    """The parse spec of :func:`_image_features`, shared by semantic and instance records."""
    return {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
        KEY: tf.io.FixedLenFeature([], tf.string),
        META: tf.io.FixedLenFeature([], tf.string, default_value=b"{}"),
    }


def parse_spec(with_weights: bool) -> dict:
    """The ``tf.io.parse_single_example`` spec; ``with_weights`` comes from the manifest."""
    spec = {
        **_image_spec(),
        LABEL: tf.io.FixedLenFeature([], tf.string),
    }
    if with_weights:
        spec[WEIGHT] = tf.io.FixedLenFeature([], tf.string)
    return spec


def make_instance_example(
    *,
    image: bytes,
    image_format: str,
    height: int,
    width: int,
    key: str,
    classes: Sequence[int],
    mask_pngs: Sequence[bytes],
    boxes: np.ndarray,
    is_crowd: Sequence[int],
    meta: Optional[Mapping] = None,
) -> tf.train.Example:
    """Builds one instance record; see the module docstring for the layout.

    Raises:
      ValueError: if ``classes``, ``mask_pngs``, ``boxes`` (``[N, 4]``) and ``is_crowd`` disagree
        in length.
    """
    n = len(classes)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) if len(boxes) else np.zeros((0, 4), np.float32)
    if not len(mask_pngs) == len(boxes) == len(is_crowd) == n:
        raise ValueError(
            f"instance fields of {key} disagree: {n} classes, {len(mask_pngs)} masks, {len(boxes)} boxes, "
            f"{len(is_crowd)} is_crowd flags."
        )
    feats = {
        **_image_features(image, image_format, height, width, key, meta),
        INSTANCE_CLASS: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(c) for c in classes])),
        INSTANCE_MASK: tf.train.Feature(bytes_list=tf.train.BytesList(value=list(mask_pngs))),
        INSTANCE_BOX: tf.train.Feature(float_list=tf.train.FloatList(value=boxes.ravel().tolist())),
        INSTANCE_CROWD: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(c) for c in is_crowd])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats))


def instance_parse_spec() -> dict:
    """The ``tf.io.parse_single_example`` spec of instance records (variable-length lists dense)."""
    return {
        **_image_spec(),
        INSTANCE_CLASS: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
        INSTANCE_MASK: tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
        INSTANCE_BOX: tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
        INSTANCE_CROWD: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
    }
