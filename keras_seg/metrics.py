"""Streaming confusion-matrix metrics: acc, acc_cls, mean_iu, fwavacc and per-class IoU.

The definitions are FCN's ``_fast_hist`` evaluation (rows: ground truth, columns:
prediction)::

    acc      = diag(hist).sum() / hist.sum()
    acc_cls  = nanmean(diag(hist) / hist.sum(axis=1))
    iu       = diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - diag(hist))
    mean_iu  = nanmean(iu)
    freq     = hist.sum(axis=1) / hist.sum()
    fwavacc  = (freq[freq > 0] * iu[freq > 0]).sum()

Classes absent from both truth and prediction have NaN IoU and are left out of the means;
ignored pixels (and labels outside ``[0, num_classes)``) are never counted.
"""

from __future__ import annotations

from typing import Dict

import keras
import numpy as np
import tensorflow as tf

__all__ = ["StreamingConfusionMatrixMetric", "scores_from_confusion_matrix"]


def scores_from_confusion_matrix(hist) -> Dict[str, object]:
    """Computes the FCN scores from a ``(C, C)`` confusion matrix (NumPy, float64)."""
    hist = np.asarray(hist, np.float64)
    diag = np.diag(hist)
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = diag.sum() / total if total else float("nan")
        acc_cls = diag / hist.sum(axis=1)
        iu = diag / (hist.sum(axis=1) + hist.sum(axis=0) - diag)
        freq = hist.sum(axis=1) / total if total else np.zeros_like(diag)
    valid_iu = iu[~np.isnan(iu)]
    valid_acc = acc_cls[~np.isnan(acc_cls)]
    return {
        "acc": float(acc),
        "acc_cls": float(valid_acc.mean()) if valid_acc.size else float("nan"),
        "mean_iu": float(valid_iu.mean()) if valid_iu.size else float("nan"),
        "fwavacc": float((freq[freq > 0] * iu[freq > 0]).sum()),
        "iu": iu,
    }


@keras.saving.register_keras_serializable(package="keras_seg")
class StreamingConfusionMatrixMetric(keras.metrics.Metric):
    """A Keras metric that accumulates a confusion matrix, summed across replicas.

    Args:
      num_classes: number of classes.
      ignore_label: label whose pixels are not counted.
      name: metric name.

    ``update_state(y_true, y_pred)`` takes integer labels ``(B, H, W)`` (or ``(B, H, W, 1)``)
    and logits or probabilities ``(B, H, W, C)`` (argmax is taken) or class ids ``(B, H, W)``.
    ``result()`` returns a dict of ``acc``, ``acc_cls``, ``mean_iu``, ``fwavacc`` (scalars)
    and ``iu`` (per class), NaN-aware as in FCN's evaluation.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, name: str = "confusion_matrix", **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1. Received: num_classes={num_classes!r}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        # float64 counts stay exact to 2**53 pixels (int32 overflows on Cityscapes val).
        self.total_cm = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype="float64",
            aggregation="sum", name="total_cm",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("StreamingConfusionMatrixMetric does not take sample_weight.")
        y_true = tf.cast(tf.convert_to_tensor(y_true), tf.int32)
        y_pred = tf.convert_to_tensor(y_pred)
        if y_true.shape.rank == 4:
            y_true = y_true[..., 0]
        if y_pred.shape.rank == y_true.shape.rank + 1:
            y_pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        y_pred = tf.cast(y_pred, tf.int32)
        n = self.num_classes
        valid = (y_true >= 0) & (y_true < n) & tf.not_equal(y_true, self.ignore_label)
        idx = tf.boolean_mask(n * y_true + tf.clip_by_value(y_pred, 0, n - 1), valid)
        counts = tf.math.bincount(idx, minlength=n * n, maxlength=n * n, dtype=tf.int64)
        self.total_cm.assign_add(tf.cast(tf.reshape(counts, (n, n)), tf.float64))

    def confusion_matrix(self) -> np.ndarray:
        """The accumulated matrix as a NumPy array (rows: truth, columns: prediction)."""
        return np.asarray(keras.ops.convert_to_numpy(self.total_cm))

    def result(self):
        cm = tf.convert_to_tensor(self.total_cm)
        diag = tf.linalg.diag_part(cm)
        rows = tf.reduce_sum(cm, 1)
        cols = tf.reduce_sum(cm, 0)
        total = tf.reduce_sum(cm)
        nan = tf.constant(np.nan, tf.float64)

        def nanmean(v):
            ok = tf.logical_not(tf.math.is_nan(v))
            cnt = tf.reduce_sum(tf.cast(ok, tf.float64))
            s = tf.reduce_sum(tf.where(ok, v, tf.zeros_like(v)))
            return tf.where(cnt > 0, s / tf.maximum(cnt, 1.0), nan)

        acc_cls = diag / rows  # 0/0 -> NaN
        iu = diag / (rows + cols - diag)
        freq = tf.where(total > 0, rows / total, tf.zeros_like(rows))
        fw = tf.reduce_sum(tf.where(freq > 0, freq * tf.where(tf.math.is_nan(iu), tf.zeros_like(iu), iu), tf.zeros_like(iu)))
        return {
            "acc": tf.where(total > 0, tf.reduce_sum(diag) / total, nan),
            "acc_cls": nanmean(acc_cls),
            "mean_iu": nanmean(iu),
            "fwavacc": fw,
            "iu": iu,
        }

    def reset_state(self):
        self.total_cm.assign(tf.zeros_like(self.total_cm))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_label": self.ignore_label}


def best_constant_prediction(hist):
    """Scores of the best constant predictor for a confusion matrix's ground truth.

    Predicting class ``c`` everywhere gives ``IoU_c = rows[c] / total`` and IoU 0 for every
    other class present in the truth; returns ``(c, scores)`` for the ``c`` with the highest
    mean IoU: the baseline a trained model must clearly beat.
    """
    hist = np.asarray(hist, np.float64)
    rows = hist.sum(axis=1)
    best = None
    for c in range(hist.shape[0]):
        const = np.zeros_like(hist)
        const[:, c] = rows
        scores = scores_from_confusion_matrix(const)
        if best is None or scores["mean_iu"] > best[1]["mean_iu"]:
            best = (c, scores)
    return best
