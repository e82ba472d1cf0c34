"""``tf.data`` input pipelines over converted datasets.

shard -> interleave -> decode -> augment (train) -> normalise -> batch -> prefetch.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from keras_seg.data.augment import AugmentConfig, augment
from keras_seg.data.decode import decode_example
from keras_seg.data.manifest import load_manifest, split_files
from keras_seg.data.preprocess import check_preprocessing, normalize_image

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
      num_shards: training only: number of input shards ``S`` (0: one per input pipeline).
        A multiple of the number of workers; fixing it makes the global batches the same
        for any number of workers that divides it.
      preprocessing: the model's input preprocessing, ``"imagenet"`` or ``"caffe"``
        (:func:`keras_seg.data.preprocess.normalize_image`); the augmentation pads with the
        colour it maps to 0.
      with_meta: evaluation only: each element also carries the record's key and its
        ``image/meta`` JSON string, as ``(image, label, weight, key, meta)``.
    """

    data_dir: str
    split: str
    batch_size: int
    training: bool
    augment: Optional[AugmentConfig] = None
    seed: int = 0
    shuffle_buffer: int = 256
    skip_batches: int = 0
    num_shards: int = 0
    preprocessing: str = "imagenet"
    with_meta: bool = False


def _to_model_inputs(ex, preprocessing: str, with_meta: bool = False):
    image = normalize_image(ex["image"], preprocessing)
    label = tf.cast(ex["label"][..., 0], tf.int32)
    if with_meta:
        return image, label, ex["weight"][..., 0], ex["key"], ex["meta"]
    return image, label, ex["weight"][..., 0]


