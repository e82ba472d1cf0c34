"""Parsing one serialized record into tensors (keys from :mod:`keras_seg.data.features`)."""

from __future__ import annotations

import tensorflow as tf

from keras_seg.data import features as F


def decode_example(serialized, with_weights: bool):
    """Parses and decodes one record.

    Args:
      serialized: a scalar string tensor holding a ``tf.train.Example``.
      with_weights: whether the records carry ``weight/raw`` (from the manifest).

    Returns:
      dict with ``image`` uint8 (H, W, 3), ``label`` uint8 (H, W, 1), ``weight`` float32
      (H, W, 1) (ones when the dataset has no weight maps), ``key`` (string) and ``meta``
      (string: the record's ``image/meta`` JSON, ``{}`` when it has none).
      Decoding fails with the record's key in the message if image and label sizes differ.
    """
    ex = tf.io.parse_single_example(serialized, F.parse_spec(with_weights))
    image = tf.io.decode_image(ex[F.IMAGE], channels=3, dtype=tf.uint8, expand_animations=False)
    label = tf.io.decode_png(ex[F.LABEL], channels=1, dtype=tf.uint8)
    image_hw = tf.shape(image)[:2]
    label_hw = tf.shape(label)[:2]
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(image_hw, label_hw)),
        ["image and label sizes differ in record", ex[F.KEY], image_hw, label_hw,
         "- run `python -m data_prep.verify DATA_DIR`"],
    )
    with tf.control_dependencies([check]):
        image = tf.identity(image)
    if with_weights:
        weight = tf.reshape(tf.io.decode_raw(ex[F.WEIGHT], tf.float32), tf.concat([label_hw, [1]], 0))
    else:
        weight = tf.ones(tf.concat([label_hw, [1]], 0), tf.float32)
    return {"image": image, "label": label, "weight": weight, "key": ex[F.KEY], "meta": ex[F.META]}
