"""Mask R-CNN heads: the RPN head, the box head, the mask head and the RoIAlign layer.

* RPN head: Faster R-CNN (Ren et al., 2015), https://arxiv.org/abs/1506.01497, shared over
  the FPN levels as in Lin et al., 2017, https://arxiv.org/abs/1612.03144 (section 4.1).
* Box head: the FPN paper's "2fc" head (section 4.2): two 1024-wide fully connected layers
  on 7x7 RoI features, then class logits and class-specific box deltas.
* Mask head: Mask R-CNN (He et al., 2017), https://arxiv.org/abs/1703.06870, figure 4
  (right): four 3x3 convolutions, a 2x2 stride-2 transposed convolution and a 1x1
  per-class predictor, giving 28x28 mask logits.

Initialisers follow Detectron2: RPN convolutions ``N(0, 0.01)``, class logits
``N(0, 0.01)``, box deltas ``N(0, 0.001)``, mask convolutions He normal (fan out), mask
logits ``N(0, 0.001)``, biases 0.
"""

from __future__ import annotations

from typing import Dict, Tuple

import keras
import tensorflow as tf

from keras_seg.detection.roi_align import roi_align

__all__ = [
    "FoldRois",
    "MultiLevelRoiAlign",
    "SelectClassMasks",
    "UnfoldRois",
    "box_head",
    "mask_head",
    "rpn_head",
]


def _normal(stddev: float) -> keras.initializers.Initializer:
    """``N(0, stddev)`` initialiser."""
    return keras.initializers.RandomNormal(stddev=stddev)


def _check_positive(**values) -> None:
    """Raises ``ValueError("x must be an int >= 1. Received: x=...")`` for the first bad value."""
    for arg, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1. Received: {arg}={value!r}")


def rpn_head(
    features: Dict[int, "keras.KerasTensor"], num_anchors: int = 3, name: str = "rpn"
) -> Tuple["keras.KerasTensor", "keras.KerasTensor"]:
    """Region Proposal Network head, one set of weights applied to every pyramid level.

    A 3x3 convolution keeping the input width (``{name}_conv``) + ReLU, then 1x1
    convolutions to ``A`` objectness logits (``{name}_objectness``) and ``4 A`` deltas
    (``{name}_deltas``, anchor-major: channel ``4 a + k``), as torchvision's ``RPNHead``.
    Each level's outputs are flattened in (row, col, anchor) order, the order of
    :func:`keras_seg.detection.boxes.fpn_anchors`, and concatenated in increasing level
    order (:func:`keras_seg.detection.boxes.concat_anchors`).
    https://arxiv.org/abs/1506.01497, https://arxiv.org/abs/1612.03144.

    Args:
      features: ``{level: [B, H_l, W_l, C]}``, e.g. the output of :func:`~keras_seg.detection.fpn.fpn`.
      num_anchors: anchors per location ``A`` (the number of aspect ratios).
      name: prefix of every layer.

    Returns:
      ``(objectness [B, N], deltas [B, N, 4])`` with ``N = A * sum_l H_l * W_l``.

    Raises:
      ValueError: for empty features or a non-positive ``num_anchors``.
    """
    if not features:
        raise ValueError(f"features must hold at least one level. Received: features={features!r}")
    _check_positive(num_anchors=num_anchors)
    width = features[min(features)].shape[-1]
    conv = keras.layers.Conv2D(width, 3, padding="same", kernel_initializer=_normal(0.01), name=f"{name}_conv")
    relu = keras.layers.Activation("relu", name=f"{name}_relu")
    objectness = keras.layers.Conv2D(num_anchors, 1, kernel_initializer=_normal(0.01), name=f"{name}_objectness")
    deltas = keras.layers.Conv2D(4 * num_anchors, 1, kernel_initializer=_normal(0.01), name=f"{name}_deltas")
    logits, boxes = [], []
    for level in sorted(features):
        x = relu(conv(features[level]))
        logits.append(keras.layers.Reshape((-1,), name=f"{name}_p{level}_objectness_flat")(objectness(x)))
        boxes.append(keras.layers.Reshape((-1, 4), name=f"{name}_p{level}_deltas_flat")(deltas(x)))
    if len(logits) == 1:
        return logits[0], boxes[0]
    return (
        keras.layers.Concatenate(axis=1, name=f"{name}_objectness_concat")(logits),
        keras.layers.Concatenate(axis=1, name=f"{name}_deltas_concat")(boxes),
    )


