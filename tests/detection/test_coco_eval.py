"""COCO AP through pycocotools on hand-made cases whose AP is worked out by hand.

COCOeval's AP at one IoU threshold is the mean, over the 101 recall thresholds
r = 0.00, 0.01, ..., 1.00, of the interpolated precision: the largest precision at any rank
whose recall is >= r (0 when recall never reaches r). AP is that mean over the IoU thresholds
0.50, 0.55, ..., 0.95.
"""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from keras_seg.detection.coco_eval import (
    evaluate_instances,
    to_coco_detections,
    to_coco_ground_truth,
    yxyx_to_xywh,
)

SIZE = 40
GT_BOXES = [[[5, 5, 15, 15], [20, 20, 30, 35]], [[10, 10, 20, 20]]]  # 3 objects, 2 images


def _rect_masks(boxes):
    """[N, SIZE, SIZE] uint8 masks filling each integer [y1, x1, y2, x2] box exactly."""
    masks = np.zeros((len(boxes), SIZE, SIZE), np.uint8)
    for m, (y1, x1, y2, x2) in zip(masks, np.asarray(boxes, int)):
        m[y1:y2, x1:x2] = 1
    return masks


def _ground_truth():
    return [{"height": SIZE, "width": SIZE, "boxes": np.asarray(b, np.float32),
             "classes": np.ones(len(b), np.int32), "masks": _rect_masks(b)} for b in GT_BOXES]


def _prediction(boxes, scores, classes=None):
    classes = np.ones(len(boxes), np.int32) if classes is None else np.asarray(classes, np.int32)
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "classes": classes,
            "scores": np.asarray(scores, np.float32), "masks": _rect_masks(boxes)}


def _evaluate(predictions, class_names=("thing",)):
    return evaluate_instances(_ground_truth(), predictions, list(class_names))


def _assert_all(result, want):
    for iou_type in ("bbox", "segm"):
        for name, value in want.items():
            assert result[iou_type][name] == pytest.approx(value, abs=1e-6), (iou_type, name)


def test_perfect_predictions_give_one():
    preds = [_prediction(GT_BOXES[0], [0.9, 0.8]), _prediction(GT_BOXES[1], [0.7])]
    _assert_all(_evaluate(preds), {"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_shifted_prediction_between_iou_050_and_075():
    # The third object's box (and mask) is shifted 2 px right: IoU = 80 / 120 = 2/3, and it
    # has the lowest score. At IoU thresholds 0.50..0.65 all three match: AP_t = 1.
    # At 0.70..0.95 (6 thresholds) ranks give recall 1/3, 2/3, 2/3 at precision 1, 1, 2/3,
    # so recall thresholds 0.00..0.66 (67 of 101) get precision 1, the rest 0:
    # AP75 = 67/101, AP = (4 * 1 + 6 * 67/101) / 10.
    preds = [_prediction(GT_BOXES[0], [0.9, 0.8]), _prediction([[10, 12, 20, 22]], [0.7])]
    ap75 = 67 / 101
    _assert_all(_evaluate(preds), {"AP50": 1.0, "AP75": ap75, "AP": (4 + 6 * ap75) / 10})


def test_false_positive_above_true_positive():
    # Ranked by score: TP (0.9), FP (0.85), TP (0.8), TP (0.7); all TPs are exact (IoU 1).
    # Recall 1/3, 1/3, 2/3, 1 at precision 1, 1/2, 2/3, 3/4; interpolated 1, 3/4, 3/4, 3/4.
    # Recall thresholds 0.00..0.33 (34) get 1, 0.34..1.00 (67) get 3/4:
    # AP50 = (34 + 67 * 0.75) / 101 = 84.25 / 101, the same at every IoU threshold.
    preds = [_prediction(GT_BOXES[0], [0.9, 0.8]),
             _prediction([[10, 10, 20, 20], [30, 30, 38, 38]], [0.7, 0.85])]
    ap = 84.25 / 101
    _assert_all(_evaluate(preds), {"AP": ap, "AP50": ap, "AP75": ap})


def test_padding_rows_are_skipped():
    padded = _prediction([[10, 10, 20, 20], [30, 30, 38, 38], [0, 0, 9, 9]], [0.7, 0.99, 0.0],
                         classes=[1, -1, 1])
    preds = [_prediction(GT_BOXES[0], [0.9, 0.8]), padded]
    assert len(to_coco_detections(preds)) == 3
    _assert_all(_evaluate(preds), {"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_wrong_class_and_empty_predictions_give_zero():
    wrong = [_prediction(GT_BOXES[0], [0.9, 0.8], classes=[2, 2]),
             _prediction(GT_BOXES[1], [0.7], classes=[2])]
    _assert_all(_evaluate(wrong, ("thing", "other")), {"AP": 0.0, "AP50": 0.0, "AP75": 0.0})
    empty = [_prediction(np.zeros((0, 4)), np.zeros(0)) for _ in range(2)]
    _assert_all(_evaluate(empty), {"AP": 0.0, "AP50": 0.0, "AP75": 0.0})


def test_box_conversion_and_rle_area():
    assert yxyx_to_xywh([5.5, 2.25, 15.75, 12.5]) == [2.25, 5.5, 10.25, 10.25]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[3:9, 4:7] = 1
    mask[20:31, 11] = 1                     # a second, disconnected part: 18 + 11 pixels
    image = {"height": SIZE, "width": SIZE, "boxes": np.array([[3.0, 4.5, 31.0, 12.0]]),
             "classes": np.array([1]), "masks": mask[None]}
    dataset = to_coco_ground_truth([image], ["thing"])
    (ann,) = dataset["annotations"]
    assert ann["bbox"] == [4.5, 3.0, 7.5, 28.0]
    assert ann["area"] == 29 == mask.sum()
    assert (ann["id"], ann["image_id"], ann["category_id"], ann["iscrowd"]) == (1, 1, 1, 0)
    np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]), mask)
    assert dataset["categories"] == [{"id": 1, "name": "thing"}]
    probs = mask[None].astype(np.float32) * 0.6 + 0.2   # 0.8 inside, 0.2 outside
    (det,) = to_coco_detections([{"boxes": image["boxes"], "classes": [1], "scores": [0.5],
                                  "masks": probs}])
    assert det["bbox"] == [4.5, 3.0, 7.5, 28.0] and det["image_id"] == 1
    np.testing.assert_array_equal(mask_utils.decode(det["segmentation"]), mask)


def test_bad_inputs_name_the_image():
    gt = _ground_truth()
    good = [_prediction(GT_BOXES[0], [0.9, 0.8]), _prediction(GT_BOXES[1], [0.7])]
    with pytest.raises(ValueError, match="len\\(predictions\\)=1"):
        evaluate_instances(gt, good[:1], ["thing"])
    bad = [good[0], dict(good[1], masks=np.zeros((1, SIZE, SIZE + 1), np.uint8))]
    with pytest.raises(ValueError, match=r"predictions\[1\]\['masks'\].shape=\(1, 40, 41\)"):
        evaluate_instances(gt, bad, ["thing"])
    bad = [good[0], dict(good[1], scores=np.ones(2, np.float32))]
    with pytest.raises(ValueError, match=r"predictions\[1\] arrays"):
        evaluate_instances(gt, bad, ["thing"])
    gt[0]["classes"] = np.array([1, 3], np.int32)
    with pytest.raises(ValueError, match=r"images\[0\]\['classes'\] value=3"):
        evaluate_instances(gt, good, ["thing"])
