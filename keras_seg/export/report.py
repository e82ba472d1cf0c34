"""The parity report of an export: each written format against the Keras model it came from
(:mod:`keras_seg.parity`), as ``parity.json`` and the printed table ``parity.txt``."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Tuple

from keras_seg.export.config import SAVED_MODEL, ExportConfig, ExportPlan


def _keras_predictor(model, preprocessing: str):
    """The parity report's reference: the Keras model through :mod:`keras_seg.inference`'s
    whole-image pass, as evaluate and predict run it."""
    from keras_seg.inference import make_probabilities  # pylint: disable=import-outside-toplevel
    from keras_seg.predict import predict_batch  # pylint: disable=import-outside-toplevel

    probs = make_probabilities(model)
    return lambda image: predict_batch(model, [image], preprocessing, None, probs)[0][1]


def _saved_model_predictor(path: str):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    fn = tf.saved_model.load(path).signatures["serving_default"]
    return lambda image: np.asarray(fn(images=tf.constant(image[None]))["probabilities"][0])


def _export_predictors(staged: Dict[str, str], cfg: ExportConfig) -> Dict[str, Callable[[Any], Any]]:
    """Format -> predictor of each staged export, the SavedModel first."""
    from keras_seg.litert import TFLiteSegmenter  # pylint: disable=import-outside-toplevel

    predictors = {}
    if SAVED_MODEL in staged:
        predictors[SAVED_MODEL] = _saved_model_predictor(staged[SAVED_MODEL])
    for fmt, path in staged.items():
        if fmt != SAVED_MODEL:
            seg = TFLiteSegmenter(path)
            predictors[fmt] = lambda im, seg=seg: seg.probabilities(im, cfg.tflite_fit, cfg.tile_overlap)
    return predictors


def write_parity_report(model, metadata: Dict[str, Any], config: Dict[str, Any], cfg: ExportConfig,
                        plan: ExportPlan, ckpt: str, staged: Dict[str, str], sizes: Dict[str, float],
                        stage_extras: str, log: Callable[[str], None]) -> Tuple[Dict[str, Any], str, List[str]]:
    """Compares the staged exports with ``model`` on ``cfg.parity_images`` images of the parity split.

    Args:
      model: the float32 Keras model exported.
      metadata: its :func:`~keras_seg.export.saved_model.model_metadata`.
      config: the run's ``model_config.json``.
      cfg: the export's settings.
      plan: the export's resolved name, version and places.
      ckpt: the checkpoint exported.
      staged: format -> staged path of each export.
      sizes: format -> size in MB of each export.
      stage_extras: the staging directory of ``parity.json`` and ``parity.txt``.
      log: printer of the table and its warnings.

    Returns:
      ``(report, report_path, warnings)``: the report dict, where its JSON will be once
      published (in ``plan.extras_dir``) and the WARNING blocks printed.
    """
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel
    from keras_seg.parity import compare, format_table, read_examples, warnings_for  # pylint: disable=import-outside-toplevel

    size, tflite_kinds = plan.size, plan.tflite_kinds
    examples = list(read_examples(plan.data_dir, cfg.parity_split, cfg.parity_images))
    predictors = _export_predictors(staged, cfg)
    report = compare(_keras_predictor(model, metadata["preprocessing"]["mode"]), predictors, examples, config["num_classes"],
                     int(config["ignore_label"]), config["class_names"])
    for fmt in report["formats"]:
        report["formats"][fmt]["size_mb"] = sizes[fmt]
    report.update({
        "model_dir": os.path.abspath(cfg.model_dir), "checkpoint": ckpt, "model_name": plan.name,
        "version": plan.version, "data_dir": os.path.abspath(plan.data_dir), "split": cfg.parity_split,
        "tflite_size": list(size) if tflite_kinds else None, "tflite_fit": cfg.tflite_fit,
        "tile_overlap": cfg.tile_overlap, "warn_below": cfg.warn_below,
    })
    table = format_table(report, sizes)
    warnings = warnings_for(report, cfg.warn_below)
    report["warnings"] = warnings
    header = (f"Parity on {len(examples)} images of {plan.data_dir} split {cfg.parity_split!r} "
              f"(TFLite {size[0]}x{size[1]}, fit={cfg.tflite_fit}):" if tflite_kinds else
              f"Parity on {len(examples)} images of {plan.data_dir} split {cfg.parity_split!r}:")
    text = "\n".join([header, table, *warnings])
    atomic_write_json(os.path.join(stage_extras, "parity.json"), report)
    with open(os.path.join(stage_extras, "parity.txt"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    log(text)
    return report, os.path.join(plan.extras_dir, "parity.json"), warnings
