r"""Converts an image folder and an index-mask folder into sharded TFRecords.

Usage::

    python -m data_prep.folder --images DIR --masks DIR --out DIR \
        --class_names=background,cat,dog [--ignore_label=255] [--val_fraction=0.1]

Images (PNG/JPEG) pair with masks by file stem: ``images/abc.jpg`` <-> ``masks/abc.png``
(``--mask_suffix=_mask`` for ``abc_mask.png``). Masks are 8-bit single-channel PNGs whose
values are class ids or the ignore label. If both folders hold ``train/``, ``val/`` (and
``test/``) subfolders those are the splits; otherwise a deterministic split by
``--val_fraction`` / ``--test_fraction`` is made.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
from typing import Dict, List, Optional

from absl import app, flags

from data_prep.cli import define_output_flags
from data_prep.images import DataError, read_image, read_index_mask
from data_prep.writer import (
    ConversionError,
    DatasetInfo,
    Item,
    Loaded,
    default_palette,
    write_dataset,
)

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class FolderOptions:
    """How masks are read: palette indices allowed, and optional U-Net border weights."""

    palette_masks: bool = False
    border_weights: bool = False
    background_class: int = 0
    w0: float = 10.0
    sigma: float = 5.0


def load_folder_item(item: Item, opts: FolderOptions) -> Loaded:
    """``load`` function for :func:`write_dataset`: reads, validates, optional weights."""
    image, fmt, h, w = read_image(item.image_path)
    label = read_index_mask(item.mask_path, palette_indices=opts.palette_masks)
    weight = None
    if opts.border_weights and label.shape == (h, w):
        from data_prep.border_weights import unet_weight_map  # pylint: disable=import-outside-toplevel

        weight = unet_weight_map(label, background=opts.background_class, w0=opts.w0, sigma=opts.sigma)
    return Loaded(image=image, image_format=fmt, height=h, width=w, label=label, weight=weight)


def _list_stems(folder: str, exts, suffix: str = "") -> Dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        stem, ext = os.path.splitext(name)
        if not os.path.isfile(path) or ext.lower() not in exts:
            continue
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[: -len(suffix)]
        if stem in out:
            raise DataError(path, f"two files share the stem {stem!r}: {out[stem]} and {path}.",
                            "keep one image per stem.")
        out[stem] = path
    return out


def pair_folder(images: str, masks: str, mask_suffix: str = "") -> List[Item]:
    """Pairs images with masks by stem.

    Raises:
      ConversionError: a folder is missing or empty, or some images/masks have no partner.
    """
    for what, d in (("--images", images), ("--masks", masks)):
        if not os.path.isdir(d):
            raise ConversionError(f"{what} {d} is not a directory.")
    imgs = _list_stems(images, IMAGE_EXTS)
    msks = _list_stems(masks, (".png",), mask_suffix)
    if not imgs:
        raise ConversionError(f"--images {images} holds no .png/.jpg/.jpeg files.")
    if not msks:
        raise ConversionError(f"--masks {masks} holds no .png masks{' ending in ' + mask_suffix if mask_suffix else ''}.")
    no_mask = sorted(set(imgs) - set(msks))
    no_img = sorted(set(msks) - set(imgs))
    if no_mask or no_img:
        lines = [f"image without mask: {imgs[s]}" for s in no_mask[:10]]
        lines += [f"mask without image: {msks[s]}" for s in no_img[:10]]
        raise ConversionError(
            f"{len(no_mask)} image(s) without a mask and {len(no_img)} mask(s) without an image "
            f"(pairing is by file stem{', mask suffix ' + repr(mask_suffix) if mask_suffix else ''}):\n  "
            + "\n  ".join(lines)
        )
    return [
        Item(key=s, image_path=imgs[s], mask_path=msks[s],
             size_hint=os.path.getsize(imgs[s]) + os.path.getsize(msks[s]))
        for s in sorted(imgs)
    ]


def _fraction_split(items: List[Item], val: float, test: float) -> Dict[str, List[Item]]:
    """Deterministic split by a hash of the key, so adding files never reshuffles others."""
    out: Dict[str, List[Item]] = {"train": [], "val": [], "test": []}
    for it in items:
        u = int(hashlib.sha1(it.key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        out["val" if u < val else "test" if u < val + test else "train"].append(it)
    return {k: v for k, v in out.items() if v}


def collect_splits(images: str, masks: str, *, mask_suffix: str = "", val_fraction: float = 0.1,
                   test_fraction: float = 0.0) -> Dict[str, List[Item]]:
    """Finds the splits: ``train/val/test`` subfolders if present, else a fraction split."""
    subs = [s for s in SPLIT_NAMES if os.path.isdir(os.path.join(images, s))]
    if subs:
        return {s: pair_folder(os.path.join(images, s), os.path.join(masks, s), mask_suffix) for s in subs}
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConversionError(
            f"--val_fraction + --test_fraction must be in [0, 1). Received: {val_fraction}, {test_fraction}"
        )
    splits = _fraction_split(pair_folder(images, masks, mask_suffix), val_fraction, test_fraction)
    if "train" not in splits:
        raise ConversionError("the fraction split left no training examples; lower --val_fraction.")
    return splits


def convert_folder(images: str, masks: str, out: str, class_names: List[str], *, ignore_label: int = 255,
                   palette: Optional[List[List[int]]] = None, name: str = "folder", mask_suffix: str = "",
                   val_fraction: float = 0.1, test_fraction: float = 0.0, workers: Optional[int] = None,
                   shard_mb: float = 64, overwrite: bool = False, options: FolderOptions = FolderOptions(),
                   log=print) -> dict:
    """Library entry point of ``python -m data_prep.folder``; returns the manifest."""
    info = DatasetInfo(name=name, num_classes=len(class_names), class_names=list(class_names),
                       ignore_label=ignore_label, palette=palette or default_palette(len(class_names)))
    splits = collect_splits(images, masks, mask_suffix=mask_suffix, val_fraction=val_fraction,
                            test_fraction=test_fraction)
    return write_dataset(out, splits, functools.partial(load_folder_item, opts=options), info,
                         workers=workers, shard_bytes=int(shard_mb * (1 << 20)), overwrite=overwrite, log=log)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.folder``."""
    flags.DEFINE_string("images", None, "Folder of PNG/JPEG images (or train/val/test subfolders).")
    flags.DEFINE_string("masks", None, "Folder of index-mask PNGs paired by stem.")
    define_output_flags()  # --out_dir (--out), --workers, --shard_mb, --overwrite
    flags.DEFINE_list("class_names", None, "Comma-separated class names; their count is num_classes.")
    flags.DEFINE_integer("ignore_label", 255, "Mask value that marks pixels left out of loss and metrics.")
    flags.DEFINE_string("name", "folder", "Dataset name recorded in the manifest.")
    flags.DEFINE_string("mask_suffix", "", "Mask stem suffix, e.g. '_mask' for abc_mask.png.")
    flags.DEFINE_float("val_fraction", 0.1, "Share of examples for val when there are no split folders.")
    flags.DEFINE_float("test_fraction", 0.0, "Share of examples for test when there are no split folders.")
    flags.DEFINE_bool("palette_masks", False, "Read palette (mode P) masks as their palette indices.")
    flags.DEFINE_bool("border_weights", False, "Store U-Net border-weight maps (w0=10, sigma=5 px).")
    flags.DEFINE_integer("background_class", 0, "Class between objects, for --border_weights.")
    flags.mark_flags_as_required(["images", "masks", "out_dir", "class_names"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        convert_folder(
            FLAGS.images, FLAGS.masks, FLAGS.out_dir, FLAGS.class_names, ignore_label=FLAGS.ignore_label,
            name=FLAGS.name, mask_suffix=FLAGS.mask_suffix, val_fraction=FLAGS.val_fraction,
            test_fraction=FLAGS.test_fraction, workers=FLAGS.workers, shard_mb=FLAGS.shard_mb,
            overwrite=FLAGS.overwrite,
            options=FolderOptions(palette_masks=FLAGS.palette_masks, border_weights=FLAGS.border_weights,
                                  background_class=FLAGS.background_class),
        )
    except (ConversionError, DataError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
