r"""Converts Cityscapes fine instance annotations into sharded instance TFRecords.

Usage::

    python -m data_prep.cityscapes_instances --src DIR --out DIR [--splits=train,val]

``--src`` holds the official layout (Cordts et al., CVPR 2016)::

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png   # 16-bit

A pixel of ``*_gtFine_instanceIds.png`` holds ``labelId * 1000 + k`` on instance ``k`` of a
class with instances, and the plain ``labelId`` elsewhere. The 8 evaluated instance classes,
person, rider, car, truck, bus, train, motorcycle and bicycle, become classes ``1..8``; each
``id >= 1000`` of theirs is one instance. Their pixels with ``id < 1000`` (a group of objects
without instance index, e.g. a row of parked cars) become one crowd region per class
(``is_crowd`` 1). Caravan and trailer instances, and every other label, are not objects here.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import app, flags

from data_prep import cli
from data_prep.cityscapes import PALETTE as TRAIN_ID_PALETTE, collect_split
from data_prep.images import DataError, read_image, read_png_array
from data_prep.instances import InstanceInfo, Instances, summary
from data_prep.writer import Item, Loaded, write_dataset

# labelId -> instance class (cityscapesScripts helpers/labels.py: hasInstances and not ignoreInEval).
LABEL_TO_CLASS = {24: 1, 25: 2, 26: 3, 27: 4, 28: 5, 31: 6, 32: 7, 33: 8}
CLASS_NAMES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
PALETTE = TRAIN_ID_PALETTE[11:19]  # the trainId colours of these classes (trainIds 11..18)
MAX_LABEL_ID = 33
SPLITS = ("train", "val")
INFO = InstanceInfo(name="cityscapes_instances", class_names=CLASS_NAMES, palette=PALETTE)


def read_instance_ids(path: str) -> np.ndarray:
    """Reads a 16-bit ``*_instanceIds.png`` as int32 ``(H, W)``.

    Raises:
      DataError: missing, undecodable, not single-channel, or holding a value that is neither
        a labelId ``0..33`` nor ``labelId * 1000 + k`` (the message names the first such value).
    """
    arr, mode = read_png_array(path, "instanceIds PNG", "re-extract gtFine_trainvaltest.zip.")
    if arr.ndim != 2:
        raise DataError(path, f"the instanceIds image is mode {mode} with shape {arr.shape}; a single-channel "
                        "16-bit PNG was expected.")
    arr = arr.astype(np.int32)
    values = np.unique(arr)
    bad = [int(v) for v in values if not (0 <= v <= MAX_LABEL_ID or (v >= 1000 and v // 1000 <= MAX_LABEL_ID))]
    if bad:
        raise DataError(path, f"instance id value(s) {bad[:10]} are neither a labelId 0..{MAX_LABEL_ID} nor "
                        "labelId * 1000 + instance.", "is this a gtFine *_instanceIds.png file?")
    return arr


def instances_from_ids(ids: np.ndarray) -> Instances:
    """The instances of an instanceIds array, in increasing id order (crowd regions first per class)."""
    classes, masks, crowd = [], [], []
    for v in np.unique(ids):
        label_id = int(v) // 1000 if v >= 1000 else int(v)
        if label_id not in LABEL_TO_CLASS:
            continue
        classes.append(LABEL_TO_CLASS[label_id])
        masks.append((ids == v).astype(np.uint8))
        crowd.append(int(v < 1000))
    h, w = ids.shape
    return Instances(classes=np.asarray(classes, np.int64),
                     masks=np.stack(masks) if masks else np.zeros((0, h, w), np.uint8),
                     is_crowd=np.asarray(crowd, np.int64))


def load_cityscapes_instance_item(item: Item) -> Loaded:
    """``load`` for :func:`write_dataset`: the PNG as is, the instances of its instanceIds file."""
    image, fmt, h, w = read_image(item.image_path)
    ids = read_instance_ids(item.mask_path)
    if ids.shape != (h, w):
        raise DataError(item.mask_path, f"instanceIds size {ids.shape[1]}x{ids.shape[0]} (WxH) differs from its image "
                        f"{item.image_path} at {w}x{h}.")
    return Loaded(image=image, image_format=fmt, height=h, width=w, instances=instances_from_ids(ids))


def collect_splits(src: str, splits: Sequence[str] = SPLITS) -> Dict[str, List[Item]]:
    """Items of each requested split present under ``src/leftImg8bit``."""
    cli.require_dir(src, "--src", "the Cityscapes root holding leftImg8bit/ and gtFine/")
    for sub in ("leftImg8bit", "gtFine"):
        cli.require_dir(os.path.join(src, sub), f"--src/{sub}",
                        "the Cityscapes layout leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/")
    bad = [s for s in splits if s not in ("train", "val", "test")]
    if bad:
        raise ValueError(f"unknown Cityscapes split(s) {bad}; choose from train, val (test has no instances). "
                         f"Received: --splits={list(splits)}")
    present = [s for s in splits if os.path.isdir(os.path.join(src, "leftImg8bit", s))]
    if not present:
        raise ValueError(f"none of the splits {list(splits)} is under {os.path.join(src, 'leftImg8bit')}.")
    return {s: collect_split(src, s, "instanceIds") for s in present}


def convert_cityscapes_instances(src: str, out: str, *, splits: Sequence[str] = SPLITS, workers: Optional[int] = None,
                                 shard_mb: float = 64, overwrite: bool = False, log=print) -> dict:
    """Library entry point of ``python -m data_prep.cityscapes_instances``; returns the manifest."""
    items = collect_splits(src, splits)
    log(f"Cityscapes instances at {src}: {cli.count_items(items)} frames.")
    manifest = write_dataset(out, items, load_cityscapes_instance_item, INFO, workers=workers,
                             shard_bytes=int(shard_mb * (1 << 20)), overwrite=overwrite, log=log,
                             extra_manifest={"source": {"converter": "data_prep.cityscapes_instances"}})
    log(summary(manifest))
    return manifest


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.cityscapes_instances``."""
    flags.DEFINE_string("src", None, "Cityscapes root holding leftImg8bit/ and gtFine/.")
    flags.DEFINE_list("splits", list(SPLITS), "Splits to convert, of those present.")
    cli.define_output_flags()
    flags.mark_flags_as_required(["src", "out_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.exit_on_error(lambda: convert_cityscapes_instances(
        FLAGS.src, FLAGS.out_dir, splits=FLAGS.splits, workers=FLAGS.workers, shard_mb=FLAGS.shard_mb,
        overwrite=FLAGS.overwrite))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
