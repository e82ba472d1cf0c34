"""Mask R-CNN post-processing: RPN proposals, final detections and full-image masks.

Every output has a static size, padded per image: boxes with zeros, scores with 0 and
classes with -1. Non-maximum suppression is TensorFlow's ``NonMaxSuppressionV5`` with
``pad_to_max_output_size`` (TFLite builtin ``NON_MAX_SUPPRESSION_V5``) applied per image
with ``tf.map_fn``; boxes of different groups (pyramid levels for proposals, classes for
detections) are kept apart by shifting each group by its own offset, Detectron2's
``batched_nms`` trick, so one single-class NMS serves all groups.
(``tf.image.non_max_suppression_padded`` is a tiled ``while_loop`` reimplementation in TF 2.21,
not the builtin kernel.)

* Faster R-CNN (Ren et al., 2015): https://arxiv.org/abs/1506.01497
* FPN (Lin et al., 2017), section 4.1: https://arxiv.org/abs/1612.03144
* Mask R-CNN (He et al., 2017): https://arxiv.org/abs/1703.06870
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from keras_seg.detection.boxes import BOX_HEAD_WEIGHTS, RPN_WEIGHTS, clip_boxes, decode_boxes

__all__ = ["detect", "generate_proposals", "paste_masks"]

# Lowest finite float32: NMS keeps scores strictly above it, so -inf scores are dropped.
_NO_THRESHOLD = float(np.finfo(np.float32).min)


def _check_image_size(image_size) -> Tuple[int, int]:
    """Static ``(H, W)`` as ints; ValueError otherwise."""
    if len(image_size) != 2 or any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1
                                   for s in image_size):
        raise ValueError(f"image_size must be 2 positive ints (H, W). Received: image_size={image_size}")
    return int(image_size[0]), int(image_size[1])


def _check_positive(**values) -> None:
    """Raises ``ValueError("x must be an int >= 1. Received: x=...")`` for the first bad value."""
    for arg, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1. Received: {arg}={value!r}")


def _check_iou(name: str, value: float) -> None:
    """Raises ValueError unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value}")


def _nms_padded(boxes, scores, max_output: int, iou_threshold: float, score_threshold: float):
    """Per-image greedy NMS: ``(indices [B, max_output], valid [B, max_output])``.

    Indices are in descending score order; slots past the kept count are 0 and invalid.
    """

    def one_image(args):
        image_boxes, image_scores = args
        index, _, count = tf.raw_ops.NonMaxSuppressionV5(
            boxes=image_boxes, scores=image_scores, max_output_size=max_output, iou_threshold=iou_threshold,
            score_threshold=score_threshold, soft_nms_sigma=0.0, pad_to_max_output_size=True)
        return tf.ensure_shape(index, [max_output]), count

    index, count = tf.map_fn(
        one_image, (boxes, scores),
        fn_output_signature=(tf.TensorSpec([max_output], tf.int32), tf.TensorSpec([], tf.int32)))
    return index, tf.range(max_output)[None, :] < count[:, None]


def _group_offsets(groups: tf.Tensor, image_size: Tuple[int, int]) -> tf.Tensor:
    """``[..., 4]`` shifts that move each group's clipped boxes into a disjoint square."""
    shift = tf.cast(groups, tf.float32) * float(max(image_size) + 1)
    return tf.stack([shift] * 4, axis=-1)


