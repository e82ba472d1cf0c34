"""Parity of exported models with the Keras model they came from.

Every image of a TFRecord split goes through the Keras model (at its own size, with the
shared normalisation) and through each exported model (the SavedModel signature at the
image's size; a TFLite model through :class:`keras_seg.litert.TFLiteSegmenter`, i.e. the
tiled or resized inference that ``predict --tflite`` uses). For each export the report
gives the mean IoU against the ground truth of both models (the FCN scores of
:mod:`keras_seg.metrics`), the share of pixels where both argmaxes agree, the largest
probability difference, and per class: the agreement (of the pixels Keras assigns to the
class, the share the export assigns to it too) and the IoU drop.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from keras_seg.data.decode import decode_example
from keras_seg.data.manifest import load_manifest, split_files
from keras_seg.metrics import StreamingConfusionMatrixMetric, scores_from_confusion_matrix

# image uint8 (H, W, 3) -> class probabilities float32 (H, W, C) at the image's size.
Predictor = Callable[[np.ndarray], np.ndarray]


def read_examples(data_dir: str, split: str, limit: Optional[int] = None,
                  shuffle_seed: Optional[int] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yields ``(image uint8 (H, W, 3), label uint8 (H, W))`` pairs of a converted split.

    Args:
      data_dir: directory with ``manifest.json`` and the shards.
      split: split name; an unknown split raises ``ManifestError`` listing the known ones.
      limit: at most this many examples (``None``: all).
      shuffle_seed: if set, examples come from a seeded 1024-example shuffle buffer.
    """
    manifest = load_manifest(data_dir)
    files = split_files(data_dir, manifest, split)
    with_weights = bool(manifest["splits"][split].get("has_weights", False))
    ds = tf.data.TFRecordDataset(files)
    if shuffle_seed is not None:
        ds = ds.shuffle(1024, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.map(lambda r: decode_example(r, with_weights), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if limit is not None:
        ds = ds.take(limit)
    for ex in ds.as_numpy_iterator():
        yield ex["image"], ex["label"][..., 0]


def _agreement_matrix(reference: np.ndarray, other: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts of reference class (rows) against the other model's class (columns)."""
    idx = reference.astype(np.int64).ravel() * num_classes + other.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _f(v) -> Optional[float]:
    v = float(v)
    return None if math.isnan(v) else v


def compare(keras_predict: Predictor, exported: Mapping[str, Predictor],
            examples: Sequence[Tuple[np.ndarray, np.ndarray]], num_classes: int, ignore_label: int,
            class_names: Sequence[str]) -> Dict[str, Any]:
    """Runs Keras and every export over ``examples``; returns the JSON-ready comparison.

    Args:
      keras_predict: the reference predictor.
      exported: name -> predictor of each exported model.
      examples: ``(image, label)`` pairs.
      num_classes: number of classes.
      ignore_label: label not counted in the IoU.
      class_names: one name per class.

    Returns:
      ``{"num_images", "num_pixels", "keras": {"mean_iu", "iu"}, "formats": {name: {...}}}``
      where each format has ``mean_iu``, ``iu``, ``agreement`` (percent), ``max_abs_prob_diff``
      and ``per_class`` ``{class: {"agreement", "iou_keras", "iou_exported", "iou_drop"}}``.

    Raises:
      ValueError: if there are no examples or a predictor returns a wrong shape.
    """
    if not examples:
        raise ValueError("no examples to compare: the parity split is empty.")
    keras_cm, cms, agree, max_diff, pixels = _accumulate(keras_predict, exported, examples, num_classes,
                                                         ignore_label)
    keras_scores = scores_from_confusion_matrix(keras_cm.confusion_matrix())
    report: Dict[str, Any] = {
        "num_images": len(examples),
        "num_pixels": int(pixels),
        "keras": {"mean_iu": _f(keras_scores["mean_iu"]),
                  "iu": {c: _f(v) for c, v in zip(class_names, keras_scores["iu"])}},
        "formats": {},
    }
    for name in exported:
        report["formats"][name] = _format_report(cms[name], agree[name], max_diff[name], keras_scores, class_names)
    return report


def _accumulate(keras_predict: Predictor, exported: Mapping[str, Predictor],
                examples: Sequence[Tuple[np.ndarray, np.ndarray]], num_classes: int, ignore_label: int):
    """Runs every predictor over ``examples``; returns ``(keras_cm, cms, agree, max_diff, pixels)``:
    Keras's confusion metric; by export name, its confusion metric, its ``(C, C)`` agreement
    with Keras and its largest probability difference; and the number of pixels compared."""
    keras_cm = StreamingConfusionMatrixMetric(num_classes, ignore_label)
    cms = {name: StreamingConfusionMatrixMetric(num_classes, ignore_label) for name in exported}
    agree = {name: np.zeros((num_classes, num_classes), np.int64) for name in exported}
    max_diff = {name: 0.0 for name in exported}
    pixels = 0
    for image, label in examples:
        want = (*image.shape[:2], num_classes)
        ref = np.asarray(keras_predict(image))
        ref_ids = ref.argmax(-1)
        keras_cm.update_state(label[None], ref_ids[None])
        pixels += ref_ids.size
        for name, predict in exported.items():
            probs = np.asarray(predict(image))
            if probs.shape != want:
                raise ValueError(f"{name} returned probabilities {probs.shape} for an image of {image.shape[:2]}; expected {want}.")
            ids = probs.argmax(-1)
            cms[name].update_state(label[None], ids[None])
            agree[name] += _agreement_matrix(ref_ids, ids, num_classes)
            max_diff[name] = max(max_diff[name], float(np.abs(probs - ref).max()))
    return keras_cm, cms, agree, max_diff, pixels


def _format_report(cm: StreamingConfusionMatrixMetric, a: np.ndarray, max_diff: float, keras_scores: Dict[str, Any],
                   class_names: Sequence[str]) -> Dict[str, Any]:
    """One export's entry of the report, from its confusion ``cm`` and agreement matrix ``a`` with Keras."""
    scores = scores_from_confusion_matrix(cm.confusion_matrix())
    rows = a.sum(axis=1)
    per_class = {}
    for c, cname in enumerate(class_names):
        ik, ie = keras_scores["iu"][c], scores["iu"][c]
        per_class[cname] = {
            "keras_pixels": int(rows[c]),
            "agreement": _f(100.0 * a[c, c] / rows[c]) if rows[c] else None,
            "iou_keras": _f(ik),
            "iou_exported": _f(ie),
            "iou_drop": _f(ik - ie),
        }
    return {
        "mean_iu": _f(scores["mean_iu"]),
        "iu": {c: _f(v) for c, v in zip(class_names, scores["iu"])},
        "agreement": 100.0 * float(np.trace(a)) / float(a.sum()),
        "max_abs_prob_diff": max_diff,
        "per_class": per_class,
    }


def worst_classes(per_class: Mapping[str, Mapping[str, Any]], k: int = 3) -> List[Tuple[str, Mapping[str, Any]]]:
    """The ``k`` classes with the lowest agreement (then the largest IoU drop) that lost any."""
    def key(item):
        v = item[1]
        agreement = v["agreement"] if v["agreement"] is not None else 100.0
        return (agreement, -(v["iou_drop"] or 0.0))

    ranked = sorted(per_class.items(), key=key)
    return [(c, v) for c, v in ranked if (v["agreement"] is not None and v["agreement"] < 100.0)
            or (v["iou_drop"] or 0.0) > 0][:k]


def _num(v: Optional[float], fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def format_table(report: Mapping[str, Any], sizes_mb: Mapping[str, float]) -> str:
    """The parity table: format, size MB, mIoU keras, mIoU exported, agreement %, max |dp|."""
    head = f"{'format':<16}{'size MB':>9}{'mIoU keras':>12}{'mIoU export':>13}{'agree %':>10}{'max |dp|':>11}"
    lines = [head, "-" * len(head)]
    miou_k = report["keras"]["mean_iu"]
    for name, r in report["formats"].items():
        lines.append(
            f"{name:<16}{sizes_mb.get(name, float('nan')):>9.3f}{_num(miou_k, '.4f'):>12}"
            f"{_num(r['mean_iu'], '.4f'):>13}{r['agreement']:>10.2f}{r['max_abs_prob_diff']:>11.2e}"
        )
    return "\n".join(lines)


def _advice(name: str) -> str:
    if name == "saved_model":
        return "The SavedModel runs the Keras graph itself and should agree exactly: this is a bug, report it."
    if name.endswith("int8"):
        return ("int8 quantisation costs this much here: deploy tflite_fp16 or tflite_dynamic instead, or "
                "calibrate on more or more representative data (--int8_samples, --int8_split).")
    return ("Compare with the tflite_fp32 row: what fp32 loses comes from the fixed input size "
            "(--tflite_size, --tflite_fit), not from quantisation; export closer to the image size.")


def warnings_for(report: Mapping[str, Any], threshold: float) -> List[str]:
    """One WARNING block per export whose agreement is under ``threshold`` percent."""
    blocks = []
    for name, r in report["formats"].items():
        if r["agreement"] >= threshold:
            continue
        bar = "!" * 78
        lines = [bar, f"WARNING: {name} agrees with Keras on only {r['agreement']:.2f}% of pixels "
                      f"(threshold {threshold:.1f}%).",
                 f"  mean IoU keras {_num(report['keras']['mean_iu'], '.4f')} -> {name} {_num(r['mean_iu'], '.4f')}."]
        worst = worst_classes(r["per_class"])
        if worst:
            lines.append("  Worst classes (agreement of the pixels Keras assigns to the class; IoU keras -> export):")
            for cname, v in worst:
                lines.append(f"    {cname:<20} agreement {_num(v['agreement'], '6.2f')}%   IoU "
                             f"{_num(v['iou_keras'], '.4f')} -> {_num(v['iou_exported'], '.4f')} "
                             f"(drop {_num(v['iou_drop'], '+.4f')})")
        lines.append(f"  {_advice(name)}")
        lines.append(bar)
        blocks.append("\n".join(lines))
    return blocks