def box_head(
    roi_features, num_classes: int, fc_width: int = 1024, name: str = "box_head"
) -> Tuple["keras.KerasTensor", "keras.KerasTensor"]:
    """The FPN "2fc" box head with a class-specific box predictor.

    Flatten (``{name}_flatten``) -> ``{name}_fc1`` + ReLU -> ``{name}_fc2`` + ReLU, then
    ``{name}_class_logits`` (``K + 1``, index 0 background) and ``{name}_deltas`` (``K * 4``,
    class ``c`` in ``1..K`` at slot ``c - 1``, no background slot, as Detectron2 and
    :func:`keras_seg.detection.losses.box_head_loss` expect). Predictors are float32.
    https://arxiv.org/abs/1612.03144 (section 4.2).

    Args:
      roi_features: ``[B, S, 7, 7, C]`` RoIAlign features.
      num_classes: ``K``, object classes without the background.
      fc_width: width of both hidden layers (1024 in the paper).
      name: prefix of every layer.

    Returns:
      ``(class_logits [B, S, K + 1], deltas [B, S, K, 4])``.

    Raises:
      ValueError: for a non-positive ``num_classes`` or ``fc_width``.
    """
    _check_positive(num_classes=num_classes, fc_width=fc_width)
    size = 1
    for dim in roi_features.shape[2:]:
        size *= dim
    x = keras.layers.Reshape((-1, size), name=f"{name}_flatten")(roi_features)
    for i in (1, 2):
        x = keras.layers.Dense(fc_width, kernel_initializer="lecun_uniform", name=f"{name}_fc{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    logits = keras.layers.Dense(
        num_classes + 1, kernel_initializer=_normal(0.01), dtype="float32", name=f"{name}_class_logits"
    )(x)
    deltas = keras.layers.Dense(
        4 * num_classes, kernel_initializer=_normal(0.001), dtype="float32", name=f"{name}_deltas"
    )(x)
    deltas = keras.layers.Reshape((-1, num_classes, 4), name=f"{name}_deltas_reshape")(deltas)
    return logits, deltas


def mask_head(
    roi_features, num_classes: int, width: int = 256, num_convs: int = 4, name: str = "mask_head"
) -> "keras.KerasTensor":
    """Mask R-CNN's FPN mask head: ``num_convs`` 3x3 convolutions, 2x upsampling, per-class logits.

    ``{name}_fold`` merges the RoI axis into the batch, then ``{name}_conv{i}`` + ReLU,
    ``{name}_deconv`` (2x2, stride 2) + ReLU, ``{name}_logits`` (1x1, ``K`` channels, float32,
    class ``c`` at channel ``c - 1``), and ``{name}_unfold`` restores ``[B, S]``.
    He et al., 2017, https://arxiv.org/abs/1703.06870, figure 4.

    Args:
      roi_features: ``[B, S, 14, 14, C]`` RoIAlign features.
      num_classes: ``K``.
      width: channels of the convolutions (256 in the paper).
      num_convs: number of 3x3 convolutions (4 in the paper).
      name: prefix of every layer.

    Returns:
      ``[B, S, 28, 28, K]`` mask logits.

    Raises:
      ValueError: for a non-positive ``num_classes``, ``width`` or ``num_convs``.
    """
    _check_positive(num_classes=num_classes, width=width, num_convs=num_convs)
    init = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    x = FoldRois(name=f"{name}_fold")(roi_features)
    for i in range(1, num_convs + 1):
        x = keras.layers.Conv2D(width, 3, padding="same", kernel_initializer=init, name=f"{name}_conv{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    x = keras.layers.Conv2DTranspose(width, 2, strides=2, kernel_initializer=init, name=f"{name}_deconv")(x)
    x = keras.layers.Activation("relu", name=f"{name}_deconv_relu")(x)
    x = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=_normal(0.001), dtype="float32", name=f"{name}_logits"
    )(x)
    return UnfoldRois(name=f"{name}_unfold")(x, roi_features)


