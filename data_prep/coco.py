r"""Converts COCO instance annotations into sharded instance TFRecords.

Usage::

    python -m data_prep.coco --annotations=annotations/instances_val2017.json --images=DIR --out DIR

``--annotations`` takes one or more COCO ``instances_*.json`` files (Lin et al., ECCV 2014,
https://cocodataset.org/#format-data); each becomes one split, named after the file
(``instances_val2017.json`` -> ``val2017``) unless ``--splits`` names them. An image
``file_name`` is looked up as ``--images/<file_name>``, then ``--images/<split>/<file_name>``.

Masks come from pycocotools (``COCO.annToMask``: polygons and RLE, compressed or not).
Category ids are remapped to contiguous classes ``1..K`` in sorted id order; the manifest
keeps the names and the source ids (``category_ids``). ``iscrowd`` annotations are kept
with ``instance/is_crowd`` 1. Images without annotations are kept (they hold no instances).
Annotations whose mask is empty (a polygon below a pixel) are dropped and counted.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from absl import app, flags

from data_prep import cli
from data_prep.images import DataError, read_image
from data_prep.instances import InstanceInfo, Instances, summary
from data_prep.writer import Item, Loaded, write_dataset


def _quiet_coco(dataset: Optional[dict] = None):
    """A ``pycocotools.coco.COCO`` over ``dataset`` without its progress prints."""
    from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel

    coco = COCO()
    if dataset is not None:
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    return coco


def read_annotations(path: str) -> dict:
    """Reads and checks a COCO annotations file.

    Raises:
      DataError: naming ``path``: missing, not JSON, without ``images`` / ``categories`` /
        ``annotations``, with no image, or with an annotation of an unknown image or category,
        a non 0/1 ``iscrowd`` or no ``segmentation``, or with no annotation at all.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise DataError(path, "annotations file not found.", "pass a COCO instances_*.json to --annotations.") from e
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read the annotations as JSON ({e}).") from e
    if not isinstance(data, dict):
        raise DataError(path, f"the file holds a JSON {type(data).__name__}; a COCO object with images, "
                        "annotations and categories was expected.")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DataError(path, f"no {missing} list(s) in the file; a COCO instances file has images, annotations "
                        "and categories.", "pass an instances_*.json file (not captions or keypoints only).")
    if not data["images"]:
        raise DataError(path, "the file lists no images.")
    if not data["categories"]:
        raise DataError(path, "the file lists no categories.")
    if not data["annotations"]:
        raise DataError(path, f"the annotations list is empty ({len(data['images'])} images, no object).",
                        "pass the instances_*.json of an annotated split.")
    cat_ids = {c.get("id") for c in data["categories"]}
    image_ids = {im.get("id") for im in data["images"]}
    errors = []
    for ann in data["annotations"]:
        aid = ann.get("id")
        if ann.get("category_id") not in cat_ids:
            errors.append(f"{path}: annotation {aid} has category_id={ann.get('category_id')!r}, not one of the "
                          f"{len(cat_ids)} categories (ids {sorted(cat_ids)[:10]}...).")
        if ann.get("image_id") not in image_ids:
            errors.append(f"{path}: annotation {aid} has image_id={ann.get('image_id')!r}, not a listed image.")
        if ann.get("iscrowd", 0) not in (0, 1):
            errors.append(f"{path}: annotation {aid} has iscrowd={ann.get('iscrowd')!r}; 0 or 1 expected.")
        if not ann.get("segmentation"):
            errors.append(f"{path}: annotation {aid} has no segmentation (boxes alone make no mask).")
    cli.raise_collected(errors, path)
    return data


def categories(data: dict) -> Tuple[List[int], List[str]]:
    """``(category ids sorted, their names)``: class ``k`` is ``ids[k - 1]``."""
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def split_name(annotations: str) -> str:
    """``instances_val2017.json`` -> ``val2017``; other names: the file stem."""
    stem = os.path.splitext(os.path.basename(annotations))[0]
    return stem[len("instances_"):] if stem.startswith("instances_") and len(stem) > len("instances_") else stem


def collect_split(annotations: str, images: str, split: str, data: dict) -> List[Item]:
    """One item per listed image, carrying its annotations as the payload.

    Raises:
      ConversionError: listing every image file that is not found.
    """
    coco = _quiet_coco(data)
    items, errors = [], []
    for image_id in sorted(coco.imgs):
        im = coco.imgs[image_id]
        name = str(im.get("file_name", ""))
        candidates = [os.path.join(images, name), os.path.join(images, split, name)]
        found = next((p for p in candidates if name and os.path.isfile(p)), None)
        if found is None:
            errors.append(f"{candidates[0]}: image {image_id} of {annotations} not found (nor in {candidates[1]}).")
            continue
        payload = {"image": {k: im[k] for k in ("id", "height", "width") if k in im},
                   "annotations": coco.imgToAnns.get(image_id, [])}
        items.append(Item(key=os.path.splitext(name)[0], image_path=found, mask_path=annotations,
                          meta={"image_id": image_id, "file_name": name},
                          size_hint=cli.file_size(found), payload=payload))
    cli.raise_collected(errors, f"the images of {annotations}")
    return items