def _split_levels(n: int, level_counts: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """Checked per-level anchor counts (one level of ``n`` anchors by default)."""
    if n is None:
        raise ValueError("anchors must have a static count [N, 4]. Received: anchors.shape[0]=None")
    counts = (n,) if level_counts is None else tuple(int(c) for c in level_counts)
    if not counts or min(counts) < 1 or sum(counts) != n:
        raise ValueError(f"level_counts must be positive and sum to the {n} anchors. "
                         f"Received: level_counts={level_counts}")
    return counts


def _top_candidates(objectness, deltas, anchors, counts, pre_nms_topk):
    """Per level, the ``pre_nms_topk`` best anchors: ``(logits, deltas, anchors, level index)``."""
    logits, box_deltas, boxes, groups = [], [], [], []
    start = 0
    for group, count in enumerate(counts):
        k = min(pre_nms_topk, count)
        top, index = tf.math.top_k(objectness[:, start:start + count], k=k, sorted=False)
        logits.append(top)
        box_deltas.append(tf.gather(deltas[:, start:start + count], index, batch_dims=1))
        boxes.append(tf.gather(anchors[start:start + count], index))
        groups.append(tf.fill([k], group))
        start += count
    return (tf.concat(logits, 1), tf.concat(box_deltas, 1), tf.concat(boxes, 1), tf.concat(groups, 0))


def generate_proposals(
    objectness, deltas, anchors, image_size: Sequence[int], *, level_counts: Optional[Sequence[int]] = None,
    pre_nms_topk_per_level: int = 1000, post_nms_topk: int = 1000, nms_iou: float = 0.7, min_size: float = 0.0,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """RPN proposals: top-k per level, decode, clip, drop empty boxes, per-level NMS, top-k.

    Detectron2's ``find_top_rpn_proposals`` (and torchvision's ``RegionProposalNetwork``):
    the ``pre_nms_topk_per_level`` highest-objectness anchors of each level are decoded with
    weights ``(1, 1, 1, 1)`` and clipped to the image; boxes with a side ``<= min_size`` get a
    ``-inf`` score and are never kept; NMS runs on each level separately; the
    ``post_nms_topk`` best survivors over all levels are returned, best first. Inputs are
    treated as constants (no gradient). FPN section 4.1: https://arxiv.org/abs/1612.03144.
    Detectron2's defaults are 2000/1000 (train/test) before and 1000/1000 after NMS;
    torchvision's 2000/1000 and 2000/1000.

    Args:
      objectness: float ``[B, N]`` logits, levels concatenated in increasing order.
      deltas: float ``[B, N, 4]`` RPN deltas.
      anchors: float ``[N, 4]`` anchors, e.g. ``concat_anchors(fpn_anchors(...))``.
      image_size: static ``(H, W)`` used for clipping.
      level_counts: anchors per level, in concatenation order (sum ``N``); ``None`` is one level.
      pre_nms_topk_per_level: candidates kept per level before NMS.
      post_nms_topk: ``P``, proposals returned per image.
      nms_iou: IoU above which a lower-scoring box of the same level is suppressed.
      min_size: boxes whose height or width is not above this (pixels) are dropped.

    Returns:
      ``(proposals [B, P, 4], scores [B, P])``: float32 boxes ``[y1, x1, y2, x2]`` (zeros for
      padding) and objectness probabilities (0 for padding).

    Raises:
      ValueError: for a bad ``image_size``, counts, ``level_counts`` or ``nms_iou``.
    """
    height, width = _check_image_size(image_size)
    _check_positive(pre_nms_topk_per_level=pre_nms_topk_per_level, post_nms_topk=post_nms_topk)
    _check_iou("nms_iou", nms_iou)
    objectness = tf.stop_gradient(tf.cast(objectness, tf.float32))
    deltas = tf.stop_gradient(tf.cast(deltas, tf.float32))
    anchors = tf.cast(anchors, tf.float32)
    counts = _split_levels(anchors.shape[0], level_counts)
    logits, box_deltas, boxes, groups = _top_candidates(objectness, deltas, anchors, counts, pre_nms_topk_per_level)
    boxes = clip_boxes(decode_boxes(box_deltas, boxes, RPN_WEIGHTS), height, width)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    logits = tf.where((y2 - y1 > min_size) & (x2 - x1 > min_size), logits, float("-inf"))
    index, valid = _nms_padded(boxes + _group_offsets(groups, (height, width)), logits, post_nms_topk,
                               nms_iou, _NO_THRESHOLD)
    proposals = tf.where(valid[..., None], tf.gather(boxes, index, batch_dims=1), 0.0)
    scores = tf.where(valid, tf.sigmoid(tf.gather(logits, index, batch_dims=1)), 0.0)
    return proposals, scores


def detect(
    class_logits, deltas, rois, image_size: Sequence[int], *, score_threshold: float = 0.05, nms_iou: float = 0.5,
    max_detections: int = 100,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Final detections: softmax scores, class-specific boxes, per-class NMS, top detections.

    Detectron2's ``fast_rcnn_inference``: every (RoI, class) pair whose softmax score is
    above ``score_threshold`` is a candidate, with its class's deltas decoded on the RoI
    (weights ``(10, 10, 5, 5)``) and clipped; NMS at ``nms_iou`` runs per class; the
    ``max_detections`` best survivors are returned, best first. RoIs of zero area (proposal
    padding) never give a detection. https://arxiv.org/abs/1703.06870.

    Args:
      class_logits: float ``[B, S, K + 1]`` box-head logits, index 0 background.
      deltas: float ``[B, S, K, 4]`` class-specific deltas, class ``c`` at slot ``c - 1``.
      rois: float ``[B, S, 4]`` the boxes the head saw.
      image_size: static ``(H, W)`` used for clipping.
      score_threshold: smallest score (exclusive) of a detection.
      nms_iou: IoU above which a lower-scoring box of the same class is suppressed.
      max_detections: ``D``, detections returned per image.

    Returns:
      ``(boxes [B, D, 4], classes [B, D], scores [B, D])``: float32 boxes (zeros for padding),
      int32 classes ``1..K`` (-1 for padding) and float32 scores (0 for padding).

    Raises:
      ValueError: for a bad ``image_size``, ``max_detections`` or ``nms_iou``.
    """
    height, width = _check_image_size(image_size)
    _check_positive(max_detections=max_detections)
    _check_iou("nms_iou", nms_iou)
    rois = tf.cast(rois, tf.float32)
    y1, x1, y2, x2 = tf.unstack(rois, axis=-1)
    real = tf.cast((y2 > y1) & (x2 > x1), tf.float32)[..., None]
    scores = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[..., 1:] * real  # [B, S, K]
    boxes = decode_boxes(tf.cast(deltas, tf.float32), rois[:, :, None, :], BOX_HEAD_WEIGHTS)
    boxes = clip_boxes(boxes, height, width)  # [B, S, K, 4]
    num_classes = scores.shape[-1]
    classes = tf.zeros_like(scores, tf.int32) + tf.range(num_classes, dtype=tf.int32)
    flat = lambda t, *tail: tf.reshape(t, tf.concat([tf.shape(t)[:1], [-1], tail], 0))  # noqa: E731
    boxes, scores, classes = flat(boxes, 4), flat(scores), flat(classes)
    index, valid = _nms_padded(boxes + _group_offsets(classes, (height, width)), scores, max_detections,
                               nms_iou, float(score_threshold))
    take = lambda t: tf.gather(t, index, batch_dims=1)  # noqa: E731
    return (tf.where(valid[..., None], take(boxes), 0.0), tf.where(valid, take(classes) + 1, -1),
            tf.where(valid, take(scores), 0.0))


def _tent_weights(start, end, size: int, mask_size: int) -> tf.Tensor:
    """``[B, D, size, mask_size]`` bilinear weights of mask cells for each image row (or column).

    Image pixel ``i`` (centre ``i + 0.5``) reads the mask at ``u = (i + 0.5 - start) /
    (end - start) * mask_size - 0.5`` (``grid_sample(align_corners=False)``); mask cell ``j``
    weighs ``max(0, 1 - |u - j|)``, which is bilinear interpolation with zero padding.
    """
    centres = tf.range(size, dtype=tf.float32) + 0.5
    extent = tf.maximum(end - start, 1e-6)[..., None]
    u = (centres - start[..., None]) / extent * mask_size - 0.5
    return tf.maximum(0.0, 1.0 - tf.abs(u[..., None] - tf.range(mask_size, dtype=tf.float32)))


def paste_masks(mask_probs, boxes, image_size: Sequence[int], threshold: Optional[float] = None) -> tf.Tensor:
    """Pastes each ``Hm x Wm`` mask into its box on a full-size canvas.

    Detectron2's ``paste_masks_in_image`` (``_do_paste_mask``): image pixel centres inside a
    box sample its mask bilinearly, the mask's outer edge lying on the box's edge, with zeros
    outside the mask; pixels outside the box get 0. Bilinear sampling on a grid is separable,
    so this is two batched matrix products with per-box interpolation matrices
    (``BATCH_MATMUL`` in TFLite; no gathers, no ``grid_sample``).
    https://arxiv.org/abs/1703.06870.

    Args:
      mask_probs: float ``[B, D, Hm, Wm]`` mask probabilities (28x28 in Mask R-CNN).
      boxes: float ``[B, D, 4]`` boxes ``[y1, x1, y2, x2]`` in image pixels.
      image_size: static ``(H, W)`` of the canvas.
      threshold: if set, return ``probability >= threshold`` as float32 0/1 (Detectron2 uses
        0.5); if ``None``, return the pasted probabilities.

    Returns:
      float32 ``[B, D, H, W]``.

    Raises:
      ValueError: for a bad ``image_size`` or masks that are not rank 4.
    """
    height, width = _check_image_size(image_size)
    masks = tf.cast(mask_probs, tf.float32)
    if masks.shape.rank != 4:
        raise ValueError(f"mask_probs must be shaped [B, D, Hm, Wm]. Received: mask_probs.shape={masks.shape}")
    y1, x1, y2, x2 = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)
    rows = _tent_weights(y1, y2, height, masks.shape[2])  # [B, D, H, Hm]
    cols = _tent_weights(x1, x2, width, masks.shape[3])  # [B, D, W, Wm]
    pasted = tf.matmul(tf.matmul(rows, masks), cols, transpose_b=True)
    if threshold is None:
        return pasted
    return tf.cast(pasted >= threshold, tf.float32)
