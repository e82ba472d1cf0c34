"""Tests for keras_seg.detection.losses against independent NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from keras_seg.detection import losses as L


def _bce(logit, target):
    """Sigmoid binary cross-entropy of one logit, computed the naive way in float64."""
    p = 1.0 / (1.0 + np.exp(-logit))
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def _smooth_l1(d, beta):
    d = np.abs(d)
    if beta == 0:
        return d
    return np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)


def test_rpn_objectness_loss_ignores_unsampled():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 7)).astype(np.float32)
    labels = np.array([[1, 0, -1, -1, 0, 1, 0], [-1, -1, 0, 1, -1, -1, -1]], np.int32)
    terms = [_bce(logits[b, n], labels[b, n]) for b in range(2) for n in range(7) if labels[b, n] >= 0]
    np.testing.assert_allclose(L.rpn_objectness_loss(logits, labels).numpy(), np.mean(terms), rtol=1e-5)
    assert L.rpn_objectness_loss(logits, -np.ones_like(labels)).numpy() == 0.0


@pytest.mark.parametrize("beta", [0.0, 1.0 / 9.0, 1.0])
def test_smooth_l1(beta):
    pred = np.array([-2.0, -0.05, 0.0, 0.1, 0.5, 3.0], np.float32)
    target = np.zeros_like(pred)
    np.testing.assert_allclose(L.smooth_l1(pred, target, beta).numpy(), _smooth_l1(pred, beta), rtol=1e-6)


def test_smooth_l1_rejects_negative_beta():
    with pytest.raises(ValueError, match="Received: beta=-1"):
        L.smooth_l1([0.0], [0.0], -1)


def test_rpn_box_loss_normalises_by_sampled_anchors():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 4))
    labels = np.array([[1, 0, -1, 1, 0], [-1, 0, 1, -1, -1]], np.int32)
    beta = 1.0 / 9.0
    total = 0.0
    for b, n in zip(*np.nonzero(labels == 1)):
        total += _smooth_l1(pred[b, n] - target[b, n], beta).sum()
    expected = total / (labels >= 0).sum()
    np.testing.assert_allclose(L.rpn_box_loss(pred, target, labels).numpy(), expected, rtol=1e-5)
    assert L.rpn_box_loss(pred, target, np.where(labels == 1, 0, labels)).numpy() == 0.0


def test_box_head_loss_uses_gt_class_deltas():
    rng = np.random.default_rng(2)
    num_classes = 3
    deltas, target = rng.normal(size=(2, 4, num_classes, 4)), rng.normal(size=(2, 4, 4))
    classes = np.array([[2, 0, 3, -1], [1, 0, 0, -1]], np.int32)
    total = 0.0
    for b in range(2):
        for s in range(4):
            if classes[b, s] > 0:
                total += _smooth_l1(deltas[b, s, classes[b, s] - 1] - target[b, s], 1.0).sum()
    expected = total / (classes >= 0).sum()
    np.testing.assert_allclose(L.box_head_loss(deltas, target, classes).numpy(), expected, rtol=1e-5)
    assert L.box_head_loss(deltas, target, np.minimum(classes, 0)).numpy() == 0.0


def test_classification_loss_ignores_padding():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 4, 4))
    classes = np.array([[0, 3, -1, 1], [-1, -1, 2, 0]], np.int32)
    terms = []
    for b in range(2):
        for s in range(4):
            if classes[b, s] >= 0:
                z = logits[b, s]
                terms.append(-(z[classes[b, s]] - np.log(np.exp(z).sum())))
    np.testing.assert_allclose(L.classification_loss(logits, classes).numpy(), np.mean(terms), rtol=1e-5)
    assert L.classification_loss(logits, -np.ones_like(classes)).numpy() == 0.0


def _np_mask_loss(logits, targets, classes):
    """L_mask with explicit loops over RoIs and pixels."""
    total, count = 0.0, 0
    for b in range(classes.shape[0]):
        for s in range(classes.shape[1]):
            if classes[b, s] <= 0:
                continue
            for i in range(targets.shape[2]):
                for j in range(targets.shape[3]):
                    total += _bce(logits[b, s, i, j, classes[b, s] - 1], targets[b, s, i, j])
                    count += 1
    return total / count if count else 0.0


def test_mask_loss_matches_loops_and_is_class_specific():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 3, 5, 5, 3)).astype(np.float32)
    targets = (rng.uniform(size=(2, 3, 5, 5)) > 0.5).astype(np.float32)
    classes = np.array([[1, 0, 3], [-1, 2, 0]], np.int32)
    loss = tf.function(L.mask_loss)(logits, targets, classes).numpy()
    np.testing.assert_allclose(loss, _np_mask_loss(logits, targets, classes), rtol=1e-5)
    other = logits.copy()
    other[0, 0, ..., 1:] += 5.0  # channels of classes 2, 3 for a class-1 RoI
    other[0, 1] += 5.0  # a background RoI
    np.testing.assert_allclose(L.mask_loss(other, targets, classes).numpy(), loss, rtol=1e-6)


def test_mask_loss_zero_without_foreground_and_has_gradient():
    logits = tf.Variable(tf.zeros((1, 2, 4, 4, 2)))
    targets = tf.ones((1, 2, 4, 4))
    assert L.mask_loss(logits, targets, [[0, -1]]).numpy() == 0.0
    with tf.GradientTape() as tape:
        loss = L.mask_loss(logits, targets, [[2, 0]])
    grad = tape.gradient(loss, logits).numpy()
    np.testing.assert_allclose(loss.numpy(), np.log(2.0), rtol=1e-6)
    assert np.all(grad[0, 0, ..., 1] < 0) and np.all(grad[0, 0, ..., 0] == 0) and np.all(grad[0, 1] == 0)
