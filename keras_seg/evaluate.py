r"""Evaluates a trained model on a dataset split and prints per-class IoU.

    python -m keras_seg.evaluate --model_dir=runs/unet_shapes [--split=val]
        [--data_dir=DIR] [--checkpoint=latest|best|PATH] [--batch_size=1]
        [--mixed_precision=float32|bfloat16|float16]
        [--mode=whole|slide --window=H,W --stride=H,W] [--scales=0.5,0.75,1,1.25,1.5,1.75] [--flip]
        [--group_by=sequence]

Writes ``<model_dir>/eval/evaluate-<split>-<step><mode>.json`` (or ``--out``; ``<mode>`` is
empty for one whole-image pass, else e.g. ``-s0.5_1_1.5-flip``) and, with matplotlib, the
``-confusion.png``, ``-iou.png`` and ``-sheet.png`` pictures beside it (``--nopictures``: none).
``--group_by=FIELD`` also scores each group of images sharing a field of the records' metadata
(CamVid: ``sequence``, the drive; Cityscapes: ``city``), prints a row per group and adds them to
the JSON as ``groups``.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")




def run(model_dir: str, split: str = "val", data_dir: str = None, checkpoint: str = "latest",
        batch_size: int = 1, out: str = None, log=print, jit_compile: bool = False,
        mixed_precision: str = "float32", inference=None, pictures: bool = True, sheet_images: int = 4,
        inference_options=None, group_by: str = None):
    """Evaluates and returns ``(scores, record)``; ``record`` is what is written as JSON.

    ``inference_options`` (e.g. ``{"head": "L2"}``) selects another inference graph of the
    same trained variables (:func:`keras_seg.checkpoints.inference_model`), such as a pruned
    U-Net++; the record and the JSON's name note it.

    ``inference`` (:class:`keras_seg.inference.InferenceConfig`, default whole image) picks
    sliding windows, multi-scale and flip; the record notes it.

    ``group_by`` (a field of the records' ``image/meta``, e.g. ``"sequence"``) also scores each
    group of images sharing its value; the record's ``groups`` holds them
    (:func:`keras_seg.training.evaluate`).

    ``jit_compile`` runs the forward pass under XLA (compiled once per batch shape).
    ``mixed_precision`` (``float32``, ``bfloat16`` or ``float16``) is the compute precision
    of the forward pass, whatever the run was trained under (:mod:`keras_seg.precision`);
    the record notes it.

    With ``pictures`` (and matplotlib installed) it also writes, next to the JSON, a
    row-normalised confusion matrix (``-confusion.png``), per-class IoU bars (``-iou.png``)
    and a sheet of the split's first ``sheet_images`` images as image | ground truth |
    prediction | errors (``-sheet.png``).
    """
    from keras_seg.checkpoints import load_trained_model, model_preprocessing  # pylint: disable=import-outside-toplevel
    from keras_seg.data.pipeline import DataConfig, make_dataset  # pylint: disable=import-outside-toplevel
    from keras_seg.training import evaluate, format_group_table, scores_to_json  # pylint: disable=import-outside-toplevel

    from keras_seg.precision import check_precision  # pylint: disable=import-outside-toplevel

    from keras_seg.inference import InferenceConfig  # pylint: disable=import-outside-toplevel
    from keras_seg.layout import ModelDir  # pylint: disable=import-outside-toplevel

    check_precision(mixed_precision)
    inference = (inference or InferenceConfig()).validate()
    model, config, path = load_trained_model(model_dir, checkpoint, mixed_precision=mixed_precision,
                                             inference_options=inference_options)
    data_dir = data_dir or config["data_dir"]
    manifest = _checked_manifest(data_dir, config)
    ds = make_dataset(DataConfig(data_dir=data_dir, split=split, batch_size=batch_size, training=False,
                                 preprocessing=model_preprocessing(config), with_meta=group_by is not None))
    log(f"Evaluating {path} on {data_dir} split {split!r}"
        f"{'' if mixed_precision == 'float32' else f' in {mixed_precision}'} ({inference.describe()}) ...")
    scores = evaluate(model, ds, config["num_classes"], int(manifest["ignore_label"]), log=log,
                      jit_compile=jit_compile, inference=inference, group_by=group_by)
    step = int(path.rsplit("-", 1)[-1]) if path.rsplit("-", 1)[-1].isdigit() else 0
    record = scores_to_json(scores, manifest["class_names"], step)
    record.update({"checkpoint": path, "split": split, "data_dir": os.path.abspath(data_dir),
                   "mixed_precision": mixed_precision, "inference": dataclasses.asdict(inference),
                   "inference_options": dict(inference_options or {}),
                   **({"group_by": group_by} if group_by is not None else {})})
    options_tag = "".join(f"-{k}_{v}" for k, v in sorted((inference_options or {}).items()))
    out = out or ModelDir(model_dir).evaluate_json(split, step, inference.tag() + options_tag)
    _write_record(out, record, scores, manifest["class_names"], log)
    if group_by is not None:
        log(f"per {group_by} (%):\n{format_group_table(scores, manifest['class_names'], group_by)}")
    if pictures:
        write_pictures(model, config, data_dir, split, scores, out, inference, sheet_images, log)
    return scores, record


def _checked_manifest(data_dir: str, config):
    """The manifest of ``data_dir``, refused when its classes are not the model's."""
    from keras_seg.data.manifest import load_manifest  # pylint: disable=import-outside-toplevel

    manifest = load_manifest(data_dir)
    if manifest["num_classes"] != config["num_classes"]:
        raise ValueError(
            f"{data_dir} has num_classes={manifest['num_classes']} but the model was trained with "
            f"{config['num_classes']}. Pass the --data_dir the model was trained for."
        )
    return manifest


def _write_record(out: str, record, scores, class_names, log=print) -> None:
    """Writes ``record`` to ``out``, prints the IoU table, then adds the best constant prediction."""
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel
    from keras_seg.metrics import best_constant_prediction  # pylint: disable=import-outside-toplevel
    from keras_seg.training import format_iou_table  # pylint: disable=import-outside-toplevel

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write_json(out, record)
    log(format_iou_table(scores, class_names))
    const_class, const = best_constant_prediction(scores["confusion_matrix"])
    record["constant_baseline"] = {"class": class_names[const_class], "mean_iu": const["mean_iu"],
                                   "acc": const["acc"]}
    atomic_write_json(out, record)
    log(f"best constant prediction (always {class_names[const_class]!r}): "
        f"mean_iu {const['mean_iu']:.4f}  acc {const['acc']:.4f}")
    log(f"wrote {out}")


def write_pictures(model, config, data_dir: str, split: str, scores, out_json: str, inference,
                   sheet_images: int, log=print) -> None:
    """The confusion-matrix, IoU-bar and image-sheet PNGs of :func:`run` (skipped, with a note,
    without matplotlib)."""
    from keras_seg.checkpoints import model_preprocessing  # pylint: disable=import-outside-toplevel
    from keras_seg.inference import make_probabilities  # pylint: disable=import-outside-toplevel
    from keras_seg.parity import read_examples  # pylint: disable=import-outside-toplevel
    from keras_seg.plot import confusion_png, iou_bars_png, pyplot, sheet_png  # pylint: disable=import-outside-toplevel
    from keras_seg.predict import predict_keras  # pylint: disable=import-outside-toplevel

    try:
        pyplot()
    except ValueError as e:
        log(f"pictures skipped: {e}")
        return
    stem = os.path.splitext(out_json)[0]
    names = config["class_names"]
    what = f"{config['model']} on {split} ({inference.describe()})"
    paths = [f"{stem}-confusion.png", f"{stem}-iou.png"]
    confusion_png(scores["confusion_matrix"], names, paths[0], f"{what}: % of each true class")
    iou_bars_png(scores["iu"], names, paths[1], f"{what}: per-class IoU")
    if sheet_images > 0:
        probs = make_probabilities(model)
        rows = [(image, label, predict_keras(model, image, model_preprocessing(config), inference, probs))
                for image, label in read_examples(data_dir, split, sheet_images)]
        paths.append(f"{stem}-sheet.png")
        sheet_png(rows, config["palette"], int(config["ignore_label"]), paths[-1], what)
    log(f"wrote {', '.join(paths)}")


if __name__ == "__main__":
    from keras_seg.commands.evaluate import run_command  # pylint: disable=import-outside-toplevel

    run_command()
