"""The PIL + NumPy baseline of the input-pipeline benchmark: keras_segmentation's approach.

:func:`camvid_generator` reads, augments and stacks image/label PNG pairs in the calling
Python thread, as keras_segmentation's ``image_segmentation_generator`` does, with keras_seg's
augmentation and normalisation written in NumPy (:func:`augment_numpy`,
:func:`normalize_image_np`); :mod:`benchmarks.pipeline` times it against ``tf.data``.
"""

from __future__ import annotations

import os
from typing import Iterator, List, Tuple

import numpy as np
from PIL import Image

from benchmarks.pipeline_data import CAMVID_CROP, CAMVID_IGNORE, camvid_augment, check_int
from keras_seg.data.augment import AugmentConfig
from keras_seg.data.preprocess import MEAN_RGB, STD_RGB


def normalize_image_np(image: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`keras_seg.data.preprocess.normalize_image`: float32 ``(x/255 - mean) / std``."""
    x = np.asarray(image, np.float32) / np.float32(255.0)
    return (x - np.asarray(MEAN_RGB, np.float32)) / np.asarray(STD_RGB, np.float32)


def adjust_saturation_np(x: np.ndarray, factor: float) -> np.ndarray:
    """``tf.image.adjust_saturation`` of an RGB image in [0, 1], in closed form.

    Scaling HSV saturation with hue and value fixed moves each channel ``c`` of a pixel
    with max ``v`` and min ``m`` to ``v - (v - c) * min(factor, v / (v - m))`` (the min is
    saturation clipped at 1); no colour-space round trip is needed.
    """
    v, m = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where((v > 0) & (v > m), v / (v - m), 0.0).astype(np.float32)
    return v - (v - x) * np.minimum(np.float32(factor), limit)


def _photometric(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter of an RGB image in [0, 1], as ``augment``'s."""
    x = x + np.float32(rng.uniform(-0.125, 0.125))
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = (x - mean) * np.float32(rng.uniform(0.75, 1.25)) + mean
    return np.clip(adjust_saturation_np(x, rng.uniform(0.75, 1.25)), 0.0, 1.0)


def augment_numpy(image: Image.Image, label: Image.Image, rng: np.random.Generator,
                  cfg: AugmentConfig) -> Tuple[np.ndarray, np.ndarray]:
    """``augment``'s semantics with PIL and NumPy: ``(image float32 [0, 255], label uint8)`` crops.

    Photometric jitter of the whole frame, random scale (PIL bilinear for the image, nearest
    for the label), padding at the bottom/right (image ``cfg.pad_value``, label
    ``ignore_label``) to the crop, random crop and flip. Padding and cropping are one step:
    the crop is cut from a canvas that already holds the padding values.
    """
    crop_h, crop_w = cfg.crop_size
    if cfg.photometric:
        jittered = _photometric(np.asarray(image, np.float32) / np.float32(255.0), rng) * np.float32(255.0)
        image = Image.fromarray(np.clip(np.round(jittered), 0, 255).astype(np.uint8))
    scale = rng.uniform(cfg.min_scale, cfg.max_scale)
    w, h = image.size
    new_w, new_h = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
    img = np.asarray(image.resize((new_w, new_h), Image.BILINEAR), np.float32)
    lab = np.asarray(label.resize((new_w, new_h), Image.NEAREST))
    top = int(rng.integers(0, max(new_h, crop_h) - crop_h + 1))
    left = int(rng.integers(0, max(new_w, crop_w) - crop_w + 1))
    img_crop = np.empty((crop_h, crop_w, 3), np.float32)
    img_crop[...] = np.asarray(cfg.pad_value, np.float32)
    lab_crop = np.full((crop_h, crop_w), cfg.ignore_label, np.uint8)
    src = img[top:top + crop_h, left:left + crop_w]
    img_crop[: src.shape[0], : src.shape[1]] = src
    lab_crop[: src.shape[0], : src.shape[1]] = lab[top:top + crop_h, left:left + crop_w]
    if cfg.flip and rng.random() < 0.5:
        img_crop, lab_crop = img_crop[:, ::-1], lab_crop[:, ::-1]
    return img_crop, lab_crop


def _pairs(raw_dir: str, split: str) -> List[Tuple[str, str]]:
    images, masks = os.path.join(raw_dir, "images", split), os.path.join(raw_dir, "masks", split)
    if not os.path.isdir(images) or not os.path.isdir(masks):
        raise ValueError(f"{raw_dir} has no images/{split} and masks/{split} folders (the layout of "
                         f"make_camvid_like). Received: raw_dir={raw_dir!r}")
    names = sorted(f for f in os.listdir(images) if f.endswith(".png"))
    if not names:
        raise ValueError(f"{images} holds no PNG images. Received: raw_dir={raw_dir!r}")
    return [(os.path.join(images, f), os.path.join(masks, f)) for f in names]


def camvid_generator(raw_dir: str, batch: int, *, split: str = "train", crop_size: Tuple[int, int] = CAMVID_CROP,
                     ignore_label: int = CAMVID_IGNORE, seed: int = 0
                     ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless single-threaded PIL + NumPy training batches, keras_segmentation's approach.

    Like ``image_segmentation_generator`` it loops over shuffled image/label file pairs,
    reads, augments and ``np.stack`` s them in the calling thread; the augmentation and
    normalisation are keras_seg's (:func:`augment_numpy`, :func:`normalize_image_np`).

    Yields:
      ``(images float32 (B, H, W, 3), labels int32 (B, H, W), weights float32 (B, H, W))``,
      the element structure of ``make_dataset`` (weights are ones).

    Raises:
      ValueError: bad ``batch`` or no images under ``raw_dir/images/split``.
    """
    check_int(1, batch=batch)
    return _generate(_pairs(raw_dir, split), batch, camvid_augment(ignore_label, crop_size), seed)


def _generate(pairs: List[Tuple[str, str]], batch: int, cfg: AugmentConfig, seed: int):
    """The loop of :func:`camvid_generator` (a separate function, so that bad arguments raise at the call)."""
    rng = np.random.default_rng(seed)
    weights = np.ones((batch,) + tuple(cfg.crop_size), np.float32)
    images, labels = [], []
    while True:
        for i in rng.permutation(len(pairs)):
            with Image.open(pairs[i][0]) as im, Image.open(pairs[i][1]) as lb:
                img, lab = augment_numpy(im.convert("RGB"), lb, rng, cfg)
            images.append(normalize_image_np(img))
            labels.append(lab.astype(np.int32))
            if len(images) == batch:
                yield np.stack(images), np.stack(labels), weights
                images, labels = [], []
