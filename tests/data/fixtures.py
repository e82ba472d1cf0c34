"""Small synthetic image/mask folders for data tests."""

import os

import numpy as np
from PIL import Image


def write_pair(root, split, stem, h=20, w=24, num_classes=3, seed=0, ignore=255, fmt="png"):
    """Writes images/<split>/<stem>.<fmt> and masks/<split>/<stem>.png; returns (rgb, mask)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
    mask[0, :3] = ignore
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub, split), exist_ok=True)
    Image.fromarray(rgb).save(os.path.join(root, "images", split, f"{stem}.{fmt}"))
    Image.fromarray(mask).save(os.path.join(root, "masks", split, f"{stem}.png"))
    return rgb, mask


def make_folder_dataset(root, n_train=6, n_val=2, **kw):
    """A two-split folder dataset; returns {split: [(rgb, mask), ...]}."""
    out = {"train": [], "val": []}
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            out[split].append(write_pair(root, split, f"{split}{i:03d}", seed=(0 if split == "train" else 500) + i, **kw))
    return out


def make_converted_dataset(root, n_train=6, n_val=2, class_names=("a", "b", "c")) -> str:
    """A two-split folder dataset under ``root/src`` converted to TFRecords in ``root/tfr``; returns that path."""
    from data_prep.folder import convert_folder  # pylint: disable=import-outside-toplevel

    make_folder_dataset(os.path.join(root, "src"), n_train=n_train, n_val=n_val)
    out = os.path.join(root, "tfr")
    convert_folder(os.path.join(root, "src", "images"), os.path.join(root, "src", "masks"), out, list(class_names),
                   workers=1, log=lambda m: None)
    return out
