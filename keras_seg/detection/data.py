"""``tf.data`` input of instance datasets (``data_prep.coco``, ``cityscapes_instances``, ...).

read (per shard, record count checked) -> decode -> flip (training) -> resize and pad ->
drop crowd (optional) -> pad instances -> normalise -> batch -> prefetch.

Every image is resized to ``image_size = (H, W)`` *keeping its aspect ratio*: scaled by
``min(H / h, W / w)`` to ``(nh, nw)`` (bilinear for the image, nearest for the masks, boxes
scaled exactly), then padded at the bottom and right, the image with the colour that
normalises to 0 and the masks with 0. The top-left anchor means boxes need no offset, and
``image_hw`` gives the valid ``(nh, nw)``. Boxes are not recomputed from the resized masks:
a box is the exact image of the source box, and a tiny instance may lose all its mask pixels
at a small scale while keeping its box.

Ground truth is padded to ``max_instances`` ``M``: classes ``-1``, boxes and masks zero.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import tensorflow as tf

from keras_seg.data import features as F
from keras_seg.data.manifest import load_manifest, split_files
from keras_seg.data.preprocess import check_preprocessing, mean_pixel, normalize_image

AUTOTUNE = tf.data.AUTOTUNE

__all__ = ["decode_instance_example", "flip_instances", "resize_and_pad", "drop_crowd", "pad_instances",
           "shard_records", "make_instance_dataset"]


def decode_instance_example(serialized, shard="") -> Dict[str, tf.Tensor]:
    """Parses and decodes one instance record.

    Args:
      serialized: scalar string tensor holding a ``tf.train.Example``.
      shard: the shard file it came from, named in error messages.

    Returns:
      dict with ``image`` uint8 ``[H, W, 3]``, ``masks`` uint8 ``[N, H, W]`` (0/1), ``boxes``
      float32 ``[N, 4]`` ``[y1, x1, y2, x2]``, ``classes`` int32 ``[N]`` (``1..K``),
      ``is_crowd`` int32 ``[N]`` and ``key`` string. Decoding fails naming the shard and the
      record's key when the instance lists disagree in length or a mask is not the image size.
    """
    ex = tf.io.parse_single_example(serialized, F.instance_parse_spec())
    key = ex[F.KEY]
    image = tf.io.decode_image(ex[F.IMAGE], channels=3, dtype=tf.uint8, expand_animations=False)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    classes = tf.cast(ex[F.INSTANCE_CLASS], tf.int32)
    n = tf.shape(classes)[0]
    sizes = tf.stack([tf.shape(ex[F.INSTANCE_MASK])[0], tf.shape(ex[F.INSTANCE_BOX])[0] // 4,
                      tf.shape(ex[F.INSTANCE_CROWD])[0]])
    check = tf.debugging.Assert(
        tf.logical_and(tf.reduce_all(tf.equal(sizes, n)), tf.equal(tf.shape(ex[F.INSTANCE_BOX])[0] % 4, 0)),
        ["instance lists disagree (classes; masks, boxes, is_crowd) in shard", shard, "record", key, n, sizes])

    def decode_mask(png):
        m = tf.io.decode_png(png, channels=1)[..., 0]
        ok = tf.reduce_all(tf.equal(tf.shape(m), tf.stack([h, w])))
        with tf.control_dependencies([tf.debugging.Assert(ok, ["instance mask size differs from the image in shard",
                                                               shard, "record", key, tf.shape(m), h, w])]):
            return tf.identity(m)

    with tf.control_dependencies([check]):
        masks = tf.cond(
            n > 0,
            lambda: tf.reshape(tf.map_fn(decode_mask, ex[F.INSTANCE_MASK],
                                         fn_output_signature=tf.TensorSpec([None, None], tf.uint8)), [n, h, w]),
            lambda: tf.zeros([0, h, w], tf.uint8),
        )
        boxes = tf.reshape(ex[F.INSTANCE_BOX], [n, 4])
    return {"image": image, "masks": masks, "boxes": boxes, "classes": classes,
            "is_crowd": tf.cast(ex[F.INSTANCE_CROWD], tf.int32), "key": key}


def flip_instances(ex: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Mirrors image, masks and boxes left-right: ``x1' = W - x2``, ``x2' = W - x1``."""
    width = tf.cast(tf.shape(ex["image"])[1], tf.float32)
    y1, x1, y2, x2 = tf.unstack(ex["boxes"], 4, axis=-1)
    return {**ex, "image": ex["image"][:, ::-1], "masks": ex["masks"][:, :, ::-1],
            "boxes": tf.stack([y1, width - x2, y2, width - x1], axis=-1)}


