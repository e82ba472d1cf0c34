"""Training targets for the RPN and the box/mask heads of Mask R-CNN.

Both functions are batched, use static shapes only, and sample with
``tf.random.stateless_uniform`` so that a given ``seed`` tensor always gives the same
labels. Ground truth is padded per image: ``gt_boxes [B, M, 4]`` and ``gt_classes [B, M]``
with object classes ``1..K`` and ``-1`` for padding (any class ``<= 0`` never matches).

* Faster R-CNN (Ren et al., 2015), section 3.1.2: https://arxiv.org/abs/1506.01497
* Fast R-CNN (Girshick, 2015), section 2.3: https://arxiv.org/abs/1504.08083
* Mask R-CNN (He et al., 2017): https://arxiv.org/abs/1703.06870
"""

from __future__ import annotations

from typing import Tuple

import tensorflow as tf

from keras_seg.detection.boxes import BOX_HEAD_WEIGHTS, RPN_WEIGHTS, encode_boxes, iou

__all__ = ["roi_targets", "rpn_targets"]


def _check_fraction(name: str, value: float, low: float = 0.0, high: float = 1.0) -> None:
    """Raises ValueError unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]. Received: {name}={value}")


def _check_batch(batch_per_image: int) -> None:
    """Raises ValueError unless ``batch_per_image`` is a positive int."""
    if int(batch_per_image) != batch_per_image or batch_per_image < 1:
        raise ValueError(f"batch_per_image must be a positive int. Received: batch_per_image={batch_per_image}")


def _match(boxes: tf.Tensor, gt_boxes: tf.Tensor, gt_valid: tf.Tensor):
    """Matches ``[B, N, 4]`` boxes to ``[B, M, 4]`` gts.

    Returns ``(iou [B, N, M] with -1 for invalid gts, max IoU [B, N] >= 0, argmax [B, N])``.
    """
    overlaps = tf.where(gt_valid[:, None, :], iou(boxes, gt_boxes), -1.0)
    max_iou = tf.maximum(tf.reduce_max(overlaps, axis=-1), 0.0)
    return overlaps, max_iou, tf.argmax(overlaps, axis=-1, output_type=tf.int32)


def _sample(candidates: tf.Tensor, max_count: tf.Tensor, uniform: tf.Tensor) -> tf.Tensor:
    """Keeps a random ``min(count, max_count)`` of the ``[B, N]`` boolean candidates per row.

    ``max_count`` is a scalar or ``[B]``; ``uniform`` is ``[B, N]`` in ``[0, 1)``.
    """
    key = tf.where(candidates, uniform, 2.0)
    rank = tf.argsort(tf.argsort(key, axis=-1, stable=True), axis=-1, stable=True)
    max_count = tf.cast(max_count, tf.int32)
    if max_count.shape.rank == 1:
        max_count = max_count[:, None]
    return candidates & (rank < max_count)


def _gather_gt(gt_values: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Per-image gather of ``[B, M, ...]`` values at ``[B, N]`` indices."""
    return tf.gather(gt_values, index, batch_dims=1)


def _sample_anchor_labels(labels, batch_per_image, positive_fraction, seed) -> tf.Tensor:
    """Subsamples 1/0 anchor labels to the RPN minibatch; unsampled anchors become -1."""
    uniform = tf.random.stateless_uniform(tf.concat([[2], tf.shape(labels)], 0), seed=seed)
    positive = _sample(labels == 1, int(batch_per_image * positive_fraction), uniform[0])
    budget = batch_per_image - tf.reduce_sum(tf.cast(positive, tf.int32), axis=-1)
    negative = _sample(labels == 0, budget, uniform[1])
    return tf.where(positive, 1, tf.where(negative, 0, -1))


