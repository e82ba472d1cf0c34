"""Input preprocessing shared by training, evaluation, prediction and export.

A model's preprocessing is part of its configuration (``model_config.json``'s
``"preprocessing"``, the export sidecar and the TFLite metadata), and one function,
:func:`normalize_image`, applies it everywhere, so an exported model sees exactly the inputs
the network was trained on (no train/serve skew). Two modes:

``"imagenet"``
    RGB, ``(x / 255 - mean) / std`` with ImageNet's statistics. Models trained from scratch.
``"caffe"``
    BGR, ``x - mean`` on the 0..255 scale, without scaling: what the ``keras.applications``
    VGG16 and ResNet ImageNet weights were trained on (``keras.applications.vgg16.
    preprocess_input``'s default mode). Models whose backbone loads those weights.

:func:`preprocessing_for` picks the mode of a model's options; training records it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import tensorflow as tf

# ImageNet statistics (RGB, 0..1 scale), mode "imagenet".
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
# keras.applications' "caffe" mode: the mean pixel on the 0..255 scale, in BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESSING = ("imagenet", "caffe")
DEFAULT = "imagenet"  # also what model_config.json files written before the key existed mean


def check_preprocessing(mode: str, where: str = "preprocessing") -> str:
    """Returns ``mode`` if it is one of :data:`PREPROCESSING`, else raises ValueError naming ``where``."""
    if mode not in PREPROCESSING:
        raise ValueError(f"{where} must be one of {PREPROCESSING}. Received: {mode!r}")
    return mode


def preprocessing_for(options: Mapping[str, Any], requested: Optional[str] = None) -> str:
    """The preprocessing of a model built with builder ``options``.

    ``requested`` (``None`` or ``"auto"``: choose) overrides the choice. A model whose
    ``backbone_weights`` option loads the ``keras.applications`` ImageNet weights (``"imagenet"``
    or a path to those files) gets ``"caffe"``, the inputs those weights were trained on;
    every other model gets ``"imagenet"``.
    """
    if requested not in (None, "auto"):
        return check_preprocessing(requested, "--preprocessing")
    return "caffe" if options.get("backbone_weights") else DEFAULT


def mean_pixel(mode: str = DEFAULT) -> Tuple[float, float, float]:
    """The RGB colour in [0, 255] that ``mode`` maps to 0 (the colour to pad images with)."""
    check_preprocessing(mode)
    if mode == "caffe":
        return tuple(reversed(CAFFE_MEAN_BGR))
    return tuple(255.0 * m for m in MEAN_RGB)


def normalize_image(image, mode: str = DEFAULT):
    """Maps RGB pixel values in [0, 255] (any dtype, channels last) to the network's float32 input.

    ``"imagenet"``: ``(x / 255 - mean) / std`` in RGB. ``"caffe"``: ``x[..., ::-1] - mean_bgr``.
    """
    check_preprocessing(mode)
    x = tf.cast(image, tf.float32)
    if mode == "caffe":
        return x[..., ::-1] - tf.constant(CAFFE_MEAN_BGR, tf.float32)
    return (x / 255.0 - tf.constant(MEAN_RGB, tf.float32)) / tf.constant(STD_RGB, tf.float32)


def preprocessing_record(mode: str) -> dict:
    """The JSON description of ``mode`` written next to exports (sidecar and TFLite metadata)."""
    check_preprocessing(mode)
    if mode == "caffe":
        return {"mode": "caffe", "channel_order": "BGR", "scale": 1.0, "mean": list(CAFFE_MEAN_BGR),
                "std": [1.0, 1.0, 1.0], "formula": "x[..., ::-1] - mean (x: RGB in 0..255)"}
    return {"mode": "imagenet", "channel_order": "RGB", "scale": 1.0 / 255.0, "mean_rgb": list(MEAN_RGB),
            "std_rgb": list(STD_RGB), "formula": "(x / 255 - mean_rgb) / std_rgb (x: RGB in 0..255)"}