def _nearest_indices(src: tf.Tensor, dst: tf.Tensor) -> tf.Tensor:
    """Source index of each of ``dst`` output pixels, sampling pixel centres (half-pixel)."""
    pos = (tf.cast(tf.range(dst), tf.float32) + 0.5) * tf.cast(src, tf.float32) / tf.cast(dst, tf.float32)
    return tf.minimum(tf.cast(tf.floor(pos), tf.int32), src - 1)


def resize_and_pad(ex: Dict[str, tf.Tensor], image_size: Tuple[int, int],
                   preprocessing: str = "imagenet") -> Dict[str, tf.Tensor]:
    """Resizes keeping the aspect ratio and pads to ``image_size`` (see the module docstring).

    Returns:
      ``ex`` with ``image`` float32 ``[H, W, 3]`` (0..255, padding the colour that
      ``preprocessing`` maps to 0), ``masks`` uint8 ``[N, H, W]``, scaled ``boxes`` and
      ``image_hw`` int32 ``[2]``, the valid ``(nh, nw)``.
    """
    out_h, out_w = image_size
    shape = tf.shape(ex["image"])
    h, w = shape[0], shape[1]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    scale = tf.minimum(out_h / hf, out_w / wf)
    nh = tf.clip_by_value(tf.cast(tf.round(hf * scale), tf.int32), 1, out_h)
    nw = tf.clip_by_value(tf.cast(tf.round(wf * scale), tf.int32), 1, out_w)
    pad_rgb = tf.constant(mean_pixel(preprocessing), tf.float32)
    image = tf.image.resize(tf.cast(ex["image"], tf.float32), tf.stack([nh, nw]), method="bilinear")
    image = tf.pad(image - pad_rgb, [[0, out_h - nh], [0, out_w - nw], [0, 0]]) + pad_rgb
    masks = tf.gather(tf.gather(ex["masks"], _nearest_indices(h, nh), axis=1), _nearest_indices(w, nw), axis=2)
    masks = tf.pad(masks, [[0, 0], [0, out_h - nh], [0, out_w - nw]])
    sy, sx = tf.cast(nh, tf.float32) / hf, tf.cast(nw, tf.float32) / wf
    boxes = ex["boxes"] * tf.stack([sy, sx, sy, sx])
    return {**ex, "image": tf.ensure_shape(image, [out_h, out_w, 3]), "masks": tf.ensure_shape(masks, [None, out_h, out_w]),
            "boxes": boxes, "image_hw": tf.stack([nh, nw])}