def load_coco_item(item: Item, class_of: Mapping[int, int]) -> Loaded:
    """``load`` for :func:`write_dataset`: the image as is, one ``annToMask`` mask per annotation."""
    image, fmt, h, w = read_image(item.image_path)
    im = item.payload["image"]
    if (im.get("height"), im.get("width")) != (h, w):
        raise DataError(item.image_path, f"the image is {w}x{h} (WxH) but {item.mask_path} says "
                        f"{im.get('width')}x{im.get('height')} for image {im.get('id')}.")
    coco = _quiet_coco()
    coco.imgs = {im["id"]: im}
    classes, masks, crowd = [], [], []
    for ann in item.payload["annotations"]:
        try:
            mask = coco.annToMask(ann)
        except Exception as e:  # noqa: BLE001 - pycocotools raises TypeError, ValueError, Exception...
            raise DataError(item.mask_path, f"annotation {ann.get('id')} (image {im['id']}): the segmentation "
                            f"does not decode ({type(e).__name__}: {e}).") from e
        if mask.shape != (h, w):
            raise DataError(item.mask_path, f"annotation {ann.get('id')}: mask {mask.shape} is not the image size "
                            f"{(h, w)}.")
        classes.append(class_of[int(ann["category_id"])])
        masks.append(mask.astype(np.uint8))
        crowd.append(int(ann.get("iscrowd", 0)))
    masks_arr = np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)
    return Loaded(image=image, image_format=fmt, height=h, width=w,
                  instances=Instances(np.asarray(classes, np.int64), masks_arr, np.asarray(crowd, np.int64)))


def convert_coco(annotations: Sequence[str], images: str, out: str, *, splits: Optional[Sequence[str]] = None,
                 name: str = "coco", workers: Optional[int] = None, shard_mb: float = 64, overwrite: bool = False,
                 log=print) -> dict:
    """Library entry point of ``python -m data_prep.coco``; returns the manifest.

    Raises:
      DataError / ConversionError: a bad annotations file or image, naming the file.
      ValueError: ``--splits`` of another length than ``--annotations``, repeated split names,
        annotation files with different categories or ``--images`` not a directory.
    """
    annotations = list(annotations)
    if not annotations:
        raise ValueError("--annotations names no file.")
    names = list(splits) if splits else [split_name(a) for a in annotations]
    if len(names) != len(annotations):
        raise ValueError(f"--splits names {len(names)} split(s) for {len(annotations)} annotation file(s). "
                         f"Received: --splits={names}")
    if len(set(names)) != len(names):
        raise ValueError(f"split names repeat; pass --splits. Received: splits={names}")
    cli.require_dir(images, "--images", "the folder of the COCO images (or one holding <split>/ folders)")
    items: Dict[str, List[Item]] = {}
    cats = None
    for ann_path, split in zip(annotations, names):
        data = read_annotations(ann_path)
        these = categories(data)
        if cats is None:
            cats = these
        elif these != cats:
            raise ValueError(f"{ann_path}: its categories differ from those of {annotations[0]}; convert them "
                             "separately.")
        items[split] = collect_split(ann_path, images, split, data)
        log(f"COCO {ann_path}: {len(items[split])} images, {len(data['annotations'])} annotations -> split {split!r}.")
    ids, class_names = cats
    info = InstanceInfo(name=name, class_names=class_names, palette=InstanceInfo.default_palette(len(ids)),
                        extra={"category_ids": ids})
    manifest = write_dataset(
        out, items, functools.partial(load_coco_item, class_of={c: k + 1 for k, c in enumerate(ids)}), info,
        workers=workers, shard_bytes=int(shard_mb * (1 << 20)), overwrite=overwrite, log=log,
        extra_manifest={"source": {"converter": "data_prep.coco",
                                   "annotations": [os.path.basename(a) for a in annotations]}})
    log(summary(manifest))
    return manifest


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.coco``."""
    flags.DEFINE_list("annotations", None, "COCO instances_*.json file(s), one split each.")
    flags.DEFINE_string("images", None, "Folder of the images (file_name), or holding <split>/ folders of them.")
    flags.DEFINE_list("splits", None, "Split names, one per --annotations file (default: from the file names).")
    flags.DEFINE_string("name", "coco", "Dataset name recorded in the manifest.")
    cli.define_output_flags()
    flags.mark_flags_as_required(["annotations", "images", "out_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.exit_on_error(lambda: convert_coco(
        FLAGS.annotations, FLAGS.images, FLAGS.out_dir, splits=FLAGS.splits, name=FLAGS.name, workers=FLAGS.workers,
        shard_mb=FLAGS.shard_mb, overwrite=FLAGS.overwrite))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