@keras.saving.register_keras_serializable(package="keras_seg")
class FoldRois(keras.layers.Layer):
    """Merges the first two axes: ``[B, S, ...]`` to ``[B * S, ...]`` (one RESHAPE)."""

    def call(self, x):
        return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))

    def compute_output_shape(self, input_shape):
        b, s = input_shape[:2]
        return (None if b is None or s is None else b * s,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="keras_seg")
class UnfoldRois(keras.layers.Layer):
    """Splits the first axis of ``x`` into the ``[B, S]`` of ``ref``: the inverse of :class:`FoldRois`."""

    def call(self, x, ref):
        return tf.reshape(x, tf.concat([tf.shape(ref)[:2], tf.shape(x)[1:]], axis=0))

    def compute_output_shape(self, x_shape, ref_shape):
        return tuple(ref_shape[:2]) + tuple(x_shape[1:])


@keras.saving.register_keras_serializable(package="keras_seg")
class MultiLevelRoiAlign(keras.layers.Layer):
    """:func:`keras_seg.detection.roi_align.roi_align` over pyramid levels ``min_level..max_level``.

    Called as ``layer([P_min, ..., P_max], boxes)``; boxes are treated as constants (their
    gradient is stopped, as in Detectron2). https://arxiv.org/abs/1703.06870.

    Args:
      output_size: bins per side (7 for the box head, 14 for the mask head).
      sampling_ratio: bilinear samples per bin per side.
      min_level: level of the first feature map.
      max_level: level of the last feature map.
    """

    def __init__(self, output_size: int = 7, sampling_ratio: int = 2, min_level: int = 2, max_level: int = 5,
                 **kwargs):
        super().__init__(**kwargs)
        _check_positive(output_size=output_size, sampling_ratio=sampling_ratio)
        if min_level > max_level:
            raise ValueError(f"min_level must be <= max_level. Received: min_level={min_level}, max_level={max_level}")
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.min_level, self.max_level = min_level, max_level

    def call(self, features, boxes):
        levels = range(self.min_level, self.max_level + 1)
        if len(features) != len(levels):
            raise ValueError(f"{self.name} expects {len(levels)} feature maps (levels {list(levels)}). "
                             f"Received: {len(features)} maps")
        pyramid = {level: tf.cast(f, tf.float32) for level, f in zip(levels, features)}
        out = roi_align(pyramid, tf.stop_gradient(boxes), output_size=self.output_size,
                        sampling_ratio=self.sampling_ratio, min_level=self.min_level, max_level=self.max_level)
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, features_shape, boxes_shape):
        return tuple(boxes_shape[:2]) + (self.output_size, self.output_size, features_shape[0][-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "sampling_ratio": self.sampling_ratio,
                "min_level": self.min_level, "max_level": self.max_level}


@keras.saving.register_keras_serializable(package="keras_seg")
class SelectClassMasks(keras.layers.Layer):
    """Probabilities of each detection's own class mask: ``sigmoid(logits[..., class - 1])``.

    Called as ``layer(mask_logits [B, D, Hm, Wm, K], classes [B, D])``; detections of class
    ``-1`` (padding) get all-zero masks. Returns float32 ``[B, D, Hm, Wm]``.
    """

    def call(self, mask_logits, classes):
        classes = tf.cast(classes, tf.int32)
        logits = tf.transpose(tf.cast(mask_logits, tf.float32), (0, 1, 4, 2, 3))
        chosen = tf.gather(logits, tf.maximum(classes - 1, 0), batch_dims=2)
        return tf.sigmoid(chosen) * tf.cast(classes > 0, tf.float32)[..., None, None]

    def compute_output_shape(self, mask_logits_shape, classes_shape):
        return tuple(mask_logits_shape[:4])
