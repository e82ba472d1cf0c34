"""RoIAlign against a loop-by-loop NumPy port of Detectron2's ROIAlign kernel (aligned=True)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_seg.detection.roi_align import (
    assign_levels,
    crop_mask_targets,
    roi_align,
    roi_align_single,
)


def _bilinear(fmap, y, x):
    """Detectron2 roi_align_kernel.cpp ``bilinear_interpolate`` on an [H, W, C] map."""
    height, width = fmap.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(fmap.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * fmap[y_low, x_low] + hy * lx * fmap[y_low, x_high]
            + ly * hx * fmap[y_high, x_low] + ly * lx * fmap[y_high, x_high])


def _roi_align_ref(fmap, box, scale, out, ratio):
    """Detectron2 ROIAlignForward for one box with aligned=True and a fixed sampling ratio."""
    fmap = fmap.astype(np.float64)
    y1, x1, y2, x2 = [float(v) * scale - 0.5 for v in box]
    bin_h, bin_w = (y2 - y1) / out, (x2 - x1) / out
    result = np.zeros((out, out, fmap.shape[-1]))
    for ph in range(out):
        for pw in range(out):
            acc = np.zeros(fmap.shape[-1])
            for iy in range(ratio):
                yy = y1 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                for ix in range(ratio):
                    xx = x1 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                    acc += _bilinear(fmap, yy, xx)
            result[ph, pw] = acc / (ratio * ratio)
    return result


def _ref_level(box, canonical_size, canonical_level=4, min_level=2, max_level=5):
    """FPN eq. (1) in float64."""
    h, w = box[2] - box[0], box[3] - box[1]
    k = math.floor(canonical_level + math.log2(math.sqrt(h * w) / canonical_size + 1e-8))
    return min(max(k, min_level), max_level)


def _random_boxes(rng, n, image, min_side, max_side):
    """Boxes of random sides whose centres may fall near or beyond the image border."""
    sides = np.exp(rng.uniform(np.log(min_side), np.log(max_side), size=(n, 2)))
    centres = rng.uniform(-0.1 * image, 1.1 * image, size=(n, 2))
    return np.concatenate([centres - sides / 2, centres + sides / 2], axis=1).astype(np.float32)


def test_single_level_matches_reference():
    rng = np.random.default_rng(0)
    feature = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    boxes = _random_boxes(rng, 10, 20, 0.2, 30).reshape(2, 5, 4)
    boxes[0, 0] = [3.0, 4.0, 3.3, 4.2]          # tiny box
    boxes[1, 0] = [-6.0, 15.0, 10.0, 30.0]      # partly outside on two sides
    boxes[1, 1] = [-1.8, -1.8, 1.0, 1.0]        # samples at -1.28, -1.05 (dropped), -0.82 (kept)
    got = roi_align_single(feature, boxes, output_size=3, sampling_ratio=2, spatial_scale=0.5)
    assert got.shape == (2, 5, 3, 3, 3)
    for b in range(2):
        for n in range(5):
            want = _roi_align_ref(feature[b], boxes[b, n], 0.5, 3, 2)
            np.testing.assert_allclose(got[b, n].numpy(), want, atol=1e-5, err_msg=f"{b},{n}")


def test_assign_levels_fpn_equation():
    boxes = np.array([[0, 0, 224, 224], [10, 10, 122, 122], [0, 0, 223, 223],
                      [0, 0, 2000, 2000], [5, 5, 7, 7], [0, 0, 448, 448], [3, 3, 3, 9]],
                     np.float32)
    levels = assign_levels(boxes).numpy()
    np.testing.assert_array_equal(levels, [4, 3, 3, 5, 2, 5, 2])


def _pyramid(rng, batch, image, channels):
    """Random {level: [B, image / 2**level, image / 2**level, C]} for levels 2..5."""
    return {k: rng.normal(size=(batch, image >> k, image >> k, channels)).astype(np.float32)
            for k in range(2, 6)}


def test_multilevel_matches_reference():
    rng = np.random.default_rng(1)
    features = _pyramid(rng, 2, 64, 3)
    boxes = _random_boxes(rng, 24, 64, 0.5, 90).reshape(2, 12, 4)
    got = roi_align(features, boxes, output_size=2, sampling_ratio=2, canonical_size=16).numpy()
    seen = set()
    for b in range(2):
        for n in range(12):
            level = _ref_level(boxes[b, n], 16)
            seen.add(level)
            want = _roi_align_ref(features[level][b], boxes[b, n], 2.0 ** -level, 2, 2)
            np.testing.assert_allclose(got[b, n], want, atol=1e-5, err_msg=f"{b},{n},L{level}")
    assert seen == {2, 3, 4, 5}  # every level was exercised


def test_constant_feature_gives_constant_inside():
    feature = np.full((1, 8, 8, 2), 3.5, np.float32)
    boxes = np.array([[[1.0, 2.0, 30.0, 29.0], [0.0, 0.0, 32.0, 32.0], [10.0, 11.0, 10.5, 11.2]]],
                     np.float32)
    got = roi_align_single(feature, boxes, output_size=5, spatial_scale=0.25).numpy()
    np.testing.assert_allclose(got, 3.5, rtol=1e-6)


def test_linear_ramp_gives_bin_centre():
    yy, xx = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    feature = np.stack([2 * yy + 3 * xx, -yy + 0.5 * xx + 7], axis=-1)[None].astype(np.float32)
    box = np.array([4.0, 6.0, 20.0, 27.0], np.float32)
    out = 4
    got = roi_align_single(feature, box[None, None], output_size=out, spatial_scale=0.5).numpy()
    y1, x1, y2, x2 = box * 0.5 - 0.5
    cy = y1 + (np.arange(out) + 0.5) * (y2 - y1) / out
    cx = x1 + (np.arange(out) + 0.5) * (x2 - x1) / out
    cy, cx = np.meshgrid(cy, cx, indexing="ij")
    want = np.stack([2 * cy + 3 * cx, -cy + 0.5 * cx + 7], axis=-1)
    np.testing.assert_allclose(got[0, 0], want, atol=1e-4)


def test_roi_align_in_tf_function_dynamic_shapes():
    rng = np.random.default_rng(2)
    features = _pyramid(rng, 1, 32, 2)
    boxes = _random_boxes(rng, 4, 32, 1, 40).reshape(1, 4, 4)
    spec = {k: tf.TensorSpec([None, None, None, 2], tf.float32) for k in features}
    fn = tf.function(lambda f, b: roi_align(f, b, output_size=2, canonical_size=8),
                     input_signature=[spec, tf.TensorSpec([None, None, 4], tf.float32)])
    eager = roi_align(features, boxes, output_size=2, canonical_size=8).numpy()
    tensors = {k: tf.constant(v) for k, v in features.items()}
    np.testing.assert_allclose(fn(tensors, tf.constant(boxes)).numpy(), eager, atol=1e-6)
    ops = {op.type for op in fn.get_concrete_function().graph.get_operations()}
    assert "CropAndResize" not in ops and "GatherV2" in ops


def test_bad_inputs_raise():
    features = _pyramid(np.random.default_rng(3), 1, 32, 2)
    boxes = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="lacks levels"):
        roi_align({k: v for k, v in features.items() if k != 3}, boxes)
    with pytest.raises(ValueError, match="Received: boxes.shape"):
        roi_align(features, np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match="sampling_ratio=0"):
        roi_align_single(features[2], boxes, sampling_ratio=0)


def test_crop_mask_targets_rectangle_patterns():
    masks = np.zeros((2, 2, 56, 56), np.uint8)
    masks[0, 0, 8:24, 20:40] = 1        # box [8, 20, 24, 40]
    masks[0, 1, 30:50, 0:16] = 1        # box [30, 0, 50, 16]
    masks[1, 1, 8:24, 20:40] = 1
    rois = np.array([[[0, 0, 56, 56], [8, 30, 24, 50], [30, 0, 50, 16], [8, 20, 24, 40]],
                     [[8, 20, 24, 40], [8, 20, 24, 40], [0, 0, 56, 56], [30, 0, 50, 16]]],
                    np.float32)
    matched = np.array([[0, 0, 1, -1], [1, 0, 1, 1]], np.int32)
    got = crop_mask_targets(masks, rois, matched, mask_size=28).numpy()
    assert got.shape == (2, 4, 28, 28) and got.dtype == np.float32
    full = np.zeros((28, 28))
    full[4:12, 10:20] = 1               # 2x2-pixel bins over the whole image
    half = np.zeros((28, 28))
    half[:, :14] = 1                    # the RoI's left 10 of 20 columns are in the rectangle
    ones, zeros = np.ones((28, 28)), np.zeros((28, 28))
    np.testing.assert_array_equal(got[0, 0], full)
    np.testing.assert_array_equal(got[0, 1], half)
    np.testing.assert_array_equal(got[0, 2], ones)
    np.testing.assert_array_equal(got[0, 3], zeros)    # matched -1
    np.testing.assert_array_equal(got[1, 0], ones)
    np.testing.assert_array_equal(got[1, 1], zeros)    # image 1's instance 0 is empty
    np.testing.assert_array_equal(got[1, 2], full)
    np.testing.assert_array_equal(got[1, 3], zeros)    # image 0's instance 1 is not image 1's


def test_crop_mask_targets_matches_reference():
    rng = np.random.default_rng(4)
    masks = (rng.uniform(size=(1, 3, 12, 10)) > 0.5).astype(np.float32)
    rois = _random_boxes(rng, 5, 12, 1, 14).reshape(1, 5, 4)
    matched = np.array([[2, 0, 1, -1, 2]], np.int32)
    got = crop_mask_targets(masks, rois, matched, mask_size=6).numpy()
    for s in range(5):
        if matched[0, s] < 0:
            np.testing.assert_array_equal(got[0, s], 0.0)
            continue
        ref = _roi_align_ref(masks[0, matched[0, s], ..., None], rois[0, s], 1.0, 6, 2)[..., 0]
        np.testing.assert_array_equal(got[0, s], (ref >= 0.5).astype(np.float32), err_msg=str(s))
