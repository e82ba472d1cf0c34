"""Proposals, detections and mask pasting on hand-made inputs, and pasting against a NumPy grid_sample port."""

import numpy as np
import pytest
import tensorflow as tf

from keras_seg.detection.proposals import detect, generate_proposals, paste_masks


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_proposals_keep_the_top_box_suppress_duplicates_and_pad():
    anchors = np.array([[0, 0, 10, 10], [0.5, 0.5, 10.5, 10.5], [20, 20, 30, 30], [40, 40, 41, 41]], "float32")
    logits = np.array([[5.0, 4.0, 3.0, -1.0]], "float32")
    boxes, scores = generate_proposals(logits, np.zeros((1, 4, 4), "float32"), anchors, (64, 64), post_nms_topk=6)
    # anchor 1 overlaps anchor 0 with IoU 90.25 / 109.75 = 0.82 > 0.7: suppressed.
    np.testing.assert_allclose(boxes[0, :3], anchors[[0, 2, 3]])
    np.testing.assert_allclose(scores[0, :3], _sigmoid(np.array([5.0, 3.0, -1.0])), rtol=1e-6)
    np.testing.assert_array_equal(boxes[0, 3:], 0.0)
    np.testing.assert_array_equal(scores[0, 3:], 0.0)


def test_proposals_nms_is_per_level_and_topk_is_per_level():
    box = [0, 0, 10, 10]
    anchors = np.array([box, [30, 30, 40, 40], box, [50, 50, 60, 60]], "float32")
    logits = np.array([[2.0, 1.0, 3.0, 4.0]], "float32")
    deltas = np.zeros((1, 4, 4), "float32")
    boxes, _ = generate_proposals(logits, deltas, anchors, (64, 64), level_counts=(2, 2), post_nms_topk=4)
    # The identical boxes sit on different levels, so both survive; best first.
    np.testing.assert_allclose(boxes[0], anchors[[3, 2, 0, 1]])
    boxes, _ = generate_proposals(logits, deltas, anchors, (64, 64), level_counts=(2, 2), post_nms_topk=4,
                                  pre_nms_topk_per_level=1)
    np.testing.assert_allclose(boxes[0, :2], anchors[[3, 0]])
    np.testing.assert_array_equal(boxes[0, 2:], 0.0)


def test_proposals_decode_clip_and_drop_empty_boxes():
    anchors = np.array([[70, 70, 80, 80], [8, 8, 24, 24]], "float32")  # the first lies outside the image
    deltas = np.zeros((1, 2, 4), "float32")
    deltas[0, 1] = [0.5, 0.0, np.log(2.0), 0.0]  # centre down by 8 px, twice as tall
    boxes, scores = generate_proposals(np.array([[9.0, 0.0]], "float32"), deltas, anchors, (64, 64),
                                       post_nms_topk=2)
    np.testing.assert_allclose(boxes[0, 0], [8, 8, 40, 24], atol=1e-5)  # centre 24, height 32
    np.testing.assert_array_equal(boxes[0, 1], 0.0)  # clipped to [64, 64, 64, 64]: empty, never kept
    assert float(scores[0, 1]) == 0.0


def test_proposals_reject_bad_arguments():
    args = (np.zeros((1, 2), "float32"), np.zeros((1, 2, 4), "float32"), np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match="Received: level_counts"):
        generate_proposals(*args, (8, 8), level_counts=(1, 2))
    with pytest.raises(ValueError, match="Received: nms_iou"):
        generate_proposals(*args, (8, 8), nms_iou=1.5)
    with pytest.raises(ValueError, match="Received: image_size"):
        generate_proposals(*args, (8, None))