def rpn_targets(
    anchors,
    gt_boxes,
    gt_classes,
    *,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    batch_per_image: int = 256,
    positive_fraction: float = 0.5,
    seed,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Labels and box-regression targets of the RPN anchors (Faster R-CNN, section 3.1.2).

    An anchor is positive when its IoU with some valid gt is ``>= positive_iou``, or when it
    is (one of) the highest-IoU anchor(s) of a valid gt whose best IoU is above 0; negative
    when its IoU with every valid gt is ``< negative_iou``; ignored otherwise. Images with no
    valid gt have only negatives. Then at most ``int(batch_per_image * positive_fraction)``
    positives are sampled at random, negatives fill the rest of ``batch_per_image``, and
    every anchor not sampled is labelled -1. Anchors crossing the image border are kept
    (as Detectron2 does).

    Args:
      anchors: float ``[N, 4]`` anchors, e.g. ``concat_anchors(fpn_anchors(...))``.
      gt_boxes: float ``[B, M, 4]`` padded ground-truth boxes.
      gt_classes: int ``[B, M]`` classes ``1..K``; ``-1`` (any value ``<= 0``) is padding.
      positive_iou: IoU at or above which an anchor is positive.
      negative_iou: IoU below which an anchor is negative.
      batch_per_image: anchors sampled per image.
      positive_fraction: largest fraction of positives in the sample.
      seed: int ``[2]`` seed for ``tf.random.stateless_uniform``.

    Returns:
      ``(labels, box_targets)``: int32 ``[B, N]`` in ``{1, 0, -1}`` and float32
      ``[B, N, 4]`` deltas of each positive anchor's highest-IoU gt encoded with weights
      ``(1, 1, 1, 1)``, zero for the other anchors.

    Raises:
      ValueError: on thresholds outside ``0 <= negative_iou <= positive_iou <= 1``, a
        non-positive ``batch_per_image`` or a fraction outside ``[0, 1]``.
    """
    _check_fraction("positive_iou", positive_iou)
    _check_fraction("negative_iou", negative_iou, high=positive_iou)
    _check_batch(batch_per_image)
    _check_fraction("positive_fraction", positive_fraction)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_valid = tf.convert_to_tensor(gt_classes) > 0
    batched_anchors = tf.broadcast_to(anchors[None], (tf.shape(gt_boxes)[0], tf.shape(anchors)[0], 4))
    overlaps, max_iou, matched = _match(batched_anchors, gt_boxes, gt_valid)
    labels = tf.where(max_iou >= positive_iou, 1, tf.where(max_iou < negative_iou, 0, -1))
    best_per_gt = tf.reduce_max(overlaps, axis=1, keepdims=True)  # [B, 1, M]
    is_best = (overlaps == best_per_gt) & (best_per_gt > 0.0)
    labels = tf.where(tf.reduce_any(is_best, axis=-1), 1, labels)
    labels = _sample_anchor_labels(labels, batch_per_image, positive_fraction, seed)
    deltas = encode_boxes(_gather_gt(gt_boxes, matched), anchors[None], RPN_WEIGHTS)
    box_targets = tf.where((labels == 1)[..., None], deltas, 0.0)
    return tf.stop_gradient(labels), tf.stop_gradient(box_targets)


def _candidates(proposals, gt_boxes, gt_valid, append_gt: bool, min_count: int):
    """Proposals (plus valid gts), padded to ``min_count``: ``(boxes [B, C, 4], valid [B, C])``."""
    boxes = tf.convert_to_tensor(proposals, tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    valid = (y2 > y1) & (x2 > x1)
    if append_gt:
        boxes = tf.concat([boxes, gt_boxes], axis=1)
        valid = tf.concat([valid, gt_valid], axis=1)
    missing = tf.maximum(min_count - tf.shape(boxes)[1], 0)
    boxes = tf.pad(boxes, [[0, 0], [0, missing], [0, 0]])
    return boxes, tf.pad(valid, [[0, 0], [0, missing]])


def _first_sampled(order_key: tf.Tensor, count: int) -> tf.Tensor:
    """Indices ``[B, count]`` of the smallest keys per row (stable)."""
    return tf.argsort(order_key, axis=-1, stable=True)[:, :count]


def roi_targets(
    proposals,
    gt_boxes,
    gt_classes,
    *,
    fg_iou: float = 0.5,
    bg_iou_high: float = 0.5,
    bg_iou_low: float = 0.0,
    batch_per_image: int = 512,
    fg_fraction: float = 0.25,
    append_gt: bool = True,
    seed,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Samples the RoIs of the box and mask heads and their targets (Fast R-CNN, section 2.3).

    Candidates are the proposals plus, with ``append_gt``, the valid gt boxes. Proposals of
    zero area (for example padding from ``non_max_suppression_padded``) and padded gts are
    never sampled. A candidate is foreground when its highest IoU with a valid gt is
    ``>= fg_iou`` and background when it lies in ``[bg_iou_low, bg_iou_high)``; with no valid
    gt every candidate has IoU 0. At most ``int(batch_per_image * fg_fraction)`` foreground
    RoIs are drawn at random, background fills the rest, and slots left over are padding.
    Each row holds the sampled foreground first, then background, then padding.

    Args:
      proposals: float ``[B, P, 4]`` proposals (gradients are stopped).
      gt_boxes: float ``[B, M, 4]`` padded ground-truth boxes.
      gt_classes: int ``[B, M]`` classes ``1..K``; ``-1`` (any value ``<= 0``) is padding.
      fg_iou: IoU at or above which a RoI is foreground.
      bg_iou_high: IoU below which a RoI may be background.
      bg_iou_low: lowest IoU of a background RoI.
      batch_per_image: ``S``, RoIs returned per image.
      fg_fraction: largest fraction of foreground RoIs.
      append_gt: add the gt boxes to the candidates, as Detectron does.
      seed: int ``[2]`` seed for ``tf.random.stateless_uniform``.

    Returns:
      ``(rois, classes, box_targets, matched_gt)``: float32 ``[B, S, 4]`` sampled boxes
      (zeros for padding slots); int32 ``[B, S]`` classes, the matched gt's class for
      foreground, 0 for background and -1 for padding; float32 ``[B, S, 4]`` deltas to the
      matched gt with weights ``(10, 10, 5, 5)``, zero except for foreground; int32 ``[B, S]``
      index into the ``M`` gts of the highest-IoU gt, always in ``[0, M)`` so it is safe to
      gather with, meaningful only where ``classes > 0``.

    Raises:
      ValueError: on thresholds outside ``0 <= bg_iou_low <= bg_iou_high <= 1``, ``fg_iou``
        outside ``[0, 1]``, a non-positive ``batch_per_image`` or a fraction outside
        ``[0, 1]``.
    """
    _check_fraction("fg_iou", fg_iou)
    _check_fraction("bg_iou_high", bg_iou_high)
    _check_fraction("bg_iou_low", bg_iou_low, high=bg_iou_high)
    _check_batch(batch_per_image)
    _check_fraction("fg_fraction", fg_fraction)
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_classes = tf.cast(gt_classes, tf.int32)
    gt_valid = gt_classes > 0
    boxes, valid = _candidates(proposals, gt_boxes, gt_valid, append_gt, batch_per_image)
    _, max_iou, matched = _match(boxes, gt_boxes, gt_valid)
    fg = valid & (max_iou >= fg_iou)
    bg = valid & (max_iou >= bg_iou_low) & (max_iou < bg_iou_high) & ~fg
    uniform = tf.random.stateless_uniform(tf.concat([[2], tf.shape(max_iou)], 0), seed=seed)
    fg = _sample(fg, int(batch_per_image * fg_fraction), uniform[0])
    bg = _sample(bg, batch_per_image - tf.reduce_sum(tf.cast(fg, tf.int32), axis=-1), uniform[1])
    index = _first_sampled(tf.where(fg, 0, tf.where(bg, 1, 2)), batch_per_image)
    fg, bg = tf.gather(fg, index, batch_dims=1), tf.gather(bg, index, batch_dims=1)
    rois = tf.where((fg | bg)[..., None], tf.gather(boxes, index, batch_dims=1), 0.0)
    matched = tf.gather(matched, index, batch_dims=1)
    classes = tf.where(fg, _gather_gt(gt_classes, matched), tf.where(bg, 0, -1))
    deltas = encode_boxes(_gather_gt(gt_boxes, matched), rois, BOX_HEAD_WEIGHTS)
    box_targets = tf.where(fg[..., None], deltas, 0.0)
    outputs = (rois, classes, box_targets, matched)
    return tuple(tf.stop_gradient(t) for t in outputs)
