r"""Converts PASCAL VOC 2012 segmentation (optionally with SBD) into sharded TFRecords.

Usage::

    python -m data_prep.voc --src VOCdevkit/VOC2012 --out DIR [--sbd benchmark_RELEASE/dataset]

``--src`` is the VOC2012 folder (or the VOCdevkit above it) of the official layout
(Everingham et al., IJCV 2010, http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png              # palette PNG: index = class 0..20, 255 = border
    ImageSets/Segmentation/{train,val}.txt  # one <id> per line

Masks are read as palette *indices* with PIL (``tf.io.decode_png`` would expand them to
colours). 255 (the object borders and difficult regions) is the ignore label.

``--sbd`` adds the Semantic Boundaries Dataset (Hariharan et al., ICCV 2011) from its
``cls/<id>.mat`` files (``GTcls.Segmentation``, class indices 0..20) and ``img/<id>.jpg``,
for the ids in its ``train.txt`` and ``val.txt`` (all ``cls/*.mat`` if there are no lists).
This writes one more split, ``--sbd_split`` (default ``train_aug``): VOC train plus every
SBD image that is in neither VOC train nor VOC val, minus any VOC val image (10,582 images
with the full data sets, the set DeepLab trains on). Records keep ``{"source": "voc"}`` or
``{"source": "sbd"}`` in ``image/meta``.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import app, flags

from data_prep import cli
from data_prep.images import DataError, read_image, read_index_mask
from data_prep.writer import DatasetInfo, Item, Loaded, default_palette, write_dataset

CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]
IGNORE_LABEL = 255
SPLITS = ("train", "val")
DATASET_INFO = DatasetInfo(name="voc", num_classes=21, class_names=CLASS_NAMES, ignore_label=IGNORE_LABEL,
                           palette=default_palette(21))  # VOC's own bit-interleaved colour map


def read_sbd_mask(path: str) -> np.ndarray:
    """Reads ``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` file as ``uint8 (H, W)``.

    Raises:
      DataError: unreadable .mat file, no ``GTcls.Segmentation``, or a non 2-D / out-of-range array.
    """
    try:
        from scipy import io as sio  # pylint: disable=import-outside-toplevel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError(path, "reading SBD .mat files needs scipy.", "pip install -e '.[prep]'.") from e
    try:
        mat = sio.loadmat(path, squeeze_me=True, struct_as_record=False)
    except FileNotFoundError as e:
        raise DataError(path, "SBD label file not found.") from e
    except Exception as e:  # noqa: BLE001 - scipy raises ValueError, TypeError, OSError, MatReadError...
        raise DataError(path, f"the .mat file cannot be read ({type(e).__name__}: {e}); it is corrupt or "
                        "truncated.", "re-extract it from benchmark.tgz.") from e
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise DataError(path, f"no GTcls.Segmentation in the .mat file (variables: "
                        f"{sorted(k for k in mat if not k.startswith('__'))}).",
                        "pass the SBD cls/ files, not inst/ ones.")
    arr = np.asarray(seg)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(path, f"GTcls.Segmentation is {arr.dtype} with shape {arr.shape}; a 2-D integer "
                        "array was expected.")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DataError(path, f"GTcls.Segmentation values range {arr.min()}..{arr.max()}; 0..255 expected.")
    return arr.astype(np.uint8)


def load_voc_item(item: Item) -> Loaded:
    """``load`` for :func:`write_dataset`: VOC palette PNG or SBD .mat mask, JPEG as is."""
    image, fmt, h, w = read_image(item.image_path)
    if item.mask_path.endswith(".mat"):
        label = read_sbd_mask(item.mask_path)
    else:
        label = read_index_mask(item.mask_path, palette_indices=True)
    return Loaded(image=image, image_format=fmt, height=h, width=w, label=label)


def resolve_root(src: str) -> str:
    """The VOC2012 folder: ``src`` itself, ``src/VOC2012`` or ``src/VOCdevkit/VOC2012``."""
    for cand in (src, os.path.join(src, "VOC2012"), os.path.join(src, "VOCdevkit", "VOC2012")):
        if os.path.isdir(os.path.join(cand, "ImageSets", "Segmentation")):
            return cand
    raise ValueError(
        f"--src={src!r} has no ImageSets/Segmentation/ (nor VOC2012/ or VOCdevkit/VOC2012/ below it). "
        "Expected the VOCdevkit/VOC2012 layout with JPEGImages/, SegmentationClass/ and "
        "ImageSets/Segmentation/{train,val}.txt."
    )


def read_id_list(path: str) -> Tuple[List[str], List[str]]:
    """Reads a list of image ids, one per line; returns ``(ids, errors)``.

    An error names the file and line number: a line with more than one field, or a repeated id.
    Blank lines are skipped.
    """
    ids: List[str] = []
    errors: List[str] = []
    seen = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 1 or "/" in fields[0]:
                errors.append(f"{path}:{lineno}: expected one image id such as 2007_000032, got {line.strip()!r}.")
            elif fields[0] in seen:
                errors.append(f"{path}:{lineno}: id {fields[0]!r} repeats line {seen[fields[0]]}.")
            else:
                seen[fields[0]] = lineno
                ids.append(fields[0])
    return ids, errors


def _voc_items(root: str, split: str, errors: List[str]) -> List[Item]:
    lst = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    ids, errs = read_id_list(lst)
    errors += errs
    items = []
    for i in ids:
        img = os.path.join(root, "JPEGImages", f"{i}.jpg")
        mask = os.path.join(root, "SegmentationClass", f"{i}.png")
        missing = [p for p in (img, mask) if not os.path.isfile(p)]
        if missing:
            errors += [f"{p}: not found (listed in {lst})." for p in missing]
            continue
        items.append(Item(key=i, image_path=img, mask_path=mask, meta={"source": "voc"},
                          size_hint=cli.file_size(img, mask)))
    if not ids and not errs:
        errors.append(f"{lst}: the list is empty.")
    return items


def _sbd_items(sbd: str, voc_root: str, exclude: set, errors: List[str], log) -> List[Item]:
    cli.require_dir(os.path.join(sbd, "cls"), "--sbd/cls",
                    "the SBD dataset folder (benchmark_RELEASE/dataset) holding cls/<id>.mat and img/<id>.jpg")
    lists = [os.path.join(sbd, f"{s}.txt") for s in ("train", "val")]
    ids: List[str] = []
    if any(os.path.isfile(p) for p in lists):
        for p in lists:
            if os.path.isfile(p):
                got, errs = read_id_list(p)
                errors += errs
                ids += got
        ids = list(dict.fromkeys(ids))  # de-duplicated, in list order
    else:
        ids = sorted(n[:-4] for n in os.listdir(os.path.join(sbd, "cls")) if n.endswith(".mat"))
    kept = [i for i in ids if i not in exclude]
    log(f"SBD at {sbd}: {len(ids)} ids, {len(ids) - len(kept)} already in VOC train or val, {len(kept)} added.")
    items = []
    for i in kept:
        mask = os.path.join(sbd, "cls", f"{i}.mat")
        img = os.path.join(sbd, "img", f"{i}.jpg")
        if not os.path.isfile(img):
            img = os.path.join(voc_root, "JPEGImages", f"{i}.jpg")
        missing = [p for p in (img, mask) if not os.path.isfile(p)]
        if missing:
            errors += [f"{p}: not found (SBD id {i})." for p in missing]
            continue
        items.append(Item(key=i, image_path=img, mask_path=mask, meta={"source": "sbd"},
                          size_hint=cli.file_size(img, mask)))
    return items


def collect_splits(src: str, *, splits: Sequence[str] = SPLITS, sbd: Optional[str] = None,
                   sbd_split: str = "train_aug", log=print) -> Dict[str, List[Item]]:
    """VOC items of each requested split whose list exists, plus the SBD split if ``sbd``.

    Raises:
      ConversionError: listing every bad list line (file:line) and missing file.
    """
    root = resolve_root(src)
    errors: List[str] = []
    out: Dict[str, List[Item]] = {}
    for split in splits:
        if os.path.isfile(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")):
            out[split] = _voc_items(root, split, errors)
    if not out:
        raise ValueError(f"none of {[f'{s}.txt' for s in splits]} is in {os.path.join(root, 'ImageSets', 'Segmentation')}.")
    if sbd:
        if "train" not in out or "val" not in out:
            raise ValueError("--sbd needs both VOC train.txt and val.txt, to keep VOC val out of the SBD split.")
        if sbd_split in out:
            raise ValueError(f"--sbd_split={sbd_split!r} collides with a VOC split; choose e.g. train_aug.")
        val_ids = {it.key for it in out["val"]}
        train_ids = {it.key for it in out["train"]}
        both = sorted(train_ids & val_ids)
        if both:
            log(f"warning: {len(both)} id(s) are in both VOC train and val (e.g. {both[0]}); "
                f"they are left out of {sbd_split}.")
        extra = _sbd_items(sbd, root, train_ids | val_ids, errors, log)
        out[sbd_split] = [it for it in out["train"] if it.key not in val_ids] + extra
    cli.raise_collected(errors, "the VOC/SBD lists")
    return out


def convert_voc(src: str, out: str, *, splits: Sequence[str] = SPLITS, sbd: Optional[str] = None,
                sbd_split: str = "train_aug", workers: Optional[int] = None, shard_mb: float = 64,
                overwrite: bool = False, log=print) -> dict:
    """Library entry point of ``python -m data_prep.voc``; returns the manifest."""
    items = collect_splits(src, splits=splits, sbd=sbd, sbd_split=sbd_split, log=log)
    log(f"PASCAL VOC at {src}: {cli.count_items(items)} images.")
    return write_dataset(out, items, load_voc_item, DATASET_INFO, workers=workers,
                         shard_bytes=int(shard_mb * (1 << 20)), overwrite=overwrite, log=log,
                         extra_manifest={"source": {"converter": "data_prep.voc", "sbd": bool(sbd)}})


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.voc``."""
    flags.DEFINE_string("src", None, "VOCdevkit/VOC2012 folder (or the VOCdevkit above it).")
    flags.DEFINE_list("splits", list(SPLITS), "VOC splits (ImageSets/Segmentation/<split>.txt) to convert.")
    flags.DEFINE_string("sbd", None, "Optional SBD dataset folder with cls/*.mat and img/*.jpg.")
    flags.DEFINE_string("sbd_split", "train_aug", "Name of the VOC train + SBD split written with --sbd.")
    cli.define_output_flags()
    flags.mark_flags_as_required(["src", "out_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.exit_on_error(lambda: convert_voc(
        FLAGS.src, FLAGS.out_dir, splits=FLAGS.splits, sbd=FLAGS.sbd, sbd_split=FLAGS.sbd_split,
        workers=FLAGS.workers, shard_mb=FLAGS.shard_mb, overwrite=FLAGS.overwrite))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
