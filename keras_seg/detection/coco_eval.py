"""COCO box and mask AP of instance predictions, computed by pycocotools' ``COCOeval``.

Ground truth and predictions are per-image dicts of NumPy arrays with boxes
``[y1, x1, y2, x2]`` in absolute, continuous pixel coordinates (the package's convention);
they are converted to COCO's ``[x, y, w, h]`` boxes and RLE masks, and AP, AP50 and AP75
come from ``COCOeval`` with iouType ``"bbox"`` and ``"segm"`` (Lin et al., 2014,
https://arxiv.org/abs/1405.0312), as Detectron2's ``COCOEvaluator`` does. Images get ids
``1..n`` in list order, classes ``1..K`` are the COCO category ids, and rows with class
``-1`` (padding) are skipped.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Dict, List, Mapping, Sequence

import numpy as np
try:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError as e:  # an optional extra: say how to get it
    raise ImportError("keras_seg.detection.coco_eval needs pycocotools: pip install -e '.[detection]' "
                      "(or pip install 'pycocotools>=2.0.7,<3').") from e

__all__ = ["evaluate_instances", "to_coco_detections", "to_coco_ground_truth", "yxyx_to_xywh"]

_METRICS = ("AP", "AP50", "AP75")  # the first three entries of COCOeval.stats
_IOU_TYPES = ("bbox", "segm")


def yxyx_to_xywh(box) -> List[float]:
    """Converts one ``[y1, x1, y2, x2]`` box to COCO's ``[x, y, width, height]``."""
    y1, x1, y2, x2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _encode(mask: np.ndarray) -> dict:
    """COCO RLE of a binary ``[H, W]`` mask, with JSON-ready string counts."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _require(i: int, where: str, record: Mapping, keys: Sequence[str]) -> None:
    """Raises ValueError if ``record`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{where}[{i}] lacks keys {missing}. Received: keys={sorted(record)}")


def _check_rows(i: int, where: str, record: Mapping, keys: Sequence[str]) -> int:
    """Checks that the named arrays share their first dimension; returns it."""
    _require(i, where, record, keys)
    rows = {k: np.shape(record[k])[0] if np.ndim(record[k]) else None for k in keys}
    if len(set(rows.values())) != 1 or np.shape(record["boxes"])[1:] != (4,):
        shapes = {k: np.shape(record[k]) for k in keys}
        raise ValueError(f"{where}[{i}] arrays must agree on their first dimension, with boxes "
                         f"[N, 4]. Received: {where}[{i}] shapes={shapes}")
    return rows["boxes"]


def _check_mask_size(i: int, where: str, masks, height: int, width: int) -> None:
    """Raises ValueError unless ``masks`` is ``[N, height, width]``."""
    if np.ndim(masks) != 3 or tuple(np.shape(masks)[1:]) != (height, width):
        raise ValueError(f"{where}[{i}]['masks'] must be [N, {height}, {width}]. "
                         f"Received: {where}[{i}]['masks'].shape={np.shape(masks)}")


def _check_classes(i: int, classes: np.ndarray, num_classes: int) -> None:
    """Raises ValueError for ground-truth classes outside ``1..K`` and ``-1``."""
    bad = classes[(classes != -1) & ((classes < 1) | (classes > num_classes))]
    if bad.size:
        raise ValueError(f"images[{i}]['classes'] must be in 1..{num_classes} (or -1 for padding). "
                         f"Received: images[{i}]['classes'] value={int(bad[0])}")


def _gt_annotations(i: int, image: Mapping, first_id: int) -> List[dict]:
    """COCO annotations of one ground-truth image, with ids from ``first_id``."""
    classes = np.asarray(image["classes"]).astype(np.int64).reshape(-1)
    boxes, masks = np.asarray(image["boxes"]), np.asarray(image["masks"])
    annotations = []
    for row in np.flatnonzero(classes != -1):
        rle = _encode(masks[row])
        annotations.append({
            "id": first_id + len(annotations), "image_id": i + 1,
            "category_id": int(classes[row]), "bbox": yxyx_to_xywh(boxes[row]),
            "segmentation": rle, "area": float(mask_utils.area(rle)), "iscrowd": 0,
        })
    return annotations


def to_coco_ground_truth(images: Sequence[Mapping], class_names: Sequence[str]) -> dict:
    """Builds a COCO dataset dict from per-image ground truth.

    Args:
      images: one dict per image with ``"height"``, ``"width"``, ``"boxes"`` ``[M, 4]``
        ``[y1, x1, y2, x2]`` pixels, ``"classes"`` ``[M]`` in ``1..K`` (``-1`` rows are
        padding and skipped) and ``"masks"`` ``[M, height, width]`` binary.
      class_names: the ``K`` class names; class ``k`` is COCO category ``k``.

    Returns:
      A dict with ``images`` (ids ``1..n``), ``annotations`` (ids from 1, COCO
      ``[x, y, w, h]`` boxes, RLE ``segmentation``, ``area`` = mask pixel count, ``iscrowd``
      0) and ``categories`` (ids ``1..K``), ready for ``pycocotools.coco.COCO``.

    Raises:
      ValueError: if an image's arrays disagree in length or size, or a class is out of range.
    """
    coco_images, annotations = [], []
    for i, image in enumerate(images):
        _require(i, "images", image, ("height", "width"))
        _check_rows(i, "images", image, ("boxes", "classes", "masks"))
        height, width = int(image["height"]), int(image["width"])
        _check_mask_size(i, "images", image["masks"], height, width)
        _check_classes(i, np.asarray(image["classes"]).reshape(-1), len(class_names))
        coco_images.append({"id": i + 1, "height": height, "width": width})
        annotations += _gt_annotations(i, image, len(annotations) + 1)
    categories = [{"id": k + 1, "name": str(name)} for k, name in enumerate(class_names)]
    return {"images": coco_images, "annotations": annotations, "categories": categories}


def to_coco_detections(predictions: Sequence[Mapping], mask_threshold: float = 0.5) -> List[dict]:
    """Converts per-image predictions to COCO result dicts.

    Args:
      predictions: one dict per image (image id = position + 1) with ``"boxes"`` ``[N, 4]``
        ``[y1, x1, y2, x2]`` pixels, ``"classes"`` ``[N]``, ``"scores"`` ``[N]`` and optionally
        ``"masks"`` ``[N, H, W]`` full-image probabilities or binary masks.
      mask_threshold: a mask pixel is foreground where its value is ``>= mask_threshold``.

    Returns:
      A list of ``{"image_id", "category_id", "bbox", "score"}`` dicts, with an RLE
      ``"segmentation"`` when masks are given. Padding rows (class -1 or score <= 0) are
      skipped.

    Raises:
      ValueError: if an image's arrays disagree in length.
    """
    results = []
    for i, pred in enumerate(predictions):
        keys = ("boxes", "classes", "scores") + (("masks",) if "masks" in pred else ())
        _check_rows(i, "predictions", pred, keys)
        classes = np.asarray(pred["classes"]).astype(np.int64).reshape(-1)
        scores = np.asarray(pred["scores"], np.float64).reshape(-1)
        boxes = np.asarray(pred["boxes"])
        for row in np.flatnonzero((classes != -1) & (scores > 0)):
            result = {"image_id": i + 1, "category_id": int(classes[row]),
                      "bbox": yxyx_to_xywh(boxes[row]), "score": float(scores[row])}
            if "masks" in pred:
                result["segmentation"] = _encode(np.asarray(pred["masks"][row]) >= mask_threshold)
            results.append(result)
    return results


def _silent_coco(dataset: dict) -> COCO:
    """A ``COCO`` object over an in-memory dataset, without its progress prints."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_metrics(coco_gt: COCO, results: List[dict], iou_type: str) -> Dict[str, float]:
    """AP, AP50 and AP75 from COCOeval; 0 with no results, NaN where COCO reports -1."""
    if not results:
        return {name: 0.0 for name in _METRICS}
    results = copy.deepcopy(results)  # loadRes writes ids and areas into the dicts
    if iou_type == "segm":
        for result in results:  # boxes then come from the masks, as in Detectron2
            result.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) if v >= 0 else float("nan") for v in evaluator.stats[:3]]
    return dict(zip(_METRICS, stats))


def _check_pairs(images: Sequence[Mapping], predictions: Sequence[Mapping],
                 iou_types: Sequence[str]) -> None:
    """Checks that the lists have equal length and the iou types are known."""
    if len(images) != len(predictions):
        raise ValueError("`ground_truth_images` and `predictions` must have equal length. "
                         f"Received: len(ground_truth_images)={len(images)}, "
                         f"len(predictions)={len(predictions)}")
    unknown = [t for t in iou_types if t not in _IOU_TYPES]
    if unknown or not iou_types:
        raise ValueError(f"`iou_types` must be a non-empty subset of {_IOU_TYPES}. "
                         f"Received: iou_types={tuple(iou_types)}")


def _check_pred_masks(images: Sequence[Mapping], predictions: Sequence[Mapping]) -> None:
    """Checks that every prediction has full-image masks of its image's size."""
    for i, (image, pred) in enumerate(zip(images, predictions)):
        if "masks" not in pred:
            raise ValueError(f"predictions[{i}] needs 'masks' for segm AP. "
                             f"Received: keys={sorted(pred)}")
        _check_mask_size(i, "predictions", pred["masks"], int(image["height"]),
                         int(image["width"]))


def evaluate_instances(ground_truth_images: Sequence[Mapping], predictions: Sequence[Mapping],
                       class_names: Sequence[str], *, mask_threshold: float = 0.5,
                       iou_types: Sequence[str] = _IOU_TYPES) -> Dict[str, Dict[str, float]]:
    """COCO box and mask AP of instance predictions (Lin et al., 2014).

    Runs pycocotools' ``COCOeval`` (101-point interpolated precision, IoU 0.50:0.95, up to
    100 detections per image); its printed summary is silenced. See
    https://arxiv.org/abs/1405.0312 and https://cocodataset.org/#detection-eval.

    Args:
      ground_truth_images: per-image ground truth, as :func:`to_coco_ground_truth` takes.
      predictions: per-image predictions, as :func:`to_coco_detections` takes, in the same
        order; their masks are full-image ``[N, height, width]``.
      class_names: the ``K`` class names.
      mask_threshold: foreground threshold of predicted mask probabilities.
      iou_types: which of ``"bbox"`` and ``"segm"`` to evaluate.

    Returns:
      ``{iou_type: {"AP", "AP50", "AP75"}}`` floats in ``[0, 1]``; 0 when there are no
      detections at all, NaN when there is no ground-truth instance.

    Raises:
      ValueError: for lists of different lengths, an unknown iou type, or an image whose
        arrays disagree in length or size (the message names the image index).
    """
    _check_pairs(ground_truth_images, predictions, iou_types)
    dataset = to_coco_ground_truth(ground_truth_images, class_names)
    if "segm" in iou_types:
        _check_pred_masks(ground_truth_images, predictions)
    coco_gt = _silent_coco(dataset)
    results = to_coco_detections(predictions, mask_threshold=mask_threshold)
    return {t: _coco_metrics(coco_gt, results, t) for t in iou_types}
