"""Box geometry for Mask R-CNN: IoU, the Faster R-CNN box coder, clipping and FPN anchors.

Boxes are float32 ``[y1, x1, y2, x2]`` in absolute, continuous pixel coordinates (pixel ``i``
spans ``[i, i + 1)``, so a box's height is ``y2 - y1`` with no ``+ 1``), the convention of
``tf.image.non_max_suppression`` and Detectron2.

* Faster R-CNN (Ren et al., 2015): https://arxiv.org/abs/1506.01497
* Feature Pyramid Networks (Lin et al., 2017): https://arxiv.org/abs/1612.03144
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import tensorflow as tf

__all__ = [
    "BOX_HEAD_WEIGHTS",
    "RPN_WEIGHTS",
    "clip_boxes",
    "concat_anchors",
    "decode_boxes",
    "encode_boxes",
    "feature_size",
    "fpn_anchors",
    "iou",
]

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Detectron's clamp on dh, dw before exp(): boxes at most 1000/16 times the anchor's side.
_SCALE_CLAMP = math.log(1000.0 / 16)
# Smallest side used by encode_boxes, so degenerate (for example padding) boxes stay finite.
_MIN_SIDE = 1e-6


def _areas(boxes: tf.Tensor) -> tf.Tensor:
    """Area of each ``[..., 4]`` box, 0 for inverted or empty boxes."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def iou(boxes_a, boxes_b) -> tf.Tensor:
    """Pairwise intersection over union.

    Args:
      boxes_a: float ``[..., N, 4]`` boxes ``[y1, x1, y2, x2]``.
      boxes_b: float ``[..., M, 4]`` boxes; leading dimensions broadcast with ``boxes_a``'s.

    Returns:
      float32 ``[..., N, M]``. Pairs whose union is empty (both boxes of zero area) give 0,
      never NaN.
    """
    a = tf.convert_to_tensor(boxes_a, tf.float32)
    b = tf.convert_to_tensor(boxes_b, tf.float32)
    ay1, ax1, ay2, ax2 = tf.unstack(a[..., :, None, :], axis=-1)
    by1, bx1, by2, bx2 = tf.unstack(b[..., None, :, :], axis=-1)
    inter_h = tf.maximum(tf.minimum(ay2, by2) - tf.maximum(ay1, by1), 0.0)
    inter_w = tf.maximum(tf.minimum(ax2, bx2) - tf.maximum(ax1, bx1), 0.0)
    inter = inter_h * inter_w
    union = _areas(a)[..., :, None] + _areas(b)[..., None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def _check_weights(weights: Sequence[float]) -> Tuple[float, ...]:
    """Validates the four positive coder weights."""
    weights = tuple(float(w) for w in weights)
    if len(weights) != 4 or min(weights) <= 0:
        raise ValueError(f"weights must be 4 positive numbers (wy, wx, wh, ww). Received: weights={weights}")
    return weights


def _centre_size(boxes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(cy, cx, h, w)`` of ``[..., 4]`` boxes."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    h, w = y2 - y1, x2 - x1
    return y1 + 0.5 * h, x1 + 0.5 * w, h, w


def encode_boxes(boxes, anchors, weights: Sequence[float] = RPN_WEIGHTS) -> tf.Tensor:
    """Encodes boxes as Faster R-CNN deltas relative to anchors (or proposals).

    ``(dy, dx, dh, dw) = (wy*(cy-cya)/ha, wx*(cx-cxa)/wa, wh*log(h/ha), ww*log(w/wa))``,
    eq. (2) of https://arxiv.org/abs/1506.01497. The RPN uses weights ``(1, 1, 1, 1)``
    (``RPN_WEIGHTS``), the box head ``(10, 10, 5, 5)`` (``BOX_HEAD_WEIGHTS``).

    Args:
      boxes: float ``[..., 4]`` target boxes.
      anchors: float ``[..., 4]`` reference boxes, broadcastable with ``boxes``.
      weights: ``(wy, wx, wh, ww)``, positive.

    Returns:
      float32 ``[..., 4]`` deltas ``(dy, dx, dh, dw)``. Sides are floored at 1e-6 so that
      degenerate boxes (such as padding) give large but finite deltas; mask them out.

    Raises:
      ValueError: if ``weights`` is not 4 positive numbers.
    """
    wy, wx, wh, ww = _check_weights(weights)
    cy, cx, h, w = _centre_size(tf.convert_to_tensor(boxes, tf.float32))
    acy, acx, ah, aw = _centre_size(tf.convert_to_tensor(anchors, tf.float32))
    h, w = tf.maximum(h, _MIN_SIDE), tf.maximum(w, _MIN_SIDE)
    ah, aw = tf.maximum(ah, _MIN_SIDE), tf.maximum(aw, _MIN_SIDE)
    dy = wy * (cy - acy) / ah
    dx = wx * (cx - acx) / aw
    dh = wh * tf.math.log(h / ah)
    dw = ww * tf.math.log(w / aw)
    return tf.stack([dy, dx, dh, dw], axis=-1)


def decode_boxes(deltas, anchors, weights: Sequence[float] = RPN_WEIGHTS) -> tf.Tensor:
    """Applies Faster R-CNN deltas to anchors: the inverse of :func:`encode_boxes`.

    ``dh`` and ``dw`` (after dividing by their weights) are clamped at ``log(1000 / 16)``
    before ``exp``, as Detectron does, so no box grows past 62.5 times its anchor.

    Args:
      deltas: float ``[..., 4]`` deltas ``(dy, dx, dh, dw)``.
      anchors: float ``[..., 4]`` boxes, broadcastable with ``deltas``.
      weights: ``(wy, wx, wh, ww)`` used when encoding.

    Returns:
      float32 ``[..., 4]`` boxes ``[y1, x1, y2, x2]``; not clipped to the image.

    Raises:
      ValueError: if ``weights`` is not 4 positive numbers.
    """
    wy, wx, wh, ww = _check_weights(weights)
    dy, dx, dh, dw = tf.unstack(tf.convert_to_tensor(deltas, tf.float32), axis=-1)
    acy, acx, ah, aw = _centre_size(tf.convert_to_tensor(anchors, tf.float32))
    cy = dy / wy * ah + acy
    cx = dx / wx * aw + acx
    h = tf.exp(tf.minimum(dh / wh, _SCALE_CLAMP)) * ah
    w = tf.exp(tf.minimum(dw / ww, _SCALE_CLAMP)) * aw
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes, height, width) -> tf.Tensor:
    """Clips ``[..., 4]`` boxes to the image ``[0, height] x [0, width]``.

    Args:
      boxes: float ``[..., 4]`` boxes.
      height: image height in pixels (Python number or scalar tensor).
      width: image width in pixels (Python number or scalar tensor).

    Returns:
      float32 ``[..., 4]`` boxes with ``y`` in ``[0, height]`` and ``x`` in ``[0, width]``.
    """
    y1, x1, y2, x2 = tf.unstack(tf.convert_to_tensor(boxes, tf.float32), axis=-1)
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    y1, y2 = tf.clip_by_value(y1, 0.0, height), tf.clip_by_value(y2, 0.0, height)
    x1, x2 = tf.clip_by_value(x1, 0.0, width), tf.clip_by_value(x2, 0.0, width)
    return tf.stack([y1, x1, y2, x2], axis=-1)


def feature_size(size: int, level: int) -> int:
    """Side of pyramid level ``level`` for an input side ``size``: ``ceil(size / 2**level)``.

    This is what ``level`` stride-2 ``padding="same"`` convolutions or poolings give, since
    ``ceil(ceil(n / 2) / 2) == ceil(n / 4)``.
    """
    return -(-int(size) // 2**int(level))


def _check_anchor_args(image_size, levels, sizes, aspect_ratios) -> None:
    """Raises ValueError on bad :func:`fpn_anchors` arguments."""
    if len(image_size) != 2 or any(int(s) != s or s < 1 for s in image_size):
        raise ValueError(f"image_size must be 2 positive ints (H, W). Received: image_size={image_size}")
    if not levels or any(int(v) != v or v < 0 for v in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"levels must be distinct non-negative ints. Received: levels={levels}")
    if len(sizes) != len(levels) or any(s <= 0 for s in sizes):
        raise ValueError(
            f"sizes must be {len(levels)} positive numbers, one per level. Received: sizes={sizes}"
        )
    if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
        raise ValueError(f"aspect_ratios must be positive numbers. Received: aspect_ratios={aspect_ratios}")


def _level_anchors(image_size, level: int, size: float, aspect_ratios) -> tf.Tensor:
    """Anchors of one level, ``[Hl * Wl * A, 4]`` in (row, col, ratio) order."""
    stride = float(2**level)
    rows, cols = feature_size(image_size[0], level), feature_size(image_size[1], level)
    ratios = tf.constant(aspect_ratios, tf.float32)
    half_h = 0.5 * size * tf.sqrt(ratios)  # ratio = h / w and h * w = size**2
    half_w = 0.5 * size / tf.sqrt(ratios)
    cy = (tf.range(rows, dtype=tf.float32) + 0.5) * stride
    cx = (tf.range(cols, dtype=tf.float32) + 0.5) * stride
    cy = tf.broadcast_to(cy[:, None, None], (rows, cols, len(aspect_ratios)))
    cx = tf.broadcast_to(cx[None, :, None], (rows, cols, len(aspect_ratios)))
    anchors = tf.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)
    return tf.reshape(anchors, (-1, 4))


def fpn_anchors(
    image_size: Sequence[int],
    levels: Sequence[int] = (2, 3, 4, 5, 6),
    sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> Dict[int, tf.Tensor]:
    """FPN anchors: one size per pyramid level, several aspect ratios per location.

    Section 4.1 of https://arxiv.org/abs/1612.03144. Level ``l`` has stride ``2**l`` and
    ``ceil(H / 2**l) x ceil(W / 2**l)`` locations (see :func:`feature_size`: what a pyramid
    of stride-2 ``"same"`` convolutions gives for any image size, so ``H`` and ``W`` need not
    be divisible by ``2**max(levels)``). Location ``(i, j)`` is centred at
    ``((i + 0.5) * stride, (j + 0.5) * stride)``. An anchor of size ``s`` and aspect ratio
    ``r = h / w`` has area ``s**2``: ``h = s * sqrt(r)``, ``w = s / sqrt(r)``. Anchors are not
    clipped to the image.

    Args:
      image_size: static ``(H, W)`` of the network input.
      levels: pyramid levels, e.g. ``(2, 3, 4, 5, 6)`` for P2..P6.
      sizes: anchor size (square root of the area) for each level.
      aspect_ratios: ratios ``h / w`` at every location; ``A = len(aspect_ratios)``.

    Returns:
      ``{level: float32 [Hl * Wl * A, 4]}``, rows ordered (row, col, ratio) to match a head
      output ``[B, Hl, Wl, A * C]`` reshaped to ``[B, Hl * Wl * A, C]``.

    Raises:
      ValueError: on a bad image size, levels, sizes or aspect ratios.
    """
    _check_anchor_args(image_size, levels, sizes, aspect_ratios)
    return {
        int(level): _level_anchors(image_size, int(level), float(size), tuple(aspect_ratios))
        for level, size in zip(levels, sizes)
    }


def concat_anchors(anchors_by_level: Dict[int, tf.Tensor]) -> tf.Tensor:
    """Concatenates :func:`fpn_anchors`' output in increasing level order: ``[N, 4]``.

    Args:
      anchors_by_level: ``{level: [N_l, 4]}``.

    Returns:
      float32 ``[sum_l N_l, 4]``, the order in which per-level head outputs must be
      concatenated.

    Raises:
      ValueError: if ``anchors_by_level`` is empty.
    """
    if not anchors_by_level:
        raise ValueError(f"anchors_by_level must not be empty. Received: anchors_by_level={anchors_by_level}")
    return tf.concat([anchors_by_level[level] for level in sorted(anchors_by_level)], axis=0)
