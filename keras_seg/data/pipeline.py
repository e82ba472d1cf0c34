"""``tf.data`` input pipelines over converted datasets.

shard -> interleave -> decode -> augment (train) -> normalise -> batch -> prefetch.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from keras_seg.data.augment import AugmentConfig, augment
from keras_seg.data.decode import decode_example
from keras_seg.data.manifest import load_manifest, split_files
from keras_seg.data.preprocess import normalize_image

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What :func:`make_dataset` needs.

    Attributes:
      data_dir: directory with ``manifest.json`` and shards.
      split: split name, e.g. ``"train"``.
      batch_size: global batch size (split across replicas by the input context).
      training: shuffle, repeat, augment and drop the remainder.
      augment: augmentation settings (training only).
      seed: seed of shuffling and augmentation.
      shuffle_buffer: examples in the shuffle buffer.
      skip_batches: training only: global batches already consumed (a resumed run skips
        them, before decoding, so it sees exactly the data an uninterrupted run would).
    """

    data_dir: str
    split: str
    batch_size: int
    training: bool
    augment: Optional[AugmentConfig] = None
    seed: int = 0
    shuffle_buffer: int = 256
    skip_batches: int = 0


def _to_model_inputs(ex):
    image = normalize_image(ex["image"])
    label = tf.cast(ex["label"][..., 0], tf.int32)
    return image, label, ex["weight"][..., 0]


def make_dataset(cfg: DataConfig, input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """Builds the dataset of ``(image float32 (B,H,W,3), label int32 (B,H,W), weight float32 (B,H,W))``.

    Args:
      cfg: :class:`DataConfig`.
      input_context: from ``strategy.distribute_datasets_from_function``; shards the files
        (or the examples, when there are fewer files than input pipelines) and gives the
        per-replica batch size.

    Raises:
      ValueError: no manifest, unknown split, missing shards, or a batch size that does not
        divide over the replicas.
    """
    manifest = load_manifest(cfg.data_dir)
    files = split_files(cfg.data_dir, manifest, cfg.split)
    with_weights = bool(manifest["splits"][cfg.split].get("has_weights", False))
    batch = cfg.batch_size
    pipelines = 1
    shard_examples = None
    if input_context is not None:
        if cfg.batch_size % input_context.num_replicas_in_sync:
            raise ValueError(
                f"batch_size={cfg.batch_size} does not divide over "
                f"{input_context.num_replicas_in_sync} replicas; use a multiple of it."
            )
        batch = input_context.get_per_replica_batch_size(cfg.batch_size)
        n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
        pipelines = n
        if n > 1:
            if len(files) >= n:
                files = files[i::n]
            else:
                shard_examples = (n, i)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if cfg.training:
        ds = ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(len(files), 8)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if shard_examples:
        ds = ds.shard(*shard_examples)
    if cfg.training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=cfg.seed).batch(2)
    if cfg.training and cfg.skip_batches:
        skip = cfg.skip_batches * (cfg.batch_size // pipelines)
        ds, seeds = ds.skip(skip), seeds.skip(skip)
    ds = ds.map(lambda r: decode_example(r, with_weights), num_parallel_calls=AUTOTUNE, deterministic=True)
    if cfg.training:
        if cfg.augment is None:
            raise ValueError("a training DataConfig needs augment=AugmentConfig(...)")
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda ex, s: augment(ex, s, cfg.augment), num_parallel_calls=AUTOTUNE, deterministic=True
        )
    ds = ds.map(_to_model_inputs, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cfg.training:
        ds = ds.batch(batch, drop_remainder=True)
    else:
        ignore = manifest["ignore_label"]
        ds = ds.padded_batch(batch, padding_values=(0.0, ignore, 0.0))
    return ds.prefetch(AUTOTUNE)


def dataset_info(data_dir: str) -> Tuple[dict, int]:
    """Returns ``(manifest, ignore_label)``."""
    m = load_manifest(data_dir)
    return m, int(m["ignore_label"])
