r"""Converts the ISBI 2012 EM membrane slices (the U-Net paper's data) into sharded TFRecords.

Usage::

    python -m data_prep.isbi --src unet/data/membrane --out DIR [--val_slices=25-29 | --val_count=5]
        [--border_weights --w0=10 --sigma=5]

``--src`` holds ``train/image/<k>.png`` and ``train/label/<k>.png`` (k = 0..29), the PNG
slices of the challenge's ``train-volume.tif`` / ``train-labels.tif`` as packaged by
https://github.com/zhixuhao/unet (Arganda-Carreras et al., Front. Neuroanat. 2015; U-Net:
Ronneberger et al., MICCAI 2015, https://arxiv.org/abs/1505.04597). ``--src`` may also be
the ``train/`` folder itself or the repository root above ``data/membrane``.

Labels are 0 (membrane) and 255 (cell); they become classes 0 ``membrane`` and 1 ``cell``,
and any other value is an error. There is no val split: ``--val_slices`` (indices and
ranges, e.g. ``25-29`` or ``0,10,20``) or ``--val_count`` (the last N slices; 5 by default)
picks one. ``--border_weights`` stores the paper's weight maps (eq. 2, w0 = 10,
sigma = 5 px) computed by :mod:`data_prep.border_weights` with membrane as background.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Dict, List, Optional

import numpy as np
from absl import app, flags

from data_prep import cli
from data_prep.images import DataError, read_image, read_index_mask
from data_prep.writer import DatasetInfo, Item, Loaded, write_dataset

CLASS_NAMES = ["membrane", "cell"]
PALETTE = [[0, 0, 0], [255, 255, 255]]
IGNORE_LABEL = 255  # unused by the data; required to differ from the class ids
DATASET_INFO = DatasetInfo(name="isbi2012", num_classes=2, class_names=CLASS_NAMES, ignore_label=IGNORE_LABEL,
                           palette=PALETTE)
DEFAULT_VAL_COUNT = 5


@dataclasses.dataclass(frozen=True)
class IsbiOptions:
    """Whether to store U-Net border-weight maps, and their parameters."""

    border_weights: bool = False
    w0: float = 10.0
    sigma: float = 5.0


def binary_to_classes(label: np.ndarray, path: str) -> np.ndarray:
    """Maps 0 -> 0 (membrane) and 255 -> 1 (cell).

    Raises:
      DataError: any other value, naming the file, the values and their pixel count.
    """
    bad = (label != 0) & (label != 255)
    if bad.any():
        vals = sorted(int(v) for v in np.unique(label[bad]))
        raise DataError(path, f"{int(bad.sum())} pixel(s) have values {vals[:10]}; ISBI labels are 0 "
                        "(membrane) or 255 (cell) only.",
                        "use the original binary label PNGs (not resized or smoothed ones), or threshold "
                        "them at 128 first.")
    return (label // 255).astype(np.uint8)


def load_isbi_item(item: Item, opts: IsbiOptions) -> Loaded:
    """``load`` for :func:`write_dataset`: grayscale PNG as is, 0/255 label -> 0/1."""
    image, fmt, h, w = read_image(item.image_path)
    label = binary_to_classes(read_index_mask(item.mask_path), item.mask_path)
    weight = None
    if opts.border_weights and label.shape == (h, w):
        from data_prep.border_weights import unet_weight_map  # pylint: disable=import-outside-toplevel

        weight = unet_weight_map(label, background=0, w0=opts.w0, sigma=opts.sigma, ignore_label=IGNORE_LABEL)
    return Loaded(image=image, image_format=fmt, height=h, width=w, label=label, weight=weight)


def resolve_train_dir(src: str) -> str:
    """The folder holding ``image/`` and ``label/``: ``src``, ``src/train`` or ``src/data/membrane/train``."""
    cli.require_dir(src, "--src", "zhixuhao/unet's data/membrane folder (with train/image and train/label)")
    for cand in (src, os.path.join(src, "train"), os.path.join(src, "data", "membrane", "train")):
        if os.path.isdir(os.path.join(cand, "image")) and os.path.isdir(os.path.join(cand, "label")):
            return cand
    raise ValueError(f"--src={src!r} has no image/ and label/ folders (nor train/ or data/membrane/train/ "
                     "below it). Expected zhixuhao/unet's data/membrane/train/{image,label}/<k>.png.")


def list_slices(train_dir: str) -> Dict[int, Item]:
    """``{k: Item}`` for every ``image/<k>.png`` with its ``label/<k>.png``.

    Raises:
      ConversionError: non-numeric names, or an image or label without its partner.
    """
    errors: List[str] = []
    found: Dict[str, Dict[int, str]] = {}
    for sub in ("image", "label"):
        d = os.path.join(train_dir, sub)
        found[sub] = {}
        for name in sorted(os.listdir(d)):
            stem, ext = os.path.splitext(name)
            if ext.lower() != ".png":
                continue
            if not stem.isdigit():
                errors.append(f"{os.path.join(d, name)}: slice files are named <k>.png with k = 0, 1, ... "
                              "Fix: rename or remove it.")
                continue
            found[sub][int(stem)] = os.path.join(d, name)
    images, labels = found["image"], found["label"]
    errors += [f"{images[k]}: no label {os.path.join(train_dir, 'label', f'{k}.png')}." for k in sorted(set(images) - set(labels))]
    errors += [f"{labels[k]}: no image {os.path.join(train_dir, 'image', f'{k}.png')}." for k in sorted(set(labels) - set(images))]
    cli.raise_collected(errors, f"the ISBI slices in {train_dir}")
    if not images:
        raise DataError(os.path.join(train_dir, "image"), "no <k>.png slices.", "point --src at data/membrane.")
    return {k: Item(key=str(k), image_path=images[k], mask_path=labels[k], meta={"slice": k},
                    size_hint=cli.file_size(images[k], labels[k])) for k in sorted(images)}


def split_slices(slices: Dict[int, Item], val_slices: str = "", val_count: Optional[int] = None) -> Dict[str, List[Item]]:
    """Splits into ``train`` and ``val`` by ``val_slices`` or the last ``val_count`` slices.

    Raises:
      ValueError: both given, an index that is not a slice, or no training slice left.
    """
    ks = sorted(slices)
    if val_slices and val_count is not None:
        raise ValueError(f"pass --val_slices or --val_count, not both. Received: --val_slices={val_slices!r}, "
                         f"--val_count={val_count}")
    if val_slices:
        val = cli.parse_index_ranges(val_slices, "--val_slices")
        missing = [k for k in val if k not in slices]
        if missing:
            raise ValueError(f"--val_slices names slices {missing[:10]} that do not exist; there are "
                             f"{ks[0]}..{ks[-1]} ({len(ks)}). Received: --val_slices={val_slices!r}")
    else:
        count = DEFAULT_VAL_COUNT if val_count is None else val_count
        if not 0 <= count < len(ks):
            raise ValueError(f"--val_count must be in [0, {len(ks)}) for {len(ks)} slices. Received: --val_count={count}")
        val = ks[len(ks) - count:] if count else []
    train = [k for k in ks if k not in set(val)]
    if not train:
        raise ValueError(f"no training slice left after --val_slices={val_slices!r}.")
    out = {"train": [slices[k] for k in train]}
    if val:
        out["val"] = [slices[k] for k in val]
    return out


def convert_isbi(src: str, out: str, *, val_slices: str = "", val_count: Optional[int] = None,
                 options: IsbiOptions = IsbiOptions(), workers: Optional[int] = None, shard_mb: float = 64,
                 overwrite: bool = False, log=print) -> dict:
    """Library entry point of ``python -m data_prep.isbi``; returns the manifest."""
    train_dir = resolve_train_dir(src)
    items = split_slices(list_slices(train_dir), val_slices, val_count)
    log(f"ISBI 2012 at {train_dir}: {cli.count_items(items)} slices"
        f"{'; computing border weights (a few seconds per slice)' if options.border_weights else ''}.")
    extra = {"source": {"converter": "data_prep.isbi",
                        "val_slices": [it.meta["slice"] for it in items.get("val", [])],
                        "border_weights": dataclasses.asdict(options) if options.border_weights else None}}
    return write_dataset(out, items, functools.partial(load_isbi_item, opts=options), DATASET_INFO, workers=workers,
                         shard_bytes=int(shard_mb * (1 << 20)), overwrite=overwrite, log=log, extra_manifest=extra)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.isbi``."""
    flags.DEFINE_string("src", None, "zhixuhao/unet's data/membrane folder (with train/image, train/label).")
    flags.DEFINE_string("val_slices", "", "Val slice indices and ranges, e.g. 25-29 or 0,10,20.")
    flags.DEFINE_integer("val_count", None, f"Use the last N slices as val (default {DEFAULT_VAL_COUNT}; 0: no val).")
    flags.DEFINE_bool("border_weights", False, "Store U-Net border-weight maps (membrane = background).")
    flags.DEFINE_float("w0", 10.0, "Border weight amplitude, for --border_weights.")
    flags.DEFINE_float("sigma", 5.0, "Border width in pixels, for --border_weights.")
    cli.define_output_flags()
    flags.mark_flags_as_required(["src", "out_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.exit_on_error(lambda: convert_isbi(
        FLAGS.src, FLAGS.out_dir, val_slices=FLAGS.val_slices, val_count=FLAGS.val_count,
        options=IsbiOptions(FLAGS.border_weights, FLAGS.w0, FLAGS.sigma), workers=FLAGS.workers,
        shard_mb=FLAGS.shard_mb, overwrite=FLAGS.overwrite))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
