"""Image normalisation shared by training, evaluation, prediction and export.

One function, :func:`normalize_image`, so the exported models apply exactly the
normalisation the network was trained with (no train/serve skew).
"""

from __future__ import annotations

import tensorflow as tf

# ImageNet statistics (RGB, 0..1 scale): what pretrained backbones expect.
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)


def normalize_image(image):
    """Maps RGB pixel values in [0, 255] (any dtype) to float32 ``(x/255 - mean) / std``."""
    x = tf.cast(image, tf.float32) / 255.0
    return (x - tf.constant(MEAN_RGB, tf.float32)) / tf.constant(STD_RGB, tf.float32)
