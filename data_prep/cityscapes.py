r"""Converts Cityscapes fine annotations into sharded TFRecords with the 19 training classes.

Usage::

    python -m data_prep.cityscapes --src DIR --out DIR [--label_type=labelIds|labelTrainIds]

``--src`` holds the official layout (Cordts et al., CVPR 2016,
https://www.cityscapes-dataset.com)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Only the splits present under ``leftImg8bit/`` are converted. ``labelIds`` (0..33) are
mapped to the 19 trainIds with :data:`LABEL_TO_TRAIN_ID`; every other id becomes 255, the
ignore label. ``--label_type=labelTrainIds`` reads the ``*_gtFine_labelTrainIds.png`` files
made by cityscapesScripts' ``createTrainIdLabelImgs`` instead. Each record keeps its city,
sequence and frame in ``image/meta`` and ``<city>_<seq>_<frame>`` as its key.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import app, flags

from data_prep import cli
from data_prep.images import DataError, read_image, read_index_mask
from data_prep.writer import DatasetInfo, Item, Loaded, write_dataset

# The official labelId -> trainId table (cityscapesScripts helpers/labels.py).
LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CLASS_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]
PALETTE = [
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
    [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
    [0, 80, 100], [0, 0, 230], [119, 11, 32],
]
IGNORE_LABEL = 255
SPLITS = ("train", "val", "test")
LABEL_TYPES = ("labelIds", "labelTrainIds")
_IMAGE_SUFFIX = "_leftImg8bit.png"


def train_id_lut() -> np.ndarray:
    """``uint8 (256,)`` lookup table: labelId -> trainId, 255 for every unlisted id."""
    lut = np.full(256, IGNORE_LABEL, np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


DATASET_INFO = DatasetInfo(name="cityscapes", num_classes=19, class_names=CLASS_NAMES,
                           ignore_label=IGNORE_LABEL, palette=PALETTE)


@dataclasses.dataclass(frozen=True)
class CityscapesOptions:
    """Which label files are read: ``labelIds`` (mapped here) or ready ``labelTrainIds``."""

    label_type: str = "labelIds"


def load_cityscapes_item(item: Item, opts: CityscapesOptions) -> Loaded:
    """``load`` for :func:`write_dataset`: the PNG as is, the mask mapped to trainIds."""
    image, fmt, h, w = read_image(item.image_path)
    label = read_index_mask(item.mask_path)
    if opts.label_type == "labelIds":
        label = train_id_lut()[label]
    return Loaded(image=image, image_format=fmt, height=h, width=w, label=label)


def collect_split(src: str, split: str, label_type: str = "labelIds") -> List[Item]:
    """Lists one split's frames, city by city, each paired with its gtFine label file.

    Raises:
      ConversionError: listing every frame without a label file or with a malformed name.
    """
    img_root = os.path.join(src, "leftImg8bit", split)
    gt_root = os.path.join(src, "gtFine", split)
    items: List[Item] = []
    errors: List[str] = []
    for city in sorted(os.listdir(img_root)):
        city_dir = os.path.join(img_root, city)
        if not os.path.isdir(city_dir):
            continue
        for name in sorted(os.listdir(city_dir)):
            if not name.endswith(_IMAGE_SUFFIX):
                continue
            image_path = os.path.join(city_dir, name)
            stem = name[: -len(_IMAGE_SUFFIX)]
            parts = stem.rsplit("_", 2)
            if len(parts) != 3 or parts[0] != city or not (parts[1].isdigit() and parts[2].isdigit()):
                errors.append(f"{image_path}: name is not <city>_<seq>_<frame>_leftImg8bit.png "
                              f"with city {city!r} (its folder). Fix: rename or remove it.")
                continue
            mask_path = os.path.join(gt_root, city, f"{stem}_gtFine_{label_type}.png")
            if not os.path.isfile(mask_path):
                fix = ("create them with cityscapesScripts' createTrainIdLabelImgs, or use "
                       "--label_type=labelIds." if label_type == "labelTrainIds"
                       else "download gtFine_trainvaltest.zip into --src.")
                errors.append(f"{mask_path}: label file of {image_path} not found. Fix: {fix}")
                continue
            items.append(Item(key=stem, image_path=image_path, mask_path=mask_path,
                              meta={"city": city, "sequence": parts[1], "frame": parts[2]},
                              size_hint=cli.file_size(image_path, mask_path)))
    cli.raise_collected(errors, f"Cityscapes split {split!r}")
    if not items:
        raise DataError(img_root, f"no *{_IMAGE_SUFFIX} files in <city> folders.",
                        "point --src at the folder holding leftImg8bit/ and gtFine/.")
    return items


def collect_splits(src: str, splits: Sequence[str] = SPLITS, label_type: str = "labelIds") -> Dict[str, List[Item]]:
    """Items of each requested split that is present under ``src/leftImg8bit``."""
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES}. Received: label_type={label_type!r}")
    cli.require_dir(src, "--src", "the Cityscapes root holding leftImg8bit/ and gtFine/")
    for sub in ("leftImg8bit", "gtFine"):
        cli.require_dir(os.path.join(src, sub), f"--src/{sub}",
                        "the Cityscapes layout leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/ "
                        "(unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into --src)")
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown Cityscapes split(s) {bad}; choose from {list(SPLITS)}. Received: --splits={list(splits)}")
    present = [s for s in splits if os.path.isdir(os.path.join(src, "leftImg8bit", s))]
    if not present:
        raise ValueError(f"none of the splits {list(splits)} is under {os.path.join(src, 'leftImg8bit')}.")
    return {s: collect_split(src, s, label_type) for s in present}


def convert_cityscapes(src: str, out: str, *, splits: Sequence[str] = SPLITS, label_type: str = "labelIds",
                       workers: Optional[int] = None, shard_mb: float = 64, overwrite: bool = False,
                       log=print) -> dict:
    """Library entry point of ``python -m data_prep.cityscapes``; returns the manifest."""
    items = collect_splits(src, splits, label_type)
    log(f"Cityscapes at {src}: {cli.count_items(items)} frames ({label_type}).")
    return write_dataset(
        out, items, functools.partial(load_cityscapes_item, opts=CityscapesOptions(label_type)), DATASET_INFO,
        workers=workers, shard_bytes=int(shard_mb * (1 << 20)), overwrite=overwrite, log=log,
        extra_manifest={"source": {"converter": "data_prep.cityscapes", "label_type": label_type}},
    )


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.cityscapes``."""
    flags.DEFINE_string("src", None, "Cityscapes root holding leftImg8bit/ and gtFine/.")
    flags.DEFINE_list("splits", list(SPLITS), "Splits to convert, of those present.")
    flags.DEFINE_enum("label_type", "labelIds", LABEL_TYPES,
                      "labelIds: map *_gtFine_labelIds.png to trainIds here; labelTrainIds: read "
                      "*_gtFine_labelTrainIds.png as they are.")
    cli.define_output_flags()
    flags.mark_flags_as_required(["src", "out_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.exit_on_error(lambda: convert_cityscapes(
        FLAGS.src, FLAGS.out_dir, splits=FLAGS.splits, label_type=FLAGS.label_type, workers=FLAGS.workers,
        shard_mb=FLAGS.shard_mb, overwrite=FLAGS.overwrite))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
