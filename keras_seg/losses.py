"""Sparse, weighted pixel cross-entropy from logits.

``loss = sum_i w_i * CE_i / sum_i w_i`` over the non-ignored pixels ``i``, with
``w_i = class_weight[y_i] * pixel_weight_i``: PyTorch's ``NLLLoss(weight, ignore_index,
reduction="mean")`` with an extra per-pixel weight map (the U-Net paper's border weights).
Pixels with the ignore label (or any label outside ``[0, num_classes)``) are left out of
both the sum and the normaliser.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import keras
import tensorflow as tf

__all__ = ["pixel_ce_sums", "weighted_pixel_cross_entropy", "WeightedPixelCrossEntropy"]


def pixel_ce_sums(
    labels,
    logits,
    *,
    num_classes: int,
    ignore_label: int = 255,
    class_weights: Optional[Sequence[float]] = None,
    pixel_weights=None,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Returns ``(sum of w*CE, sum of w)`` over valid pixels, both float32 scalars.

    Distributed training divides the first by the second summed over all replicas, which
    makes multi-replica training compute exactly the single-device loss.

    Args:
      labels: int (B, H, W) class ids, ``ignore_label`` where unlabelled.
      logits: float (B, H, W, num_classes).
      num_classes: number of classes.
      ignore_label: label left out of the loss.
      class_weights: optional per-class weights, length ``num_classes``.
      pixel_weights: optional float (B, H, W) weight map.
    """
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(logits, tf.float32)
    valid = tf.logical_and(
        tf.logical_and(labels >= 0, labels < num_classes), tf.not_equal(labels, ignore_label)
    )
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    w = tf.cast(valid, tf.float32)
    if class_weights is not None:
        cw = tf.constant(class_weights, tf.float32)
        w = w * tf.gather(cw, safe)
    if pixel_weights is not None:
        w = w * tf.cast(pixel_weights, tf.float32)
    return tf.reduce_sum(w * ce), tf.reduce_sum(w)


def weighted_pixel_cross_entropy(labels, logits, **kwargs) -> tf.Tensor:
    """Mean weighted pixel cross-entropy; 0 when no pixel is valid. See :func:`pixel_ce_sums`."""
    s, n = pixel_ce_sums(labels, logits, **kwargs)
    return tf.math.divide_no_nan(s, n)


@keras.saving.register_keras_serializable(package="keras_seg")
class WeightedPixelCrossEntropy(keras.losses.Loss):
    """Keras ``Loss`` form of :func:`weighted_pixel_cross_entropy` for ``model.fit``.

    The whole batch is normalised by its total weight (not per image), as the training loop does.

    Args:
      num_classes: number of classes.
      ignore_label: label left out of the loss.
      class_weights: optional per-class weights.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, class_weights=None,
                 name="weighted_pixel_cross_entropy", **kwargs):
        kwargs.pop("reduction", None)  # the loss reduces over the whole batch itself
        super().__init__(name=name, reduction=None, **kwargs)
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.int32)
        if y_true.shape.rank == 4:
            y_true = y_true[..., 0]
        return weighted_pixel_cross_entropy(
            y_true, y_pred, num_classes=self.num_classes, ignore_label=self.ignore_label,
            class_weights=self.class_weights,
        )

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "ignore_label": self.ignore_label, "class_weights": self.class_weights}
