"""Parallel, atomic writer of sharded TFRecords and ``manifest.json``.

Every converter (folder, camvid, cityscapes, voc, isbi) describes its examples as
:class:`Item` s and a picklable ``load`` function; this module validates each example,
writes size-bounded shards in parallel worker processes and swaps the finished dataset into
``--out`` only when everything succeeded, so a failed run leaves nothing half-written.
What a record holds and what the manifest counts is the dataset info's codec: semantic
labels in :mod:`data_prep.semantic_codec`, instances in :mod:`data_prep.instances`.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import shutil
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from data_prep.images import DataError

__all__ = ["Item", "Loaded", "Instances", "DatasetInfo", "write_dataset", "ConversionError", "default_palette"]


@dataclasses.dataclass(frozen=True)
class Item:
    """One example to convert: where its files are and what to record about it."""

    key: str
    image_path: str
    mask_path: str
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    size_hint: int = 0  # bytes, for shard sizing
    # What ``load`` needs beyond the paths (e.g. one image's COCO annotations); not recorded.
    payload: Any = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass
class Loaded:
    """What a converter's ``load(item)`` returns."""

    image: bytes
    image_format: str
    height: int
    width: int
    label: Optional[np.ndarray] = None  # uint8 (H, W) class ids, ignore label included (semantic)
    weight: Optional[np.ndarray] = None  # float32 (H, W) or None
    instances: Optional["Instances"] = None  # instance datasets (data_prep.instances)


@dataclasses.dataclass
class Instances:
    """The objects of one image, in record order, for instance datasets.

    Attributes:
      classes: int ``(N,)`` classes ``1..K``.
      masks: uint8 or bool ``(N, H, W)`` full-image masks, values 0/1; may overlap.
      is_crowd: int ``(N,)`` 1 for crowd or group regions, else 0.
    """

    classes: np.ndarray
    masks: np.ndarray
    is_crowd: np.ndarray


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Dataset-level facts recorded in the manifest."""

    name: str
    num_classes: int
    class_names: Sequence[str]
    ignore_label: int
    palette: Sequence[Sequence[int]]

    def validate(self) -> None:
        if not 1 <= self.num_classes <= 255:
            raise ValueError(f"num_classes must be in [1, 255]. Received: num_classes={self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for num_classes={self.num_classes}. "
                f"Received: class_names={list(self.class_names)}"
            )
        if len(self.palette) != self.num_classes or any(
            len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in self.palette
        ):
            raise ValueError(f"palette must hold {self.num_classes} RGB triples in 0..255.")
        if not 0 <= self.ignore_label <= 255:
            raise ValueError(f"ignore_label must be in [0, 255]. Received: ignore_label={self.ignore_label}")
        if self.ignore_label < self.num_classes:
            raise ValueError(
                f"ignore_label={self.ignore_label} collides with a class id "
                f"(num_classes={self.num_classes}); use a value >= num_classes, e.g. 255."
            )

    def codec(self):
        """How :func:`write_dataset` encodes, checks and counts this dataset's examples: a
        :class:`data_prep.semantic_codec.SemanticCodec`."""
        from data_prep.semantic_codec import SemanticCodec  # pylint: disable=import-outside-toplevel

        return SemanticCodec(self)


class ConversionError(ValueError):
    """Raised when any example failed; lists every problem found, with its file."""


def default_palette(n: int) -> List[List[int]]:
    """PASCAL VOC's bit-interleaved colour map, the usual default palette."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


