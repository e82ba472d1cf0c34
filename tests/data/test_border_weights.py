"""data_prep.border_weights against a direct transcription of the U-Net paper's eq. 2."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from data_prep.border_weights import class_balance_weights, unet_weight_map


def reference(label, background=0, w0=10.0, sigma=5.0, ignore_label=255):
    """Eq. 2 with full-image distance transforms to every object (slow, obviously right)."""
    objects = (label != background) & (label != ignore_label)
    comps, n = ndimage.label(objects)
    w = class_balance_weights(label, ignore_label).astype(np.float64)
    if n >= 2:
        dist = np.sort(np.stack([ndimage.distance_transform_edt(comps != i) for i in range(1, n + 1)]), axis=0)
        w += w0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * sigma**2))
    w[label == ignore_label] = 0
    return w


@pytest.mark.parametrize("seed, w0, sigma", [(0, 10.0, 5.0), (1, 10.0, 5.0), (2, 3.0, 12.0)])
def test_matches_the_equation(seed, w0, sigma):
    rng = np.random.default_rng(seed)
    label = (ndimage.gaussian_filter(rng.normal(size=(150, 170)), 4) > 0.02).astype(np.uint8)
    label[rng.random(label.shape) < 0.01] = 255
    assert ndimage.label(label == 1)[1] > 10
    got = unet_weight_map(label, background=0, w0=w0, sigma=sigma)
    assert got.dtype == np.float32 and got.shape == label.shape
    np.testing.assert_allclose(got, reference(label, 0, w0, sigma), atol=2e-6, rtol=1e-5)


def test_single_object_has_no_border_term():
    label = np.zeros((20, 20), np.uint8)
    label[5:10, 5:10] = 1
    np.testing.assert_allclose(unet_weight_map(label), class_balance_weights(label))
