"""Tests for keras_seg.detection.boxes against NumPy references and hand-computed anchors."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_seg.detection import boxes as B


def _np_iou(a, b):
    """Pairwise IoU with explicit loops; 0 for an empty union."""
    out = np.zeros((len(a), len(b)), np.float64)
    for i, (ay1, ax1, ay2, ax2) in enumerate(a):
        for j, (by1, bx1, by2, bx2) in enumerate(b):
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            inter = ih * iw
            union = max(0.0, ay2 - ay1) * max(0.0, ax2 - ax1) + max(0.0, by2 - by1) * max(0.0, bx2 - bx1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def _random_boxes(rng, n, low=1.0):
    yx = rng.uniform(0, 50, size=(n, 2))
    hw = rng.uniform(low, 30, size=(n, 2))
    return np.concatenate([yx, yx + hw], axis=1).astype(np.float32)


def test_iou_matches_numpy_and_hand_value():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 5), _random_boxes(rng, 7)
    np.testing.assert_allclose(B.iou(a, b).numpy(), _np_iou(a, b), rtol=1e-5, atol=1e-6)
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 7.
    np.testing.assert_allclose(B.iou([[0, 0, 2, 2]], [[1, 1, 3, 3]]).numpy(), [[1 / 7]], rtol=1e-6)


def test_iou_zero_area_is_zero_not_nan_and_batches():
    zero = np.zeros((2, 4), np.float32)
    out = B.iou(zero, np.concatenate([zero, [[0, 0, 4, 4]]])).numpy()
    assert out.shape == (2, 3) and np.all(out == 0.0)
    rng = np.random.default_rng(1)
    a, b = np.stack([_random_boxes(rng, 3) for _ in range(2)]), np.stack([_random_boxes(rng, 4) for _ in range(2)])
    out = B.iou(a, b).numpy()
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out[1], _np_iou(a[1], b[1]), rtol=1e-5, atol=1e-6)


def test_encode_matches_formula():
    box, anchor = np.array([[2.0, 4.0, 12.0, 8.0]]), np.array([[0.0, 0.0, 8.0, 16.0]])
    # box centre (7, 6), size (10, 4); anchor centre (4, 8), size (8, 16).
    expected = [10 * 3 / 8, 10 * -2 / 16, 5 * math.log(10 / 8), 5 * math.log(4 / 16)]
    got = B.encode_boxes(box, anchor, B.BOX_HEAD_WEIGHTS).numpy()
    np.testing.assert_allclose(got, [expected], rtol=1e-5)


@pytest.mark.parametrize("weights", [B.RPN_WEIGHTS, B.BOX_HEAD_WEIGHTS])
def test_encode_decode_round_trip(weights):
    rng = np.random.default_rng(2)
    boxes, anchors = _random_boxes(rng, 20), _random_boxes(rng, 20)
    deltas = B.encode_boxes(boxes, anchors, weights)
    np.testing.assert_allclose(B.decode_boxes(deltas, anchors, weights).numpy(), boxes, rtol=1e-4, atol=1e-3)


def test_decode_clamps_scale_and_encode_stays_finite():
    anchor = np.array([[0.0, 0.0, 16.0, 16.0]], np.float32)
    out = B.decode_boxes([[0.0, 0.0, 50.0, 50.0]], anchor).numpy()
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 1000.0, rtol=1e-4)
    assert np.all(np.isfinite(B.encode_boxes(np.zeros((1, 4)), anchor).numpy()))


def test_decode_in_graph_mode():
    anchors = tf.constant([[0.0, 0.0, 10.0, 20.0]])
    fn = tf.function(lambda d: B.decode_boxes(d, anchors, B.BOX_HEAD_WEIGHTS))
    # dy=10 -> cy moves by 1 anchor height (10); dh=5*log(2) -> height doubles.
    out = fn(tf.constant([[10.0, 0.0, 5 * math.log(2.0), 0.0]])).numpy()
    np.testing.assert_allclose(out, [[5.0, 0.0, 25.0, 20.0]], rtol=1e-5, atol=1e-5)


def test_coder_rejects_bad_weights():
    with pytest.raises(ValueError, match="Received: weights="):
        B.encode_boxes(np.zeros((1, 4)), np.ones((1, 4)), (1.0, 1.0, 1.0))


def test_clip_boxes():
    out = B.clip_boxes([[-3.0, 5.0, 70.0, 90.0]], 64, tf.constant(80)).numpy()
    np.testing.assert_array_equal(out, [[0.0, 5.0, 64.0, 80.0]])


def test_fpn_anchor_counts_and_first_anchor_64():
    anchors = B.fpn_anchors((64, 64))
    counts = {level: int(a.shape[0]) for level, a in anchors.items()}
    assert counts == {2: 16 * 16 * 3, 3: 8 * 8 * 3, 4: 4 * 4 * 3, 5: 2 * 2 * 3, 6: 1 * 1 * 3}
    h, w = 32 * math.sqrt(0.5), 32 / math.sqrt(0.5)  # ratio 0.5 = h / w, area 32**2
    np.testing.assert_allclose(anchors[2][0].numpy(), [2 - h / 2, 2 - w / 2, 2 + h / 2, 2 + w / 2], rtol=1e-5)
    np.testing.assert_allclose(anchors[6].numpy()[1], [32 - 256, 32 - 256, 32 + 256, 32 + 256], rtol=1e-5)
    assert B.concat_anchors(anchors).shape == (sum(counts.values()), 4)
    np.testing.assert_array_equal(B.concat_anchors(anchors)[-3:].numpy(), anchors[6].numpy())


def test_fpn_anchor_order_is_row_col_ratio():
    ratios = (0.5, 1.0, 2.0)
    anchors = B.fpn_anchors((40, 24), levels=(3,), sizes=(16,), aspect_ratios=ratios)[3].numpy()
    grid = anchors.reshape(5, 3, 3, 4)  # ceil(40/8) x ceil(24/8) x A
    for i, j, a in [(0, 0, 0), (1, 2, 1), (4, 1, 2)]:
        cy, cx = (grid[i, j, a, 0] + grid[i, j, a, 2]) / 2, (grid[i, j, a, 1] + grid[i, j, a, 3]) / 2
        np.testing.assert_allclose([cy, cx], [(i + 0.5) * 8, (j + 0.5) * 8], rtol=1e-6)
        height, width = grid[i, j, a, 2] - grid[i, j, a, 0], grid[i, j, a, 3] - grid[i, j, a, 1]
        np.testing.assert_allclose([height / width, height * width], [ratios[a], 256.0], rtol=1e-5)


def test_feature_size_matches_stride2_same_pyramid():
    x = tf.zeros((1, 65, 33, 1))
    anchors = B.fpn_anchors((65, 33), levels=(1, 2, 3), sizes=(8, 16, 32), aspect_ratios=(1.0,))
    for level in (1, 2, 3):
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")
        assert anchors[level].shape[0] == x.shape[1] * x.shape[2]
        assert (B.feature_size(65, level), B.feature_size(33, level)) == tuple(x.shape[1:3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=(0, 64)), "image_size="),
        (dict(image_size=(64,)), "image_size="),
        (dict(image_size=(64, 64), sizes=(32, 64)), "sizes="),
        (dict(image_size=(64, 64), sizes=(32, 64, 0, 256, 512)), "sizes="),
        (dict(image_size=(64, 64), levels=(2, 2, 3, 4, 5)), "levels="),
        (dict(image_size=(64, 64), aspect_ratios=(1.0, -2.0)), "aspect_ratios="),
    ],
)
def test_fpn_anchors_rejects_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=f"Received: {match}"):
        B.fpn_anchors(**kwargs)