def _write_shard(task) -> Dict[str, Any]:
    """Worker: converts one shard's items into ``tmp_path``; returns stats and errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # keras_seg first: its import sets up the allocator (keras_seg._alloc) before TensorFlow.
    import keras_seg.data.features  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    items, load, codec, tmp_path = task
    stats = codec.new_stats()
    errors: List[str] = []
    written = 0
    with tf.io.TFRecordWriter(tmp_path) as writer:
        for item in items:
            try:
                record = codec.encode(item, load(item), stats)
            except DataError as e:
                errors.append(str(e))
                continue
            writer.write(record)
            written += 1
    return {"stats": stats, "errors": errors, "written": written}


def _plan_shards(items: Sequence[Item], shard_bytes: int) -> List[List[Item]]:
    sizes = [max(it.size_hint, 1) for it in items]
    total = sum(sizes)
    num = max(1, math.ceil(total / shard_bytes))
    num = min(num, len(items))
    shards: List[List[Item]] = [[] for _ in range(num)]
    target = total / num
    acc = 0
    for it, s in zip(items, sizes):
        idx = min(int(acc // target), num - 1)
        shards[idx].append(it)
        acc += s
    return [s for s in shards if s]


def write_dataset(
    out_dir: str,
    splits: Mapping[str, Sequence[Item]],
    load: Callable[[Item], Loaded],
    info: DatasetInfo,
    *,
    workers: Optional[int] = None,
    shard_bytes: int = 64 << 20,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    extra_manifest: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Validates and writes every split, then atomically installs ``out_dir``.

    Args:
      out_dir: destination directory; it must not hold a dataset unless ``overwrite``.
      splits: ``{split_name: items}``; items are written in the given order.
      load: picklable function ``Item -> Loaded`` raising :class:`DataError` on bad input.
      info: dataset-level facts: a :class:`DatasetInfo` (semantic records) or
        ``data_prep.instances.InstanceInfo`` (instance records); ``info.codec()`` encodes,
        checks and counts the examples and builds the manifest (see :class:`data_prep.semantic_codec.SemanticCodec`).
      workers: parallel worker processes (default: all cores).
      shard_bytes: approximate upper bound of one shard's size, from ``Item.size_hint``.
      overwrite: replace an existing dataset in ``out_dir``.
      log: progress printer.
      extra_manifest: additional top-level manifest fields (e.g. the source layout).

    Returns:
      The manifest dict that was written.

    Raises:
      ConversionError: listing every bad file; ``out_dir`` is then left untouched.
      FileExistsError: ``out_dir`` holds a dataset and ``overwrite`` is False.
    """
    from keras_seg.data.features import MANIFEST, shard_name  # pylint: disable=import-outside-toplevel
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel

    codec = info.codec()
    codec.validate()
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(
            f"--out {out_dir} is not empty. Choose a new directory or pass --overwrite to replace it."
        )
    for split, items in splits.items():
        if not items:
            raise ConversionError(f"split {split!r} has no examples.")
        keys = [it.key for it in items]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
            raise ConversionError(f"split {split!r} has duplicate keys {dup}.")

    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(out_dir)}.staging-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging)
    workers = workers or os.cpu_count() or 1
    try:
        tasks, where = [], []
        for split, items in splits.items():
            shards = _plan_shards(list(items), shard_bytes)
            for i, shard_items in enumerate(shards):
                name = shard_name(split, i, len(shards))
                tasks.append((shard_items, load, codec, os.path.join(staging, name + ".tmp")))
                where.append((split, name, len(shard_items)))
        total = sum(n for _, _, n in where)
        procs = min(workers, len(tasks))
        log(f"Converting {total} examples in {len(tasks)} shards with {procs} worker(s)...")
        start = time.time()
        results: List[Optional[Dict[str, Any]]] = [None] * len(tasks)
        done = 0
        if procs == 1:  # one worker or one shard: write in this process, nothing to spawn
            iterator = ((i, _write_shard(t)) for i, t in enumerate(tasks))
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(procs)
            # Largest shards first, so that no big shard starts last while other workers idle.
            order = sorted(range(len(tasks)), key=lambda i: -sum(max(it.size_hint, 1) for it in tasks[i][0]))
            iterator = pool.imap_unordered(_indexed, [(i, tasks[i]) for i in order])
        try:
            for i, res in iterator:
                results[i] = res
                done += where[i][2]
                rate = done / max(time.time() - start, 1e-9)
                eta = (total - done) / rate if rate else 0.0
                log(
                    f"  [{done}/{total}] {where[i][1]}: {res['written']} written, "
                    f"{len(res['errors'])} bad; {rate:.1f} examples/s, ETA {eta:.0f}s"
                )
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        errors = [e for r in results for e in r["errors"]]
        if errors:
            shown = "\n  ".join(errors[:20])
            more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise ConversionError(
                f"{len(errors)} example(s) could not be converted; nothing was written to "
                f"{out_dir}:\n  {shown}{more}"
            )
        split_entries: Dict[str, Dict[str, Any]] = {}
        for split in splits:
            idx = [i for i, (s, _, _) in enumerate(where) if s == split]
            try:
                entry = codec.split_manifest([results[i]["stats"] for i in idx], [results[i]["written"] for i in idx])
            except ConversionError as e:
                raise ConversionError(f"split {split!r}: {e}") from e
            split_entries[split] = {"num_examples": entry.pop("num_examples"), "files": [where[i][1] for i in idx],
                                    **entry}
            for i in idx:
                os.replace(tasks[i][3], os.path.join(staging, where[i][1]))
        manifest: Dict[str, Any] = codec.manifest(split_entries)
        if extra_manifest:
            # The source description goes before "splits", where it always was.
            ordered = {k: v for k, v in manifest.items() if k != "splits" and k != "class_weights"}
            ordered.update(extra_manifest)
            ordered.update({k: v for k, v in manifest.items() if k not in ordered})
            manifest = ordered
        atomic_write_json(os.path.join(staging, MANIFEST), manifest)
        # Swap the finished dataset into place.
        old = None
        if os.path.exists(out_dir):
            old = f"{staging}.old"
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        log(f"Wrote {total} examples to {out_dir} in {time.time() - start:.1f}s.")
        return manifest
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _indexed(arg):
    i, task = arg
    return i, _write_shard(task)