def drop_crowd(ex: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Keeps the instances with ``is_crowd == 0``."""
    keep = tf.equal(ex["is_crowd"], 0)
    return {**ex, **{k: tf.boolean_mask(ex[k], keep) for k in ("masks", "boxes", "classes", "is_crowd")}}


def pad_instances(ex: Dict[str, tf.Tensor], max_instances: int, shard="") -> Dict[str, tf.Tensor]:
    """Pads the instances to ``max_instances``: classes ``-1``, boxes, masks and is_crowd 0.

    Fails naming the shard and key when an image has more than ``max_instances`` instances.
    """
    n = tf.shape(ex["classes"])[0]
    check = tf.debugging.Assert(n <= max_instances, ["an image has more instances than max_instances in shard",
                                                     shard, "record", ex["key"], n, max_instances])
    with tf.control_dependencies([check]):
        pad = max_instances - n
    masks = tf.pad(ex["masks"], [[0, pad], [0, 0], [0, 0]])
    return {
        **ex,
        "masks": tf.ensure_shape(masks, [max_instances] + ex["masks"].shape.as_list()[1:]),
        "boxes": tf.ensure_shape(tf.pad(ex["boxes"], [[0, pad], [0, 0]]), [max_instances, 4]),
        "classes": tf.ensure_shape(tf.pad(ex["classes"], [[0, pad]], constant_values=-1), [max_instances]),
        "is_crowd": tf.ensure_shape(tf.pad(ex["is_crowd"], [[0, pad]]), [max_instances]),
    }


def shard_records(path, expected) -> tf.data.Dataset:
    """``(path, record)`` of one shard; fails naming the shard when it is corrupt or truncated.

    TensorFlow's own ``DataLossError`` ("corrupted record at 128") does not name the file.
    Here a read error ends the shard early (``ignore_errors``), and the shard's record count,
    checked against the manifest's ``expected``, raises an ``InvalidArgumentError`` that
    names it, after the records before the damage.
    """
    body = tf.data.TFRecordDataset(path).ignore_errors().map(lambda r: (r, False))
    ends = body.concatenate(tf.data.Dataset.from_tensors((tf.constant(b""), True)))

    def count(seen, x):
        return seen + 1 - tf.cast(x[1], tf.int64), (x[0], x[1], seen)

    def checked(record, end, seen):
        ok = tf.logical_or(tf.logical_not(end), tf.equal(seen, expected))
        with tf.control_dependencies([tf.debugging.Assert(
                ok, ["corrupt or truncated TFRecord shard", path, "read", seen, "records; the manifest lists",
                     expected, "- reconvert the dataset or restore the file"])]):
            return tf.identity(record), end

    return (ends.scan(tf.constant(0, tf.int64), count).map(checked).filter(lambda r, end: tf.logical_not(end))
            .map(lambda r, end: (path, r)))


def _check_args(batch_size: int, image_size: Sequence[int], max_instances: int) -> Tuple[int, int]:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    if len(tuple(image_size)) != 2 or not all(isinstance(v, int) and v >= 1 for v in image_size):
        raise ValueError(f"image_size must be two positive ints (H, W). Received: image_size={image_size!r}")
    if not isinstance(max_instances, int) or max_instances < 1:
        raise ValueError(f"max_instances must be a positive int. Received: max_instances={max_instances!r}")
    return tuple(image_size)


def make_instance_dataset(data_dir: str, split: str, batch_size: int, image_size: Sequence[int], max_instances: int,
                          training: bool, seed: int = 0, *, include_crowd: bool = False,
                          preprocessing: str = "imagenet", shuffle_buffer: int = 256) -> tf.data.Dataset:
    """Batches of ``(features, labels)`` from an instance dataset written by ``data_prep``.

    ``features = {"image": float32 [B, H, W, 3]}``, normalised by
    :func:`keras_seg.data.preprocess.normalize_image`; ``labels`` holds ``gt_boxes`` float32
    ``[B, M, 4]`` (``[y1, x1, y2, x2]`` in pixels of the resized image), ``gt_classes`` int32
    ``[B, M]`` (``1..K``, ``-1`` padding), ``gt_masks`` uint8 ``[B, M, H, W]``, ``gt_is_crowd``
    int32 ``[B, M]`` and ``image_hw`` int32 ``[B, 2]`` (the unpadded size).

    Training shuffles files and records, repeats, flips half the images left-right (stateless,
    one seed per example drawn from ``seed``, so the stream is a function of ``seed``) and
    drops the last partial batch; evaluation reads every record once, in file order.

    Args:
      data_dir: directory with an instance ``manifest.json`` and its shards.
      split: split name, e.g. ``"train"``.
      batch_size: examples per batch.
      image_size: ``(H, W)`` of every image (see the module docstring).
      max_instances: ``M``, ground truth slots per image.
      training: augment, shuffle and repeat.
      seed: seed of shuffling and flips.
      include_crowd: keep crowd regions (``gt_is_crowd`` 1, with their class) for a matcher
        that ignores them; by default they are dropped, so every instance is an object.
      preprocessing: ``"imagenet"`` or ``"caffe"``.
      shuffle_buffer: records in the training shuffle buffer.

    Raises:
      ValueError: bad arguments, or ``max_instances`` below the most instances of one image
        in ``split`` (from the manifest).
      ManifestError: no instance manifest, unknown split or missing shards.
    """
    image_size = _check_args(batch_size, image_size, max_instances)
    check_preprocessing(preprocessing, "preprocessing")
    manifest = load_manifest(data_dir, task=F.TASK_INSTANCE)
    files = split_files(data_dir, manifest, split)
    info = manifest["splits"][split]
    need = int(info["max_instances"] if include_crowd else info["max_objects"])
    if need > max_instances:
        raise ValueError(f"an image of split {split!r} in {data_dir} has {need} instances"
                         f"{'' if include_crowd else ' (crowd excluded)'}, more than max_instances={max_instances}; "
                         f"raise it. Received: max_instances={max_instances}")
    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(info["file_records"], tf.int64)))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(shard_records, cycle_length=max(1, min(len(files), 8)), num_parallel_calls=AUTOTUNE,
                       deterministic=True)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
    else:
        ds = ds.map(lambda path, record: ((path, record), tf.zeros([2], tf.int64)))

    def example(pair, flip_seed):
        path, record = pair
        ex = decode_instance_example(record, path)
        if training:
            flip = tf.random.stateless_uniform([], flip_seed) < 0.5
            ex = tf.cond(flip, lambda: flip_instances(ex), lambda: ex)
        ex = resize_and_pad(ex, image_size, preprocessing)
        if not include_crowd:
            ex = drop_crowd(ex)
        ex = pad_instances(ex, max_instances, path)
        return ({"image": normalize_image(ex["image"], preprocessing)},
                {"gt_boxes": ex["boxes"], "gt_classes": ex["classes"], "gt_masks": ex["masks"],
                 "gt_is_crowd": ex["is_crowd"], "image_hw": ex["image_hw"]})

    ds = ds.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)