def shard_seed(seed: int, shard: int) -> int:
    """Seed of shard ``shard``'s shuffling and augmentation: a pure function of both."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


def _example_stream(cfg: DataConfig, files, with_weights: bool, shard: int, num_shards: int,
                    skip: int) -> tf.data.Dataset:
    """Decoded (and, training, augmented) examples of one shard, ``skip`` examples in."""
    seed = shard_seed(cfg.seed, shard)
    shard_examples = num_shards > 1 and len(files) < num_shards
    if num_shards > 1 and not shard_examples:
        files = files[shard::num_shards]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if cfg.training:
        # Shards that split the examples of the same files must read them in the same order,
        # or they would draw from different orderings instead of splitting one: the file
        # order's seed is then common to all shards.
        file_seed = shard_seed(cfg.seed, -1 % (1 << 32)) if shard_examples else seed
        ds = ds.shuffle(len(files), seed=file_seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(len(files), 8)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if shard_examples:  # fewer files than shards: every shard reads all files, keeps its examples
        ds = ds.shard(num_shards, shard)
    if cfg.training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed).batch(2)  # one augmentation seed per example
        ds, seeds = ds.skip(skip), seeds.skip(skip)  # resume: skip before decoding
    ds = ds.map(lambda r: decode_example(r, with_weights), num_parallel_calls=AUTOTUNE, deterministic=True)
    if cfg.training:
        if cfg.augment is None:
            raise ValueError("a training DataConfig needs augment=AugmentConfig(...)")
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda ex, s: augment(ex, s, cfg.augment), num_parallel_calls=AUTOTUNE, deterministic=True
        )
    return ds.map(lambda ex: _to_model_inputs(ex, cfg.preprocessing, cfg.with_meta), num_parallel_calls=AUTOTUNE,
                  deterministic=True)


def make_dataset(cfg: DataConfig, input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """Builds the dataset of ``(image float32 (B,H,W,3), label int32 (B,H,W), weight float32 (B,H,W))``
    (with ``cfg.with_meta``, also the records' ``key`` and ``meta`` strings, each ``(B,)``).

    Every input pipeline (one per worker under ``MultiWorkerMirroredStrategy``) reads only
    its own shards: the files ``j::S`` of each shard ``j`` it owns, or, when there are fewer
    files than shards, every ``S``-th example of all files. Of the ``S = cfg.num_shards``
    shards (default ``n``), pipeline ``i`` of ``n`` owns the ``S/n`` shards from ``i*S/n``
    on, and each global training batch is ``batch_size / S`` consecutive examples of shard 0,
    then of shard 1, ... The global batches are therefore a function of ``S`` and the seed
    alone, whatever the number of workers.

    Args:
      cfg: :class:`DataConfig`.
      input_context: from ``strategy.distribute_datasets_from_function``; gives the input
        pipeline, the number of pipelines and the per-replica batch size.

    Returns:
      Batches of the per-replica batch size (``cfg.batch_size`` without ``input_context``).

    Raises:
      ValueError: no manifest, unknown split, missing shards, a batch size that does not
        divide over the replicas or shards, ``num_shards`` not a multiple of the pipelines, or
        ``with_meta`` for a training dataset.
    """
    if cfg.with_meta and cfg.training:
        raise ValueError("DataConfig.with_meta is for evaluation datasets (training=False) only.")
    check_preprocessing(cfg.preprocessing, "DataConfig.preprocessing")
    manifest = load_manifest(cfg.data_dir)
    files = split_files(cfg.data_dir, manifest, cfg.split)
    with_weights = bool(manifest["splits"][cfg.split].get("has_weights", False))
    batch, pipelines, pipeline = _pipeline_share(cfg, input_context)
    if not cfg.training:  # every example exactly once, in any order
        return _eval_batches(_example_stream(cfg, files, with_weights, pipeline, pipelines, 0), batch)
    return _train_batches(cfg, files, with_weights, batch, pipelines, pipeline)


def _pipeline_share(cfg: DataConfig, input_context: Optional[tf.distribute.InputContext]) -> Tuple[int, int, int]:
    """``(per-replica batch size, number of input pipelines, this pipeline's index)``."""
    batch, pipelines, pipeline = cfg.batch_size, 1, 0
    if input_context is not None:
        if cfg.batch_size % input_context.num_replicas_in_sync:
            raise ValueError(
                f"batch_size={cfg.batch_size} does not divide over "
                f"{input_context.num_replicas_in_sync} replicas; use a multiple of it."
            )
        batch = input_context.get_per_replica_batch_size(cfg.batch_size)
        pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
    return batch, pipelines, pipeline


def _eval_batches(ds: tf.data.Dataset, batch: int) -> tf.data.Dataset:
    """Batches of ``batch`` same-size examples (any size for batch 1), prefetched."""
    if batch == 1:
        return ds.batch(1).prefetch(AUTOTUNE)
    # Batches of same-size images only: padding would be seen by the model (image pooling
    # in PSPNet and DeepLab v3 would change every prediction), so a batch never mixes sizes
    # and batched evaluation gives batch 1's confusion matrix.
    return ds.group_by_window(
        key_func=lambda image, *rest: tf.cast(tf.shape(image)[0], tf.int64) * 1_000_003
        + tf.cast(tf.shape(image)[1], tf.int64),
        reduce_func=lambda key, window: window.batch(batch),
        window_size=batch,
    ).prefetch(AUTOTUNE)


def _train_batches(cfg: DataConfig, files, with_weights: bool, batch: int, pipelines: int,
                   pipeline: int) -> tf.data.Dataset:
    """This pipeline's part of each global training batch, from its own shards (:func:`make_dataset`)."""
    shards = cfg.num_shards or pipelines
    if shards % pipelines or cfg.batch_size % shards:
        raise ValueError(
            f"num_shards={shards} must be a multiple of the {pipelines} input pipeline(s) and divide "
            f"batch_size={cfg.batch_size}. Received: num_shards={cfg.num_shards}"
        )
    per_shard = cfg.batch_size // shards
    own = shards // pipelines
    streams = [_example_stream(cfg, files, with_weights, j, shards, cfg.skip_batches * per_shard)
               for j in range(pipeline * own, (pipeline + 1) * own)]
    if len(streams) == 1:
        ds = streams[0]
    else:  # this pipeline's part of each global batch: per_shard examples of each of its shards
        parts = tuple(s.batch(per_shard, drop_remainder=True) for s in streams)
        ds = tf.data.Dataset.zip(parts).map(
            lambda *p: tuple(tf.concat(xs, axis=0) for xs in zip(*p)), num_parallel_calls=AUTOTUNE,
            deterministic=True,
        ).unbatch()
    return ds.batch(batch, drop_remainder=True).prefetch(AUTOTUNE)


def dataset_info(data_dir: str) -> Tuple[dict, int]:
    """Returns ``(manifest, ignore_label)``."""
    m = load_manifest(data_dir)
    return m, int(m["ignore_label"])
