"""Weighted pixel cross-entropy against a NumPy reference."""

import numpy as np
import pytest

from keras_seg.losses import WeightedPixelCrossEntropy, pixel_ce_sums, weighted_pixel_cross_entropy


def _np_loss(labels, logits, num_classes, ignore, class_w=None, pix_w=None):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    num = den = 0.0
    for idx in np.ndindex(labels.shape):
        y = labels[idx]
        if y == ignore or not 0 <= y < num_classes:
            continue
        w = (class_w[y] if class_w is not None else 1.0) * (pix_w[idx] if pix_w is not None else 1.0)
        num += -w * logp[idx + (y,)]
        den += w
    return num / den


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7, 4)).astype("float32") * 3
    labels = rng.integers(0, 4, size=(2, 5, 7))
    labels[0, :2] = 255  # ignored rows
    labels[1, 4, 6] = 255
    return labels, logits


def test_unweighted_matches_numpy(batch):
    labels, logits = batch
    got = float(weighted_pixel_cross_entropy(labels, logits, num_classes=4, ignore_label=255))
    assert got == pytest.approx(_np_loss(labels, logits, 4, 255), rel=1e-5)


def test_class_and_pixel_weights_match_numpy(batch):
    labels, logits = batch
    cw = [0.5, 2.0, 1.0, 3.0]
    pw = np.random.default_rng(1).uniform(0.5, 10, size=labels.shape).astype("float32")
    got = float(weighted_pixel_cross_entropy(labels, logits, num_classes=4, ignore_label=255,
                                             class_weights=cw, pixel_weights=pw))
    assert got == pytest.approx(_np_loss(labels, logits, 4, 255, cw, pw), rel=1e-5)


def test_ignored_pixels_leave_sum_and_normaliser(batch):
    labels, logits = batch
    s, n = pixel_ce_sums(labels, logits, num_classes=4, ignore_label=255)
    assert float(n) == np.sum(labels != 255)
    # Changing the logits of ignored pixels changes nothing.
    logits2 = logits.copy()
    logits2[labels == 255] = 100.0
    s2, n2 = pixel_ce_sums(labels, logits2, num_classes=4, ignore_label=255)
    assert float(s2) == pytest.approx(float(s)) and float(n2) == float(n)


def test_all_ignored_gives_zero_not_nan():
    labels = np.full((1, 3, 3), 255)
    logits = np.zeros((1, 3, 3, 2), "float32")
    assert float(weighted_pixel_cross_entropy(labels, logits, num_classes=2)) == 0.0


def test_keras_loss_class_matches_function(batch):
    labels, logits = batch
    cw = [1.0, 2.0, 3.0, 4.0]
    loss = WeightedPixelCrossEntropy(num_classes=4, ignore_label=255, class_weights=cw)
    assert float(loss(labels, logits)) == pytest.approx(_np_loss(labels, logits, 4, 255, cw), rel=1e-5)
    again = WeightedPixelCrossEntropy.from_config(loss.get_config())
    assert again.class_weights == cw
