"""U-Net border weights against hand-computed values."""

import numpy as np
import pytest

from data_prep.border_weights import class_balance_weights, unet_weight_map


def test_gap_between_two_cells_matches_formula():
    # Two cells (class 1) separated by a 4-pixel gap of background (class 0).
    label = np.zeros((12, 20), np.uint8)
    label[2:10, 2:8] = 1     # cell A: columns 2..7
    label[2:10, 12:18] = 1   # cell B: columns 12..17
    w = unet_weight_map(label, background=0, w0=10.0, sigma=5.0)
    wc = class_balance_weights(label)
    # Pixel (5, 9): nearest cell A at column 7 (d1 = 2), cell B at column 12 (d2 = 3).
    expected = wc[5, 9] + 10.0 * np.exp(-((2 + 3) ** 2) / (2 * 25.0))
    assert w[5, 9] == pytest.approx(expected, rel=1e-5)
    # Inside cell A, d1 = 0 and d2 is the distance to cell B.
    assert w[5, 4] == pytest.approx(wc[5, 4] + 10 * np.exp(-(8 ** 2) / 50.0), rel=1e-5)


def test_class_balance_and_single_object():
    label = np.zeros((4, 4), np.uint8)
    label[:, :1] = 1  # 4 of 16 pixels
    wc = class_balance_weights(label)
    assert wc[0, 0] == pytest.approx(16 / (2 * 4)) and wc[0, 3] == pytest.approx(16 / (2 * 12))
    # One object: no border term.
    np.testing.assert_allclose(unet_weight_map(label), wc)


def test_ignored_pixels_get_zero():
    label = np.zeros((6, 6), np.uint8)
    label[0, 0] = 255
    assert unet_weight_map(label)[0, 0] == 0.0
