"""RoIAlign over an FPN pyramid, and Mask R-CNN mask targets cropped with it.

RoIAlign (He et al., 2017, https://arxiv.org/abs/1703.06870) with Detectron2's
``aligned=True`` convention: a box ``[y1, x1, y2, x2]`` in image pixels is scaled by
``1 / stride`` and shifted by ``-0.5``, so that feature cell ``i`` has its centre at ``i``.
Each of the ``output_size x output_size`` bins averages ``sampling_ratio**2`` bilinear samples
at regularly spaced points, following Detectron2's ``roi_align_kernel.cpp``
(``bilinear_interpolate``): a sample with ``y < -1`` or ``y > H`` (or ``x`` likewise)
contributes 0 (but still counts in the average), otherwise its coordinates are clamped to
``[0, H - 1]`` before interpolation.

Boxes pick their pyramid level by size, eq. (1) of the FPN paper (Lin et al., 2017,
https://arxiv.org/abs/1612.03144): ``k = floor(k0 + log2(sqrt(h * w) / 224 + 1e-8))``.
As in TF Model Garden's ``multilevel_crop_and_resize``, all levels are flattened into one
tensor and every box gathers from it with its own level's offset, so one gather per bilinear
corner serves all levels. Only ops that TFLite has as builtins are used (``gather``,
``floor``, ``minimum``/``maximum``, ``log``, arithmetic, ``reshape``); there is no
``tf.image.crop_and_resize``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

__all__ = ["assign_levels", "crop_mask_targets", "roi_align", "roi_align_single"]


def _dims(x: tf.Tensor) -> List:
    """Static dimensions of ``x`` where known, dynamic scalars elsewhere."""
    static = x.shape.as_list()
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def _check_boxes(boxes: tf.Tensor) -> None:
    """Raises ValueError unless ``boxes`` is ``[B, N, 4]``."""
    if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"`boxes` must be shaped [B, N, 4]. Received: boxes.shape={boxes.shape}")


def _check_sizes(output_size: int, sampling_ratio: int) -> None:
    """Raises ValueError for a non-positive output size or sampling ratio."""
    if output_size < 1:
        raise ValueError(f"`output_size` must be >= 1. Received: output_size={output_size}")
    if sampling_ratio < 1:
        raise ValueError(
            f"`sampling_ratio` must be >= 1. Received: sampling_ratio={sampling_ratio}")


def assign_levels(boxes, *, canonical_size: float = 224.0, canonical_level: int = 4,
                  min_level: int = 2, max_level: int = 5) -> tf.Tensor:
    """FPN level of each box, eq. (1) of Lin et al., 2017 (https://arxiv.org/abs/1612.03144).

    ``k = floor(canonical_level + log2(sqrt(h * w) / canonical_size + 1e-8))``, clamped to
    ``[min_level, max_level]``; Detectron2's ``assign_boxes_to_levels``. Inverted boxes count
    as empty and go to ``min_level``.

    Args:
      boxes: float ``[..., 4]`` boxes ``[y1, x1, y2, x2]`` in image pixels.
      canonical_size: box side (pixels) that maps to ``canonical_level``.
      canonical_level: level of a ``canonical_size`` box.
      min_level: smallest level returned.
      max_level: largest level returned.

    Returns:
      int32 ``[...]`` levels.

    Raises:
      ValueError: if ``min_level > max_level``.
    """
    if min_level > max_level:
        raise ValueError(f"`min_level` must be <= `max_level`. Received: min_level={min_level}, "
                         f"max_level={max_level}")
    boxes = tf.cast(boxes, tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    size = tf.sqrt(tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0))
    log2 = tf.math.log(size / canonical_size + 1e-8) / tf.math.log(2.0)
    level = tf.floor(canonical_level + log2)
    level = tf.clip_by_value(level, float(min_level), float(max_level))
    return tf.cast(level, tf.int32)


def _sample_coords(start: tf.Tensor, length: tf.Tensor, num_points: int) -> tf.Tensor:
    """``[B, N, P]`` sample positions ``start + (p + 0.5) * length / P`` along one axis."""
    frac = (tf.range(num_points, dtype=tf.float32) + 0.5) / num_points
    return start[..., None] + frac * length[..., None]


def _axis_interp(coords: tf.Tensor, size: tf.Tensor):
    """Detectron2's per-axis bilinear rule: (low index, high index, low weight, high weight).

    ``coords`` is ``[B, N, P]`` and ``size`` (float, the feature side) is ``[B, N]``. The
    weights are zero for samples outside ``[-1, size]``.
    """
    size = size[..., None]
    valid = tf.cast(tf.logical_and(coords >= -1.0, coords <= size), tf.float32)
    clamped = tf.clip_by_value(coords, 0.0, size - 1.0)
    low = tf.floor(clamped)
    high = tf.minimum(low + 1.0, size - 1.0)
    frac = clamped - low
    return (tf.cast(low, tf.int32), tf.cast(high, tf.int32),
            (1.0 - frac) * valid, frac * valid)


def _roi_align_flat(flat: tf.Tensor, base: tf.Tensor, heights: tf.Tensor, widths: tf.Tensor,
                    feat_boxes: tf.Tensor, output_size: int, sampling_ratio: int) -> tf.Tensor:
    """RoIAlign core on a flattened feature tensor.

    Args:
      flat: ``[T, C]`` features of every image (and level) stacked row-major.
      base: int32 ``[B, N]`` row of ``flat`` holding each box's map's element ``(0, 0)``.
      heights: int32 ``[B, N]`` height of each box's map.
      widths: int32 ``[B, N]`` width of each box's map.
      feat_boxes: float32 ``[B, N, 4]`` boxes in the map's coordinates (cell centres at ints).
      output_size: bins per side.
      sampling_ratio: samples per bin per side.

    Returns:
      float32 ``[B, N, output_size, output_size, C]``.
    """
    points = output_size * sampling_ratio
    y1, x1, y2, x2 = tf.unstack(feat_boxes, axis=-1)
    ys = _sample_coords(y1, y2 - y1, points)
    xs = _sample_coords(x1, x2 - x1, points)
    y_lo, y_hi, wy_lo, wy_hi = _axis_interp(ys, tf.cast(heights, tf.float32))
    x_lo, x_hi, wx_lo, wx_hi = _axis_interp(xs, tf.cast(widths, tf.float32))
    base = base[..., None, None]
    w = widths[..., None, None]
    total = 0.0
    for y_idx, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for x_idx, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            index = base + y_idx[..., :, None] * w + x_idx[..., None, :]
            values = tf.cast(tf.gather(flat, index), tf.float32)  # [B, N, P, P, C]
            total += values * (wy[..., :, None] * wx[..., None, :])[..., None]
    b, n = _dims(feat_boxes)[:2]
    c = _dims(flat)[1]
    # The bin means in two low-rank steps (over the samples of a row, then of a column): the
    # same numbers as one mean over a rank-7 view, which LiteRT's XNNPACK delegate refuses.
    rows = tf.reduce_mean(tf.reshape(total, [-1, sampling_ratio, output_size, sampling_ratio * c]), axis=1)
    cells = tf.reduce_mean(tf.reshape(rows, [-1, sampling_ratio, c]), axis=1)
    return tf.reshape(cells, [b, n, output_size, output_size, c])


def _to_feature_coords(boxes: tf.Tensor, scale) -> tf.Tensor:
    """Scales image-pixel boxes by ``scale`` and shifts them by -0.5 (``aligned=True``)."""
    return tf.cast(boxes, tf.float32) * scale - 0.5


def roi_align_single(feature, boxes, *, output_size: int = 7, sampling_ratio: int = 2,
                     spatial_scale: float = 1.0) -> tf.Tensor:
    """RoIAlign of boxes on one feature map (He et al., 2017, https://arxiv.org/abs/1703.06870).

    Detectron2's ``ROIAlign(output_size, spatial_scale, sampling_ratio, aligned=True)`` with
    the boxes of image ``b`` read from ``feature[b]``.

    Args:
      feature: ``[B, H, W, C]`` feature map.
      boxes: float ``[B, N, 4]`` boxes ``[y1, x1, y2, x2]`` in image pixels.
      output_size: bins per side of the output.
      sampling_ratio: bilinear samples per bin per side (a fixed grid, not Detectron2's
        adaptive ``0``, so that shapes stay static).
      spatial_scale: feature cells per image pixel, ``1 / stride``.

    Returns:
      float32 ``[B, N, output_size, output_size, C]``.

    Raises:
      ValueError: for a feature that is not rank 4, boxes not ``[B, N, 4]`` or non-positive
        sizes.
    """
    feature = tf.convert_to_tensor(feature)
    boxes = tf.convert_to_tensor(boxes)
    if feature.shape.rank != 4:
        raise ValueError(
            f"`feature` must be shaped [B, H, W, C]. Received: feature.shape={feature.shape}")
    _check_boxes(boxes)
    _check_sizes(output_size, sampling_ratio)
    bsz, height, width, channels = _dims(feature)
    n = _dims(boxes)[1]
    flat = tf.reshape(feature, [-1, channels])
    base = tf.range(bsz, dtype=tf.int32)[:, None] * (height * width) + tf.zeros([1, n], tf.int32)
    heights = tf.fill(tf.shape(base), tf.cast(height, tf.int32))
    widths = tf.fill(tf.shape(base), tf.cast(width, tf.int32))
    feat_boxes = _to_feature_coords(boxes, spatial_scale)
    return _roi_align_flat(flat, base, heights, widths, feat_boxes, output_size, sampling_ratio)


def _flatten_levels(features: Dict[int, tf.Tensor], levels: Sequence[int]):
    """Stacks the levels into ``[B * T, C]`` plus per-level offsets, heights and widths."""
    flats, offsets, heights, widths = [], [], [], []
    offset = 0
    for level in levels:
        feature = tf.convert_to_tensor(features[level])
        bsz, height, width, channels = _dims(feature)
        flats.append(tf.reshape(feature, [bsz, -1, channels]))
        offsets.append(offset)
        heights.append(height)
        widths.append(width)
        offset = offset + height * width
    stacked = tf.concat(flats, axis=1)  # [B, T, C]
    flat = tf.reshape(stacked, [-1, _dims(stacked)[2]])
    as_vector = lambda xs: tf.cast(tf.stack(xs), tf.int32)  # noqa: E731
    return flat, offset, as_vector(offsets), as_vector(heights), as_vector(widths)


def _check_features(features, min_level: int, max_level: int) -> None:
    """Raises ValueError unless every level in range is a rank-4 map with equal channels."""
    missing = [k for k in range(min_level, max_level + 1) if k not in features]
    if missing:
        raise ValueError(f"`features` lacks levels {missing} of [{min_level}, {max_level}]. "
                         f"Received: features.keys()={sorted(features)}")
    channels = {k: tf.convert_to_tensor(features[k]).shape[-1]
                for k in range(min_level, max_level + 1)}
    ranks = {k: tf.convert_to_tensor(features[k]).shape.rank for k in channels}
    if any(r != 4 for r in ranks.values()) or len(set(channels.values())) != 1:
        raise ValueError("Every level of `features` must be [B, H, W, C] with the same C. "
                         f"Received: ranks={ranks}, channels={channels}")


def roi_align(features: Dict[int, tf.Tensor], boxes, *, output_size: int = 7,
              sampling_ratio: int = 2, canonical_size: float = 224.0, canonical_level: int = 4,
              min_level: int = 2, max_level: int = 5) -> tf.Tensor:
    """Multi-level RoIAlign over an FPN pyramid (He et al., 2017; Lin et al., 2017).

    Each box is assigned a level by :func:`assign_levels` and RoI-aligned on that level's map,
    whose stride is ``2**level`` (Detectron2's ``ROIPooler`` with ``ROIAlignV2``).
    See https://arxiv.org/abs/1703.06870 and https://arxiv.org/abs/1612.03144.

    Args:
      features: ``{level: [B, H_l, W_l, C]}`` holding every level in
        ``[min_level, max_level]``; level ``l`` has stride ``2**l``.
      boxes: float ``[B, N, 4]`` boxes ``[y1, x1, y2, x2]`` in image pixels.
      output_size: bins per side of the output.
      sampling_ratio: bilinear samples per bin per side.
      canonical_size: box side that maps to ``canonical_level``.
      canonical_level: level of a ``canonical_size`` box.
      min_level: smallest pyramid level used.
      max_level: largest pyramid level used.

    Returns:
      float32 ``[B, N, output_size, output_size, C]``.

    Raises:
      ValueError: for missing or mismatched levels, boxes not ``[B, N, 4]`` or bad sizes.
    """
    boxes = tf.convert_to_tensor(boxes)
    _check_boxes(boxes)
    _check_sizes(output_size, sampling_ratio)
    _check_features(features, min_level, max_level)
    levels = list(range(min_level, max_level + 1))
    flat, total, offsets, heights, widths = _flatten_levels(features, levels)
    box_level = assign_levels(boxes, canonical_size=canonical_size,
                              canonical_level=canonical_level, min_level=min_level,
                              max_level=max_level)
    index = box_level - min_level
    bsz = _dims(boxes)[0]
    batch_base = tf.range(bsz, dtype=tf.int32)[:, None] * tf.cast(total, tf.int32)
    base = batch_base + tf.gather(offsets, index)
    scale = tf.pow(2.0, -tf.cast(box_level, tf.float32))[..., None]
    feat_boxes = _to_feature_coords(boxes, scale)
    return _roi_align_flat(flat, base, tf.gather(heights, index), tf.gather(widths, index),
                           feat_boxes, output_size, sampling_ratio)


def crop_mask_targets(gt_masks, roi_boxes, matched_gt, *, mask_size: int = 28,
                      sampling_ratio: int = 2) -> tf.Tensor:
    """Mask R-CNN mask targets: each RoI's matched instance mask, RoI-aligned and binarised.

    Detectron2's ``BitMasks.crop_and_resize``: ``ROIAlign((mask_size, mask_size), 1.0,
    sampling_ratio, aligned=True)`` of the full-image mask, then ``>= 0.5``. Detectron2 uses
    the adaptive ``sampling_ratio=0``; here the grid is fixed so shapes stay static.
    He et al., 2017: https://arxiv.org/abs/1703.06870.

    Args:
      gt_masks: ``[B, M, H, W]`` instance masks (uint8, bool or float in ``[0, 1]``) at the
        input image's resolution; ``M >= 1``.
      roi_boxes: float ``[B, S, 4]`` sampled RoIs ``[y1, x1, y2, x2]`` in image pixels.
      matched_gt: int ``[B, S]`` index into ``M`` of each RoI's instance, ``-1`` for none.
      mask_size: side of the targets.
      sampling_ratio: bilinear samples per bin per side.

    Returns:
      float32 ``[B, S, mask_size, mask_size]`` in ``{0, 1}``; all zeros where
      ``matched_gt == -1``.

    Raises:
      ValueError: for masks not ``[B, M, H, W]``, boxes not ``[B, S, 4]`` or bad sizes.
    """
    gt_masks = tf.convert_to_tensor(gt_masks)
    roi_boxes = tf.convert_to_tensor(roi_boxes)
    if gt_masks.shape.rank != 4:
        raise ValueError(
            f"`gt_masks` must be shaped [B, M, H, W]. Received: gt_masks.shape={gt_masks.shape}")
    _check_boxes(roi_boxes)
    _check_sizes(mask_size, sampling_ratio)
    if gt_masks.dtype == tf.bool:
        gt_masks = tf.cast(gt_masks, tf.uint8)
    bsz, num_gt, height, width = _dims(gt_masks)
    matched_gt = tf.cast(matched_gt, tf.int32)
    instance = tf.range(bsz, dtype=tf.int32)[:, None] * num_gt + tf.maximum(matched_gt, 0)
    base = instance * (height * width)
    heights = tf.fill(tf.shape(base), tf.cast(height, tf.int32))
    widths = tf.fill(tf.shape(base), tf.cast(width, tf.int32))
    flat = tf.reshape(gt_masks, [-1, 1])
    crops = _roi_align_flat(flat, base, heights, widths, _to_feature_coords(roi_boxes, 1.0),
                            mask_size, sampling_ratio)[..., 0]
    keep = tf.cast(matched_gt >= 0, tf.float32)[..., None, None]
    return tf.cast(crops >= 0.5, tf.float32) * keep
