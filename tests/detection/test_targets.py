"""Tests for keras_seg.detection.targets on hand-made cases with known answers."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_seg.detection.targets import roi_targets, rpn_targets

SEED = tf.constant([3, 7], tf.int32)


def _np_encode(box, ref, weights):
    """Faster R-CNN deltas of one box against one reference box."""
    cy, cx, h, w = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
    rcy, rcx, rh, rw = (ref[0] + ref[2]) / 2, (ref[1] + ref[3]) / 2, ref[2] - ref[0], ref[3] - ref[1]
    wy, wx, wh, ww = weights
    return [wy * (cy - rcy) / rh, wx * (cx - rcx) / rw, wh * math.log(h / rh), ww * math.log(w / rw)]


ANCHORS = np.array(
    [
        [0, 0, 10, 10],  # IoU 1.0 with gt0 -> positive
        [0, 0, 10, 9],  # IoU 0.9 with gt0 -> positive
        [0, 5, 10, 15],  # IoU 1/3 with gt0 -> ignored
        [20, 20, 30, 30],  # IoU 64/136 = 0.47 with gt1, its best anchor -> positive by the rule
        [20, 20, 40, 40],  # IoU 0.25 with gt1 -> negative
        [50, 50, 60, 60],  # equals the padding gt only -> negative
    ],
    np.float32,
)
GT_BOXES = np.array(
    [
        [[0, 0, 10, 10], [22, 22, 32, 32], [50, 50, 60, 60]],
        [[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 0, 0]],
    ],
    np.float32,
)
GT_CLASSES = np.array([[2, 1, -1], [-1, -1, -1]], np.int32)


def test_rpn_targets_hand_case():
    labels, targets = rpn_targets(ANCHORS, GT_BOXES, GT_CLASSES, seed=SEED)
    np.testing.assert_array_equal(labels.numpy(), [[1, 1, -1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])
    expected = np.zeros((2, 6, 4), np.float32)
    expected[0, 1] = _np_encode(GT_BOXES[0, 0], ANCHORS[1], (1, 1, 1, 1))
    expected[0, 3] = _np_encode(GT_BOXES[0, 1], ANCHORS[3], (1, 1, 1, 1))
    np.testing.assert_allclose(targets.numpy(), expected, atol=1e-6)


def test_rpn_best_anchor_rule_keeps_ties_and_needs_overlap():
    anchors = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [40, 40, 50, 50]], np.float32)
    gt_boxes = np.array([[[5, 0, 15, 10], [100, 100, 110, 110]]], np.float32)  # IoU 1/3 with a0 and a1
    labels, _ = rpn_targets(anchors, gt_boxes, np.array([[1, 1]], np.int32), seed=SEED)
    np.testing.assert_array_equal(labels.numpy(), [[1, 1, 0]])


def _many_anchors(num_pos, num_neg):
    pos = np.tile([[0, 0, 10, 10]], (num_pos, 1))
    neg = np.tile([[100, 100, 110, 110]], (num_neg, 1))
    return np.concatenate([pos, neg]).astype(np.float32)


@pytest.mark.parametrize("num_pos, expect_pos", [(100, 4), (2, 2)])
def test_rpn_sampling_caps(num_pos, expect_pos):
    anchors = _many_anchors(num_pos, 100)
    gt = np.array([[[0, 0, 10, 10]]], np.float32)
    labels, targets = rpn_targets(anchors, gt, [[1]], batch_per_image=16, positive_fraction=0.25, seed=SEED)
    labels = labels.numpy()[0]
    assert (labels == 1).sum() == expect_pos
    assert (labels == 0).sum() == 16 - expect_pos
    assert np.all(labels[num_pos:] != 1) and np.all(labels[:num_pos] != 0)
    assert np.all(targets.numpy()[0][labels != 1] == 0.0)


def test_rpn_sampling_is_reproducible_in_graph_mode():
    anchors = _many_anchors(100, 100)
    gt = tf.constant([[[0, 0, 10, 10]]], tf.float32)
    fn = tf.function(lambda seed: rpn_targets(anchors, gt, tf.constant([[1]]), batch_per_image=16, seed=seed)[0])
    a, b, c = fn(SEED).numpy(), fn(SEED).numpy(), fn(tf.constant([4, 7])).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a == 1).sum() == 8 and (a == 0).sum() == 8
    assert not np.array_equal(a, c)


def test_rpn_targets_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="Received: negative_iou=0.8"):
        rpn_targets(ANCHORS, GT_BOXES, GT_CLASSES, negative_iou=0.8, seed=SEED)
    with pytest.raises(ValueError, match="Received: batch_per_image=0"):
        rpn_targets(ANCHORS, GT_BOXES, GT_CLASSES, batch_per_image=0, seed=SEED)


PROPOSALS = np.array(
    [
        [
            [0, 0, 10, 10],  # = gt0 -> fg
            [0, 0, 10, 8],  # IoU 0.8 with gt0 -> fg
            [30, 30, 40, 40],  # equals the padding gt only -> bg
            [0, 5, 10, 15],  # IoU 1/3 -> bg
            [0, 0, 0, 0],  # zero area: padding proposal, never sampled
            [20, 20, 30, 30],  # = gt1 -> fg
        ]
    ],
    np.float32,
)
ROI_GT_BOXES = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [30, 30, 40, 40]]], np.float32)
ROI_GT_CLASSES = np.array([[3, 1, -1]], np.int32)


def _roi(**kwargs):
    out = roi_targets(PROPOSALS, ROI_GT_BOXES, ROI_GT_CLASSES, seed=SEED, **kwargs)
    return [t.numpy()[0] for t in out]


def test_roi_targets_all_candidates_with_gt_appended():
    rois, classes, targets, matched = _roi(batch_per_image=10, fg_fraction=1.0)
    # 5 fg (3 proposals + 2 gts), 2 bg, 3 padding slots; fg first, then bg, then padding.
    np.testing.assert_array_equal(classes, [3, 3, 1, 3, 1, 0, 0, -1, -1, -1])
    np.testing.assert_array_equal(rois[:7], PROPOSALS[0, [0, 1, 5]].tolist() + ROI_GT_BOXES[0, :2].tolist()
                                  + PROPOSALS[0, [2, 3]].tolist())
    np.testing.assert_array_equal(rois[7:], 0.0)
    np.testing.assert_array_equal(matched[:5], [0, 0, 1, 0, 1])
    expected = np.zeros((10, 4), np.float32)
    expected[1] = _np_encode(ROI_GT_BOXES[0, 0], PROPOSALS[0, 1], (10, 10, 5, 5))
    np.testing.assert_allclose(targets, expected, atol=1e-5)
    assert np.all((matched >= 0) & (matched < 3))


def test_roi_targets_fg_cap_and_fill():
    rois, classes, targets, _ = _roi(batch_per_image=8, fg_fraction=0.5)
    assert (classes > 0).sum() == 4 and (classes == 0).sum() == 2 and (classes == -1).sum() == 2
    assert not np.any(np.all(rois[classes >= 0] == 0.0, axis=-1))  # zero-area proposal never sampled
    assert np.all(targets[classes <= 0] == 0.0)


def test_roi_targets_without_gt_append_and_without_gts():
    _, classes, _, _ = _roi(batch_per_image=8, fg_fraction=1.0, append_gt=False)
    np.testing.assert_array_equal(classes, [3, 3, 1, 0, 0, -1, -1, -1])
    out = roi_targets(PROPOSALS, ROI_GT_BOXES, [[-1, -1, -1]], batch_per_image=8, seed=SEED)
    np.testing.assert_array_equal(out[1].numpy()[0], [0] * 5 + [-1] * 3)


def test_roi_targets_reproducible_in_graph_mode():
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 40, (2, 64, 2))
    proposals = tf.constant(np.concatenate([yx, yx + rng.uniform(5, 20, (2, 64, 2))], -1), tf.float32)
    fn = tf.function(lambda seed: roi_targets(proposals, ROI_GT_BOXES.repeat(2, 0), ROI_GT_CLASSES.repeat(2, 0),
                                              batch_per_image=16, fg_fraction=0.25, seed=seed))
    a, b, c = fn(SEED), fn(SEED), fn(tf.constant([9, 9]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert a[0].shape == (2, 16, 4) and a[1].shape == (2, 16)
    assert np.all((a[1].numpy() > 0).sum(axis=1) <= 4)
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_roi_targets_rejects_bad_args():
    with pytest.raises(ValueError, match="Received: bg_iou_low=0.6"):
        roi_targets(PROPOSALS, ROI_GT_BOXES, ROI_GT_CLASSES, bg_iou_low=0.6, seed=SEED)
    with pytest.raises(ValueError, match="Received: fg_fraction=1.5"):
        roi_targets(PROPOSALS, ROI_GT_BOXES, ROI_GT_CLASSES, fg_fraction=1.5, seed=SEED)
