"""Joint image/label augmentation with stateless random ops (reproducible per seed)."""

from __future__ import annotations

import dataclasses
from typing import Tuple

import tensorflow as tf

from keras_seg.data.preprocess import mean_pixel

# The mean colour of the default preprocessing in [0, 255]: normalize_image maps it to 0, the
# value every inference path (batch padding, LiteRT padding) pads with, so padded training
# pixels look the same. Models with "caffe" preprocessing pad with mean_pixel("caffe").
MEAN_PIXEL = mean_pixel("imagenet")
# Bounds of the jitter settings: contrast and saturation factors 1 +- 0.25 * strength must stay
# positive, and a hue shift past half a turn wraps round.
JITTER_STRENGTH_MAX = 4.0
HUE_DELTA_MAX = 0.5


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings.

    Attributes:
      crop_size: ``(H, W)`` of the training crops.
      min_scale, max_scale: range of the random rescale factor.
      flip: random horizontal flips.
      photometric: random brightness, contrast and saturation jitter.
      jitter_strength: scales the jitter's ranges: brightness ``+-0.125 * s`` (of [0, 1]),
        contrast and saturation factors in ``[1 - 0.25 * s, 1 + 0.25 * s]``; 1 is the default
        jitter, 2 doubles every range. In ``[0, 4)`` (a factor must stay positive).
      hue_delta: with ``photometric``, a random hue shift of at most this many turns of the
        colour wheel (``tf.image.stateless_random_hue``; in ``[0, 0.5]``; 0: none).
      ignore_label: label of padded pixels.
      pad_value: RGB colour in [0, 255] of padded image pixels: the preprocessing's mean colour
        (:func:`keras_seg.data.preprocess.mean_pixel`), which the network sees as 0, as at
        inference (DeepLab pads the same way).
    """

    crop_size: Tuple[int, int]
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True
    photometric: bool = True
    jitter_strength: float = 1.0
    hue_delta: float = 0.0
    ignore_label: int = 255
    pad_value: Tuple[float, float, float] = MEAN_PIXEL

    def __post_init__(self):
        if not 0 <= self.jitter_strength < JITTER_STRENGTH_MAX:
            raise ValueError(f"jitter_strength must be in [0, {JITTER_STRENGTH_MAX:g}): contrast and saturation "
                             f"factors are 1 +- 0.25 * jitter_strength. Received: jitter_strength={self.jitter_strength}")
        if not 0 <= self.hue_delta <= HUE_DELTA_MAX:
            raise ValueError(f"hue_delta must be in [0, {HUE_DELTA_MAX:g}] (turns of the colour wheel). "
                             f"Received: hue_delta={self.hue_delta}")


def augment(example, seed, cfg: AugmentConfig):
    """Photometric jitter, random scale, pad (label: ignore), random crop and flip.

    The jitter runs first, on the whole frame, so padding never enters its contrast mean,
    and the padding (image: ``cfg.pad_value``, weight: 0) is never jittered.

    Image and label are transformed jointly; labels and weights are resized with nearest
    neighbour, images bilinearly. ``seed`` is a shape-[2] int tensor; the same seed always
    gives the same result.

    Args:
      example: dict from :func:`keras_seg.data.decode.decode_example`.
      seed: stateless seed, shape [2].
      cfg: :class:`AugmentConfig`.

    Returns:
      dict with ``image`` float32 (crop_h, crop_w, 3) in [0, 255], ``label`` uint8 and
      ``weight`` float32 of shape (crop_h, crop_w, 1).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8)
    image = tf.cast(example["image"], tf.float32)
    label, weight = example["label"], example["weight"]
    crop_h, crop_w = cfg.crop_size
    if cfg.photometric:
        image = _jitter(image, seeds[4:8], cfg.jitter_strength, cfg.hue_delta)
    image, label, weight = _random_scale(image, label, weight, seeds[0], cfg)
    image, label, weight = _pad_to_crop(image, label, weight, cfg)
    image, label, weight = _random_crop(image, label, weight, seeds[1:3], cfg.crop_size)
    if cfg.flip:
        image, label, weight = _random_flip(image, label, weight, seeds[3])
    image = tf.ensure_shape(image, [crop_h, crop_w, 3])
    label = tf.ensure_shape(label, [crop_h, crop_w, 1])
    weight = tf.ensure_shape(weight, [crop_h, crop_w, 1])
    return {"image": image, "label": label, "weight": weight}


def _jitter(image, seeds, strength=1.0, hue_delta=0.0):
    """Random brightness, contrast, saturation (and hue) of a float image in [0, 255]; ``seeds`` is (4, 2).

    ``strength`` scales the ranges (see :class:`AugmentConfig`); ``hue_delta`` 0 draws no hue.
    """
    x = image / 255.0
    if strength > 0:
        x = tf.image.stateless_random_brightness(x, 0.125 * strength, seeds[0])
        x = tf.image.stateless_random_contrast(x, 1 - 0.25 * strength, 1 + 0.25 * strength, seeds[1])
        x = tf.image.stateless_random_saturation(x, 1 - 0.25 * strength, 1 + 0.25 * strength, seeds[2])
    if hue_delta > 0:
        x = tf.image.stateless_random_hue(tf.clip_by_value(x, 0.0, 1.0), hue_delta, seeds[3])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def _random_scale(image, label, weight, seed, cfg: AugmentConfig):
    """Rescales by a factor in ``[cfg.min_scale, cfg.max_scale)``: image bilinear, label and weight nearest."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.random.stateless_uniform([], seed, cfg.min_scale, cfg.max_scale)
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
    image = tf.image.resize(image, new_hw, method="bilinear")
    label = tf.image.resize(label, new_hw, method="nearest")
    weight = tf.image.resize(weight, new_hw, method="nearest")
    return image, label, weight


def _pad_to_crop(image, label, weight, cfg: AugmentConfig):
    """Pads the bottom and right up to the crop size: image ``cfg.pad_value``, label ignore, weight 0."""
    crop_h, crop_w = cfg.crop_size
    size = tf.shape(label)[:2]
    pad_h = tf.maximum(crop_h - size[0], 0)
    pad_w = tf.maximum(crop_w - size[1], 0)
    paddings = [[0, pad_h], [0, pad_w], [0, 0]]
    image = tf.concat([tf.pad(image[..., c : c + 1], paddings, constant_values=cfg.pad_value[c])
                       for c in range(3)], axis=-1)
    label = tf.pad(label, paddings, constant_values=cfg.ignore_label)
    weight = tf.pad(weight, paddings)
    return image, label, weight


def _random_crop(image, label, weight, seeds, crop_size):
    """The same random ``crop_size`` window of all three; ``seeds`` (2, 2) draw its top and left."""
    crop_h, crop_w = crop_size
    size = tf.shape(label)[:2]
    top = tf.random.stateless_uniform([], seeds[0], 0, size[0] - crop_h + 1, tf.int32)
    left = tf.random.stateless_uniform([], seeds[1], 0, size[1] - crop_w + 1, tf.int32)
    image = image[top : top + crop_h, left : left + crop_w]
    label = label[top : top + crop_h, left : left + crop_w]
    weight = weight[top : top + crop_h, left : left + crop_w]
    return image, label, weight


def _random_flip(image, label, weight, seed):
    """Flips all three left-right together with probability 1/2."""
    do_flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(
        do_flip,
        lambda: (tf.reverse(image, [1]), tf.reverse(label, [1]), tf.reverse(weight, [1])),
        lambda: (image, label, weight),
    )
