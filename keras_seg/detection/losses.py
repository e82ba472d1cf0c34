"""Mask R-CNN losses: RPN objectness and boxes, head classification and boxes, masks.

Pure functions of batched, padded tensors that return float32 scalars and are 0 (never
NaN) when nothing is left to average over.

* Faster R-CNN (Ren et al., 2015), eq. (1): https://arxiv.org/abs/1506.01497
* Fast R-CNN (Girshick, 2015), eq. (3) smooth L1: https://arxiv.org/abs/1504.08083
* Mask R-CNN (He et al., 2017), L_mask in section 3: https://arxiv.org/abs/1703.06870
"""

from __future__ import annotations

import tensorflow as tf

__all__ = [
    "box_head_loss",
    "box_loss",
    "classification_loss",
    "mask_loss",
    "rpn_box_loss",
    "rpn_objectness_loss",
    "smooth_l1",
]


def _count(mask: tf.Tensor) -> tf.Tensor:
    """Number of true entries of a boolean mask, as float32."""
    return tf.reduce_sum(tf.cast(mask, tf.float32))


def rpn_objectness_loss(logits, labels) -> tf.Tensor:
    """Sigmoid binary cross-entropy over the sampled anchors.

    Args:
      logits: float ``[B, N]`` objectness logits.
      labels: int ``[B, N]``: 1 positive, 0 negative, -1 not sampled (ignored).

    Returns:
      float32 scalar: the mean over sampled anchors of all images, 0 when there are none.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.convert_to_tensor(labels)
    sampled = labels >= 0
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels == 1, tf.float32), logits=logits)
    return tf.math.divide_no_nan(tf.reduce_sum(tf.where(sampled, bce, 0.0)), _count(sampled))


def smooth_l1(pred, target, beta: float = 1.0) -> tf.Tensor:
    """Element-wise smooth L1: ``0.5 * d**2 / beta`` if ``|d| < beta`` else ``|d| - 0.5 * beta``.

    Fast R-CNN's eq. (3) is ``beta = 1``; ``beta = 0`` is plain L1 (Detectron2's default).

    Args:
      pred: float tensor.
      target: float tensor of the same shape.
      beta: non-negative transition point between the quadratic and linear parts.

    Returns:
      float32 tensor of ``pred``'s shape.

    Raises:
      ValueError: if ``beta < 0``.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0. Received: beta={beta}")
    diff = tf.abs(tf.cast(pred, tf.float32) - tf.cast(target, tf.float32))
    if beta == 0:
        return diff
    return tf.where(diff < beta, 0.5 * tf.square(diff) / beta, diff - 0.5 * beta)


def box_loss(pred, target, weights_mask, normaliser, beta: float = 1.0) -> tf.Tensor:
    """Smooth L1 summed over the 4 deltas and the masked boxes, divided by ``normaliser``.

    Args:
      pred: float ``[..., 4]`` predicted deltas.
      target: float ``[..., 4]`` target deltas.
      weights_mask: ``[...]`` bool or float weight of each box (1 for boxes that count).
      normaliser: scalar divisor, e.g. the number of sampled anchors; 0 gives a 0 loss.
      beta: smooth L1 transition point.

    Returns:
      float32 scalar.
    """
    per_box = tf.reduce_sum(smooth_l1(pred, target, beta), axis=-1)
    weights = tf.cast(weights_mask, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_box * weights), tf.cast(normaliser, tf.float32))


def rpn_box_loss(deltas, box_targets, labels, beta: float = 1.0 / 9.0) -> tf.Tensor:
    """RPN box regression: sum over positive anchors divided by the number of sampled anchors.

    ``beta = 1 / 9`` is the reference Faster R-CNN's ``sigma = 3`` for the RPN.

    Args:
      deltas: float ``[B, N, 4]`` predicted deltas.
      box_targets: float ``[B, N, 4]`` from ``rpn_targets``.
      labels: int ``[B, N]`` from ``rpn_targets``.
      beta: smooth L1 transition point.

    Returns:
      float32 scalar, 0 when no anchor is sampled.
    """
    labels = tf.convert_to_tensor(labels)
    return box_loss(deltas, box_targets, labels == 1, _count(labels >= 0), beta)


def box_head_loss(deltas, box_targets, classes, beta: float = 1.0) -> tf.Tensor:
    """Box-head regression on the foreground RoIs, with the deltas of their gt class only.

    Class-specific regression without a background slot, as in Detectron2: ``deltas`` is
    ``[B, S, K, 4]`` and class ``c`` in ``1..K`` uses channel ``c - 1`` (the same channel
    convention as :func:`mask_loss`). The sum over foreground RoIs is divided by the
    number of valid (non-padding) sampled RoIs, foreground and background, as Detectron2
    does, so that each foreground RoI weighs the same whatever the foreground fraction.

    Args:
      deltas: float ``[B, S, K, 4]`` predicted deltas.
      box_targets: float ``[B, S, 4]`` from ``roi_targets``.
      classes: int ``[B, S]`` from ``roi_targets``: ``1..K`` foreground, 0 background,
        -1 padding.
      beta: smooth L1 transition point.

    Returns:
      float32 scalar, 0 when there is no valid RoI.
    """
    classes = tf.cast(classes, tf.int32)
    chosen = tf.gather(deltas, tf.maximum(classes - 1, 0), batch_dims=2)
    return box_loss(chosen, box_targets, classes > 0, _count(classes >= 0), beta)


def classification_loss(logits, classes) -> tf.Tensor:
    """Softmax cross-entropy of the box head, mean over valid RoIs.

    Args:
      logits: float ``[B, S, K + 1]``; index 0 is background.
      classes: int ``[B, S]``: ``0..K``, -1 for padding (ignored).

    Returns:
      float32 scalar, 0 when there is no valid RoI.
    """
    classes = tf.cast(classes, tf.int32)
    valid = classes >= 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(classes, 0), logits=tf.cast(logits, tf.float32)
    )
    return tf.math.divide_no_nan(tf.reduce_sum(tf.where(valid, ce, 0.0)), _count(valid))


def mask_loss(mask_logits, mask_targets, classes) -> tf.Tensor:
    """Mask R-CNN's L_mask: per-pixel sigmoid BCE on the gt class's mask channel only.

    Averaged over the pixels of the foreground RoIs; background and padding RoIs add
    nothing, and the loss is 0 when there is no foreground RoI.

    Args:
      mask_logits: float ``[B, S, Hm, Wm, K]`` (``28 x 28`` in the paper); class ``c`` in
        ``1..K`` uses channel ``c - 1``.
      mask_targets: float ``[B, S, Hm, Wm]`` in ``[0, 1]``.
      classes: int ``[B, S]``: ``1..K`` foreground, 0 background, -1 padding.

    Returns:
      float32 scalar.
    """
    classes = tf.cast(classes, tf.int32)
    logits = tf.transpose(tf.cast(mask_logits, tf.float32), (0, 1, 4, 2, 3))
    logits = tf.gather(logits, tf.maximum(classes - 1, 0), batch_dims=2)  # [B, S, Hm, Wm]
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(mask_targets, tf.float32), logits=logits)
    foreground = tf.cast(classes > 0, tf.float32)
    per_roi = tf.reduce_mean(bce, axis=(2, 3))
    return tf.math.divide_no_nan(tf.reduce_sum(per_roi * foreground), tf.reduce_sum(foreground))
