"""The streaming confusion-matrix metric against the seed's `_fast_hist` definitions."""

import numpy as np
import pytest

from keras_seg.metrics import StreamingConfusionMatrixMetric, scores_from_confusion_matrix


def _fast_hist(label_true, label_pred, n_class):
    # Verbatim logic of the seed notes (000_*.txt), the reference definition.
    mask = (label_true >= 0) & (label_true < n_class)
    return np.bincount(
        n_class * label_true[mask].astype(int) + label_pred[mask], minlength=n_class**2
    ).reshape(n_class, n_class)


def _seed_scores(hist):
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(axis=1))
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        mean_iu = np.nanmean(iu)
        freq = hist.sum(axis=1) / hist.sum()
        fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    return acc, acc_cls, iu, mean_iu, fwavacc


def test_golden_mean_iou_7_over_12():
    m = StreamingConfusionMatrixMetric(num_classes=3, ignore_label=2)
    m.update_state(np.array([[0, 0, 1, 1, 2]]), np.array([[0, 1, 1, 1, 0]]))
    assert float(m.result()["mean_iu"]) == pytest.approx(7 / 12)


def test_streaming_matches_seed_over_batches_with_ignore_and_absent_class():
    rng = np.random.default_rng(0)
    n = 5
    m = StreamingConfusionMatrixMetric(num_classes=n, ignore_label=255)
    trues, preds = [], []
    for _ in range(3):
        t = rng.integers(0, n - 1, size=(2, 9, 11))  # class 4 never in truth
        t[rng.random(t.shape) < 0.2] = 255
        p = rng.integers(0, n - 1, size=t.shape)  # ... nor predicted -> NaN IoU
        logits = np.eye(n, dtype="float32")[p] * 5  # logits path
        m.update_state(t, logits)
        trues.append(t)
        preds.append(p)
    hist = _fast_hist(np.concatenate(trues).ravel(), np.concatenate(preds).ravel(), n)
    acc, acc_cls, iu, mean_iu, fwavacc = _seed_scores(hist)
    np.testing.assert_array_equal(m.confusion_matrix(), hist)
    r = {k: np.asarray(v) for k, v in m.result().items()}
    assert np.isnan(r["iu"][4]) and np.isnan(iu[4])
    np.testing.assert_allclose(r["iu"][:4], iu[:4], rtol=1e-12)
    for got, want in ((r["acc"], acc), (r["acc_cls"], acc_cls), (r["mean_iu"], mean_iu), (r["fwavacc"], fwavacc)):
        assert float(got) == pytest.approx(float(want), rel=1e-12)
    py = scores_from_confusion_matrix(hist)
    assert py["mean_iu"] == pytest.approx(float(mean_iu)) and py["fwavacc"] == pytest.approx(float(fwavacc))


def test_class_predicted_but_absent_counts_as_zero():
    m = StreamingConfusionMatrixMetric(num_classes=3, ignore_label=255)
    m.update_state(np.array([[0, 0, 0, 1]]), np.array([[0, 2, 0, 1]]))
    r = m.result()
    assert float(r["iu"][2]) == 0.0  # predicted, never true: IoU 0, included in the mean
    assert float(r["mean_iu"]) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_reset_and_bad_args():
    m = StreamingConfusionMatrixMetric(num_classes=2)
    m.update_state(np.array([[0, 1]]), np.array([[0, 1]]))
    m.reset_state()
    assert np.all(m.confusion_matrix() == 0)
    with pytest.raises(ValueError, match="num_classes"):
        StreamingConfusionMatrixMetric(num_classes=0)


def test_best_constant_prediction():
    from keras_seg.metrics import best_constant_prediction

    hist = np.array([[70, 10, 0], [5, 10, 0], [0, 0, 5]])  # truth rows: 80, 15, 5 pixels
    c, scores = best_constant_prediction(hist)
    assert c == 0
    assert scores["mean_iu"] == pytest.approx(0.8 / 3) and scores["acc"] == pytest.approx(0.8)
