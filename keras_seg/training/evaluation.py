"""Evaluation: the confusion-matrix scores of a model over a dataset, their table and JSON, and
the eval pictures training writes to TensorBoard. Used by training and by ``keras_seg.evaluate``."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from keras_seg.data.features import meta_field
from keras_seg.distribute import num_workers, sum_over_workers
from keras_seg.inference import InferenceConfig, make_probabilities, predict_probabilities
from keras_seg.metrics import StreamingConfusionMatrixMetric, scores_from_confusion_matrix
from keras_seg.training.summaries import write_png


def evaluate(model: keras.Model, dataset: tf.data.Dataset, num_classes: int, ignore_label: int,
             log: Optional[Callable[[str], None]] = None,
             strategy: Optional[tf.distribute.Strategy] = None, jit_compile: bool = False,
             inference: Optional[InferenceConfig] = None, group_by: Optional[str] = None) -> Dict[str, Any]:
    """Runs ``model`` over ``dataset`` and returns the FCN scores plus the confusion matrix.

    ``inference`` (:class:`keras_seg.inference.InferenceConfig`) chooses sliding windows,
    multi-scale and flip; ``None`` is one whole-image pass.

    ``group_by`` (a field of the records' ``image/meta``, e.g. ``"sequence"`` for CamVid or
    ``"city"`` for Cityscapes) also scores each group of images that share the field's value.
    The dataset must then come from ``DataConfig(with_meta=True)``. ``scores["groups"]`` maps
    each value, in sorted order, to that group's scores with its ``num_images`` and
    ``confusion_matrix``; the groups' matrices sum to the whole's.

    The model runs on this process alone, outside ``strategy.run``, so no collective op is
    involved. With a multi-worker ``strategy`` each worker passes its own shard of the data,
    and the confusion matrices are summed over the workers at the end (one collective, so
    every worker must call this; ``group_by`` is refused there). ``jit_compile`` runs the
    forward pass under XLA, which compiles once per distinct batch shape: use it where the
    images share one size.
    """
    if group_by is not None and strategy is not None and num_workers(strategy) > 1:
        raise ValueError(f"group_by={group_by!r} scores one process's images; evaluate on a single worker.")
    metric = StreamingConfusionMatrixMetric(num_classes, ignore_label)

    def forward(images):
        out = model(images, training=False)
        return out[0] if isinstance(out, (list, tuple)) else out

    if jit_compile:
        forward = tf.function(forward, jit_compile=True)

    if inference is None or inference.plain:
        # reduce_retracing: after two image sizes the graph takes any size, instead of one
        # trace per size (VOC's val split has hundreds of sizes).
        @tf.function(reduce_retracing=True)
        def step(images, labels):
            metric.update_state(labels, forward(images))

        @tf.function(reduce_retracing=True)
        def classes(images):
            return tf.argmax(forward(images), axis=-1, output_type=tf.int32)
    else:  # Python loops over windows, scales and flips
        probs = make_probabilities(model)

        def step(images, labels):
            metric.update_state(labels, predict_probabilities(model, images, inference, probs))

        def classes(images):
            return tf.argmax(predict_probabilities(model, images, inference, probs), axis=-1, output_type=tf.int32)

    groups: Dict[str, Any] = {}

    def grouped_step(images, labels, keys, metas):  # the groups' matrices, summed after the loop, are the whole's
        pred = classes(images)
        for i, (key, meta) in enumerate(zip(keys.numpy(), metas.numpy())):
            value = meta_field(meta, key, group_by)
            if value not in groups:
                groups[value] = [StreamingConfusionMatrixMetric(num_classes, ignore_label), 0]
            groups[value][0].update_state(labels[i:i + 1], pred[i:i + 1])
            groups[value][1] += 1

    n = 0
    start = time.time()
    for batch in dataset:
        if group_by is None:
            step(batch[0], batch[1])
        elif len(batch) < 5:
            raise ValueError(f"group_by={group_by!r} needs each record's image/meta: build the dataset with "
                             f"DataConfig(..., with_meta=True).")
        else:
            grouped_step(batch[0], batch[1], batch[3], batch[4])
        n += int(batch[0].shape[0])
    if group_by is None:
        cm = metric.confusion_matrix()
    else:
        group_cms = {value: groups[value][0].confusion_matrix() for value in sorted(groups)}
        cm = sum(group_cms.values(), np.zeros((num_classes, num_classes), np.int64))
    if strategy is not None and num_workers(strategy) > 1:
        total = sum_over_workers(strategy, np.append(np.asarray(cm, np.int64).ravel(), n))
        cm, n = total[:-1].reshape(np.shape(cm)), int(total[-1])
    scores = scores_from_confusion_matrix(cm)
    if log:
        log(f"evaluated {n} images in {time.time() - start:.1f}s")
    scores["num_images"] = n
    scores["confusion_matrix"] = cm
    traced = classes if group_by is not None else step
    scores["traces"] = (int(traced.experimental_get_tracing_count())
                        if hasattr(traced, "experimental_get_tracing_count") else None)
    if group_by is not None:
        scores["groups"] = {}
        for value, group_cm in group_cms.items():
            scores["groups"][value] = {**scores_from_confusion_matrix(group_cm), "num_images": groups[value][1],
                                       "confusion_matrix": group_cm}
    return scores


def write_eval_images(model: keras.Model, model_config: Dict[str, Any], data_dir: str, split: str,
                      scores: Dict[str, Any], step: int, count: int, samples: List[Any],
                      log: Callable[[str], None]) -> None:
    """TensorBoard images of one evaluation, into the default summary writer: the image sheet
    of the split's first ``count`` images (image | truth | prediction | errors) and the
    confusion matrix (:mod:`keras_seg.plot`). Without matplotlib, says so once and writes none."""
    from keras_seg.plot import confusion_png, pyplot, sheet_png  # pylint: disable=import-outside-toplevel
    from keras_seg.parity import read_examples  # pylint: disable=import-outside-toplevel

    try:
        pyplot()
    except ValueError as e:
        if not samples:
            log(f"TensorBoard eval images skipped: {e}")
            samples.append(None)
        return
    if not samples:
        samples.extend(read_examples(data_dir, split, count))
    if samples[0] is None:
        return
    from keras_seg.inference import make_probabilities  # pylint: disable=import-outside-toplevel
    from keras_seg.predict import predict_keras  # pylint: disable=import-outside-toplevel

    probs = make_probabilities(model)  # the training model: its first output is the logits
    rows = [(image, label, predict_keras(model, image, model_config["preprocessing"], probs=probs))
            for image, label in samples]
    what = f"{model_config['model']} step {step}"
    for name, png in (("eval/sheet", sheet_png(rows, model_config["palette"], int(model_config["ignore_label"]),
                                              title=what)),
                      ("eval/confusion_matrix", confusion_png(scores["confusion_matrix"], model_config["class_names"],
                                                              title=f"{what}: % of each true class"))):
        write_png(name, png, step)


def format_iou_table(scores: Dict[str, Any], class_names: List[str]) -> str:
    """A per-class IoU table followed by the four FCN scores."""
    width = max([len(c) for c in class_names] + [8])
    lines = [f"{'class':<{width}}  IoU", f"{'-' * width}  ------"]
    for name, iu in zip(class_names, scores["iu"]):
        lines.append(f"{name:<{width}}  {'   n/a' if np.isnan(iu) else f'{iu:6.4f}'}")
    lines.append(f"{'-' * width}  ------")
    for k in ("mean_iu", "acc", "acc_cls", "fwavacc"):
        lines.append(f"{k:<{width}}  {scores[k]:6.4f}")
    return "\n".join(lines)


def format_group_table(scores: Dict[str, Any], class_names: List[str], group_by: str) -> str:
    """One row per group of :func:`evaluate`'s ``scores["groups"]`` and one for all images:
    images, mean IoU, pixel and class accuracy, then each class's IoU, all in %."""
    rows = [(value, g) for value, g in scores["groups"].items()] + [("all", scores)]
    first = max([len(group_by)] + [len(value) for value, _ in rows])
    heads = ["images", "mean_iu", "acc", "acc_cls"] + list(class_names)
    widths = [max(len(h), 6) for h in heads]

    def pct(v):
        return "n/a" if v is None or np.isnan(v) else f"{100 * v:.1f}"

    lines = [f"{group_by:<{first}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(heads, widths))]
    for value, g in rows:
        cells = [str(g["num_images"]), pct(g["mean_iu"]), pct(g["acc"]), pct(g["acc_cls"])]
        cells += [pct(v) for v in g["iu"]]
        lines.append(f"{value:<{first}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    return "\n".join(lines)


def scores_to_json(scores: Dict[str, Any], class_names: List[str], step: int) -> Dict[str, Any]:
    """A JSON-safe record of an evaluation (NaN IoUs become null), with its ``groups`` if it has them."""
    def f(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return {
        "step": int(step),
        "num_images": int(scores.get("num_images", 0)),
        **{k: f(scores[k]) for k in ("acc", "acc_cls", "mean_iu", "fwavacc")},
        "iu": {name: f(float(v)) for name, v in zip(class_names, scores["iu"])},
        "confusion_matrix": np.asarray(scores["confusion_matrix"]).astype(np.int64).tolist(),
        **({"groups": {value: {k: v for k, v in scores_to_json(g, class_names, step).items() if k != "step"}
                       for value, g in scores["groups"].items()}} if "groups" in scores else {}),
    }