def test_detect_per_class_nms_threshold_and_padding():
    rois = np.array([[[10, 10, 30, 30], [11, 11, 31, 31], [40, 40, 60, 60], [0, 0, 0, 0]]], "float32")
    probs = np.array([[
        [0.1, 0.9, 0.0],  # roi 0: class 1 at 0.9
        [0.1, 0.3, 0.6],  # roi 1: class 1 at 0.3 (duplicate of roi 0: suppressed), class 2 at 0.6 (kept)
        [0.97, 0.03, 0.0],  # roi 2: below the 0.05 threshold
        [0.0, 1.0, 0.0],  # padding roi: never detected
    ]], "float32")
    logits = np.log(np.maximum(probs, 1e-12))
    boxes, classes, scores = detect(logits, np.zeros((1, 4, 2, 4), "float32"), rois, (64, 64), max_detections=4)
    np.testing.assert_array_equal(classes[0], [1, 2, -1, -1])
    np.testing.assert_allclose(scores[0], [0.9, 0.6, 0, 0], atol=1e-5)
    np.testing.assert_allclose(boxes[0, :2], rois[0, [0, 1]], atol=1e-4)
    np.testing.assert_array_equal(boxes[0, 2:], 0.0)


def test_detect_decodes_class_specific_deltas_and_clips():
    rois = np.array([[[10, 10, 30, 30]]], "float32")
    logits = np.log(np.array([[[0.2, 0.1, 0.7]]], "float32"))
    deltas = np.zeros((1, 1, 2, 4), "float32")
    deltas[0, 0, 1] = [0.0, 10.0, 0.0, 0.0]  # class 2 moves right by one width (weight 10): x 30..50
    deltas[0, 0, 0] = [10.0, 0.0, 0.0, 0.0]  # class 1 (score 0.1) moves down by one height: y 30..50
    boxes, classes, _ = detect(logits, deltas, rois, (64, 40), max_detections=2)
    np.testing.assert_array_equal(classes[0], [2, 1])
    np.testing.assert_allclose(boxes[0], [[10, 30, 30, 40], [30, 10, 50, 30]], atol=1e-4)  # x clipped at 40


def test_paste_all_ones_mask_fills_the_box():
    box = np.array([10.3, 20.6, 30.2, 41.7], "float32")
    pasted = np.asarray(paste_masks(np.ones((1, 1, 28, 28), "float32"), box[None, None], (48, 64), threshold=0.5))
    centres_y, centres_x = np.arange(48) + 0.5, np.arange(64) + 0.5
    inside = ((centres_y >= box[0]) & (centres_y <= box[2]))[:, None] & ((centres_x >= box[1]) & (centres_x <= box[3]))
    assert np.array_equal(pasted[0, 0], inside.astype("float32"))  # exact here; the contract is +-1 px at edges
    assert pasted.sum() == 20 * 21


def _grid_sample_paste(mask, box, height, width):
    """Detectron2 ``_do_paste_mask``: grid_sample(bilinear, zeros, align_corners=False), loops."""
    m_h, m_w = mask.shape
    y1, x1, y2, x2 = box
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            gy = (i + 0.5 - y1) / (y2 - y1) * 2 - 1
            gx = (j + 0.5 - x1) / (x2 - x1) * 2 - 1
            u, v = ((gy + 1) * m_h - 1) / 2, ((gx + 1) * m_w - 1) / 2
            u0, v0 = int(np.floor(u)), int(np.floor(v))
            for uu, wu in ((u0, 1 - (u - u0)), (u0 + 1, u - u0)):
                for vv, wv in ((v0, 1 - (v - v0)), (v0 + 1, v - v0)):
                    if 0 <= uu < m_h and 0 <= vv < m_w:
                        out[i, j] += wu * wv * mask[uu, vv]
    return out


def test_paste_matches_grid_sample_port():
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(1, 2, 6, 5)).astype("float32")
    boxes = np.array([[[2.2, 3.1, 15.7, 11.0], [-3.0, 5.5, 9.0, 30.0]]], "float32")
    pasted = np.asarray(paste_masks(masks, boxes, (18, 24)))
    for d in range(2):
        np.testing.assert_allclose(pasted[0, d], _grid_sample_paste(masks[0, d], boxes[0, d], 18, 24), atol=1e-5)


def test_paste_masks_rejects_bad_rank():
    with pytest.raises(ValueError, match="Received: mask_probs.shape"):
        paste_masks(tf.zeros((1, 28, 28)), tf.zeros((1, 1, 4)), (8, 8))
