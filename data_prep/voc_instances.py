r"""Converts PASCAL VOC 2012 object segmentations into sharded instance TFRecords.

Usage::

    python -m data_prep.voc_instances --src VOCdevkit/VOC2012 --out DIR [--splits=train,val]

``--src`` is the VOC2012 folder (or the VOCdevkit above it)::

    JPEGImages/<id>.jpg
    SegmentationObject/<id>.png             # palette PNG: index = instance 1..N, 0 background, 255 border
    SegmentationClass/<id>.png              # palette PNG: index = class 0..20, 255 border
    ImageSets/Segmentation/{train,val}.txt

Both masks are read as palette indices with PIL. Each instance index becomes one instance
(the 255 border belongs to none); its class is the majority class of ``SegmentationClass`` at
its pixels, VOC class ``c`` in ``1..20`` becoming class ``c``. An instance whose pixels
disagree on the class (beyond ``--max_class_disagreement``, a fraction, default 0) or whose
majority is the background or the border is refused, naming the file and the instance.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import app, flags

from data_prep import cli
from data_prep.images import DataError, read_image, read_index_mask
from data_prep.instances import InstanceInfo, Instances, summary
from data_prep.voc import CLASS_NAMES as VOC_CLASS_NAMES, read_id_list, resolve_root
from data_prep.writer import Item, Loaded, write_dataset

CLASS_NAMES = VOC_CLASS_NAMES[1:]
VOID = 255
SPLITS = ("train", "val")
INFO = InstanceInfo(name="voc_instances", class_names=CLASS_NAMES, palette=InstanceInfo.default_palette(20))


def instances_from_masks(objects: np.ndarray, classes: np.ndarray, path: str,
                         max_disagreement: float = 0.0) -> Instances:
    """Instances of a ``SegmentationObject`` index mask, classed by ``SegmentationClass``.

    Args:
      objects: uint8 ``(H, W)`` instance indices, 0 background, 255 border.
      classes: uint8 ``(H, W)`` VOC classes 0..20, 255 border.
      path: the object mask's file, for error messages.
      max_disagreement: largest fraction of an instance's pixels whose class may differ from
        its majority class.

    Raises:
      DataError: naming ``path`` and the instance whose classes disagree or whose majority is
        not an object class.
    """
    out_classes, masks = [], []
    for k in np.unique(objects):
        if k in (0, VOID):
            continue
        mask = objects == k
        counts = np.bincount(classes[mask], minlength=256)
        majority = int(np.argmax(counts))
        share = 1.0 - counts[majority] / mask.sum()
        found = {int(c): int(n) for c, n in enumerate(counts) if n}
        if share > max_disagreement:
            raise DataError(path, f"instance {int(k)}'s pixels disagree on the class in SegmentationClass: "
                            f"{found} (class: pixels); the majority class {majority} covers "
                            f"{100 * (1 - share):.1f}%.", "check that the object and class masks belong together, "
                            "or raise --max_class_disagreement.")
        if not 1 <= majority <= 20:
            raise DataError(path, f"instance {int(k)} is mostly class {majority} in SegmentationClass ({found}), "
                            "not an object class 1..20.")
        out_classes.append(majority)
        masks.append(mask.astype(np.uint8))
    h, w = objects.shape
    return Instances(classes=np.asarray(out_classes, np.int64),
                     masks=np.stack(masks) if masks else np.zeros((0, h, w), np.uint8),
                     is_crowd=np.zeros(len(out_classes), np.int64))


def load_voc_instance_item(item: Item, max_disagreement: float = 0.0) -> Loaded:
    """``load`` for :func:`write_dataset`: the JPEG as is; ``item.payload`` is the class mask's path."""
    image, fmt, h, w = read_image(item.image_path)
    objects = read_index_mask(item.mask_path, palette_indices=True)
    classes = read_index_mask(item.payload, palette_indices=True)
    for path, arr in ((item.mask_path, objects), (item.payload, classes)):
        if arr.shape != (h, w):
            raise DataError(path, f"mask size {arr.shape[1]}x{arr.shape[0]} (WxH) differs from its image "
                            f"{item.image_path} at {w}x{h}.")
    return Loaded(image=image, image_format=fmt, height=h, width=w,
                  instances=instances_from_masks(objects, classes, item.mask_path, max_disagreement))


def collect_splits(src: str, splits: Sequence[str] = SPLITS) -> Dict[str, List[Item]]:
    """Items of each requested split whose list exists.

    Raises:
      ConversionError: listing every bad list line and missing image or mask.
    """
    root = resolve_root(src)
    out: Dict[str, List[Item]] = {}
    errors: List[str] = []
    for split in splits:
        lst = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(lst):
            continue
        ids, errs = read_id_list(lst)
        errors += errs
        if not ids and not errs:
            errors.append(f"{lst}: the list is empty.")
        items = []
        for i in ids:
            img = os.path.join(root, "JPEGImages", f"{i}.jpg")
            obj = os.path.join(root, "SegmentationObject", f"{i}.png")
            cls = os.path.join(root, "SegmentationClass", f"{i}.png")
            missing = [p for p in (img, obj, cls) if not os.path.isfile(p)]
            if missing:
                errors += [f"{p}: not found (listed in {lst})." for p in missing]
                continue
            items.append(Item(key=i, image_path=img, mask_path=obj, meta={"source": "voc"},
                              size_hint=cli.file_size(img, obj, cls), payload=cls))
        out[split] = items
    if not out and not errors:
        raise ValueError(f"none of {[f'{s}.txt' for s in splits]} is in {os.path.join(root, 'ImageSets', 'Segmentation')}.")
    cli.raise_collected(errors, "the VOC lists")
    return out


def convert_voc_instances(src: str, out: str, *, splits: Sequence[str] = SPLITS, max_class_disagreement: float = 0.0,
                          workers: Optional[int] = None, shard_mb: float = 64, overwrite: bool = False,
                          log=print) -> dict:
    """Library entry point of ``python -m data_prep.voc_instances``; returns the manifest."""
    if not 0.0 <= max_class_disagreement < 0.5:
        raise ValueError(f"max_class_disagreement must be in [0, 0.5). Received: "
                         f"max_class_disagreement={max_class_disagreement}")
    items = collect_splits(src, splits)
    log(f"PASCAL VOC instances at {src}: {cli.count_items(items)} images.")
    manifest = write_dataset(
        out, items, functools.partial(load_voc_instance_item, max_disagreement=max_class_disagreement), INFO,
        workers=workers, shard_bytes=int(shard_mb * (1 << 20)), overwrite=overwrite, log=log,
        extra_manifest={"source": {"converter": "data_prep.voc_instances"}})
    log(summary(manifest))
    return manifest


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.voc_instances``."""
    flags.DEFINE_string("src", None, "VOCdevkit/VOC2012 folder (or the VOCdevkit above it).")
    flags.DEFINE_list("splits", list(SPLITS), "VOC splits (ImageSets/Segmentation/<split>.txt) to convert.")
    flags.DEFINE_float("max_class_disagreement", 0.0,
                       "Largest fraction of an instance's pixels whose SegmentationClass may differ from its majority.")
    cli.define_output_flags()
    flags.mark_flags_as_required(["src", "out_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.exit_on_error(lambda: convert_voc_instances(
        FLAGS.src, FLAGS.out_dir, splits=FLAGS.splits, max_class_disagreement=FLAGS.max_class_disagreement,
        workers=FLAGS.workers, shard_mb=FLAGS.shard_mb, overwrite=FLAGS.overwrite))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
