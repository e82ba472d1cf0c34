r"""Exports a trained Mask R-CNN: a serving SavedModel, a builtin-ops TFLite model and a parity report.

    python -m keras_seg.detection.export --model_dir=runs/x --out_dir=exported [--checkpoint=best] \
        [--notflite] [--parity_images=4] [--parity_split=val] [--data_dir=DIR]

Writes to ``--out_dir``:

* ``saved_model/``: signatures ``serving_default`` (``images`` uint8 ``[B, H, W, 3]`` RGB at
  the model's static input size ``H x W``, from ``model_config.json``'s ``image_size``) and
  ``serving_float`` (the same as float32 in 0..255). Both normalise inside the graph and
  return ``boxes`` float32 ``[B, D, 4]`` (``[y1, x1, y2, x2]`` input pixels), ``classes``
  int32 ``[B, D]`` (1..K, -1 padding), ``scores`` float32 ``[B, D]`` and ``masks`` float32
  ``[B, D, H, W]``: each detection's mask probabilities pasted into its box at the input
  size (threshold at 0.5). Images of another size are resized keeping their aspect ratio
  and padded at the bottom and right first, as :func:`keras_seg.detection.evaluation.prepare_image`
  does. ``saved_model/assets.extra/keras_seg_metadata.json`` holds the class names, palette,
  input size and preprocessing.
* ``model.tflite`` (+ ``model.json`` sidecar): the same graph with a batch of 1 and uint8
  input, converted with ``TFLITE_BUILTINS`` only. When the converter refuses, the export
  goes on and ``tflite_error.txt`` and the report name the ops that stop it.
* ``parity.json``: Keras against the SavedModel and the TFLite model (LiteRT interpreter)
  on ``--parity_images`` images of the dataset: per output, the largest absolute difference
  and whether the detected classes agree.

The parity check and :func:`tflite_runner` use LiteRT's default interpreter, XNNPACK
delegate included, as an app would (RoIAlign's bin means are low-rank reductions so that
XNNPACK accepts them; a rank-7 mean made it fail with ``failed to delegate MEAN node``).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any, Callable, Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from keras_seg.cli import user_errors  # noqa: E402
from keras_seg.detection.options import DetectionExportConfig  # noqa: E402

__all__ = ["OUTPUT_KEYS", "blocking_ops", "build_archive", "export_detector", "tflite_runner"]

FLAGS = flags.FLAGS
OUTPUT_KEYS = ("boxes", "classes", "scores", "masks")
METADATA_FILE = "keras_seg_metadata.json"


def _detect_fn(model, config: Dict[str, Any]) -> Callable:
    """``images (float 0..255 RGB) -> outputs`` of the export: normalise, detect, paste at the input size."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg.data.preprocess import normalize_image  # pylint: disable=import-outside-toplevel
    from keras_seg.detection.proposals import paste_masks  # pylint: disable=import-outside-toplevel

    size = tuple(int(s) for s in config["image_size"])

    def detect(images):
        out = model(normalize_image(tf.cast(images, tf.float32), config["preprocessing"]), training=False)
        return {"boxes": out["boxes"], "classes": tf.cast(out["classes"], tf.int32), "scores": out["scores"],
                "masks": paste_masks(out["masks"], out["boxes"], size)}

    return detect


def build_archive(model, config: Dict[str, Any], batch: Optional[int] = None, float_signature: bool = True):
    """The ``keras.export.ExportArchive`` of the serving signatures (see the module docstring)."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    h, w = (int(s) for s in config["image_size"])
    detect = _detect_fn(model, config)
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", detect, [tf.TensorSpec([batch, h, w, 3], tf.uint8, name="images")])
    if float_signature:
        archive.add_endpoint("serving_float", detect, [tf.TensorSpec([batch, h, w, 3], tf.float32, name="images")])
    return archive


def metadata(config: Dict[str, Any], checkpoint: str) -> Dict[str, Any]:
    """What the exports carry beside the graph: classes, palette, input size, preprocessing, outputs."""
    from keras_seg.data.preprocess import preprocessing_record  # pylint: disable=import-outside-toplevel

    return {"task": "instance", "model": config["model"], "num_classes": config["num_classes"],
            "class_names": config["class_names"], "palette": config["palette"],
            "input_size": list(config["image_size"]), "preprocessing": preprocessing_record(config["preprocessing"]),
            "model_options": config["model_options"], "checkpoint": checkpoint,
            "outputs": {"boxes": "[B, D, 4] y1, x1, y2, x2 input pixels", "classes": "[B, D] 1..K, -1 padding",
                        "scores": "[B, D]", "masks": "[B, D, H, W] probabilities pasted at the input size"}}


def blocking_ops(message: str) -> List[str]:
    """The TensorFlow ops a failed builtins-only TFLite conversion names, e.g. ``["tf.RandomUniform"]``."""
    found = re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", message)
    found += re.findall(r"\b(tf\.\w+)\(", message.split("Details:", 1)[1]) if "Details:" in message else []
    found += [f"tf.{op}" for op in re.findall(r"Flex(\w+)", message)]
    return sorted(set(found))


def convert_tflite(source_dir: str) -> bytes:
    """Builtin-ops-only conversion of a SavedModel; the converter's errors propagate."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    converter = tf.lite.TFLiteConverter.from_saved_model(source_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def tflite_runner(path: str) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
    """``run(uint8 [1, H, W, 3]) -> outputs`` of an exported ``.tflite`` under LiteRT's default interpreter."""
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    return lambda image: runner(images=np.ascontiguousarray(image, np.uint8))


def parity_images(data_dir: str, split: str, config: Dict[str, Any], count: int) -> List[np.ndarray]:
    """``count`` uint8 ``[H, W, 3]`` model inputs of a split: resized and padded, not normalised."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg.data import features as F  # pylint: disable=import-outside-toplevel
    from keras_seg.data.manifest import load_manifest, split_files  # pylint: disable=import-outside-toplevel
    from keras_seg.detection import data  # pylint: disable=import-outside-toplevel

    files = split_files(data_dir, load_manifest(data_dir, task=F.TASK_INSTANCE), split)
    images = []
    for record in tf.data.TFRecordDataset(files).take(count):
        ex = data.resize_and_pad(data.decode_instance_example(record), tuple(config["image_size"]),
                                 config["preprocessing"])
        images.append(np.clip(np.round(ex["image"].numpy()), 0, 255).astype(np.uint8))
    return images


def compare(reference: Dict[str, Any], other: Dict[str, Any]) -> Dict[str, Any]:
    """Largest absolute difference of each output, and whether the classes agree row for row."""
    diffs = {k: float(np.max(np.abs(np.asarray(other[k], np.float64) - np.asarray(reference[k], np.float64)),
                          initial=0.0)) for k in OUTPUT_KEYS}
    return {"max_abs_diff": diffs,
            "classes_equal": bool(np.array_equal(np.asarray(other["classes"]), np.asarray(reference["classes"])))}


def _parity(detect, saved_model_dir: str, tflite_path: Optional[str], images: List[np.ndarray]) -> Dict[str, Any]:
    """Keras (the export's own function, eagerly) against the SavedModel and the TFLite model, image by image."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    serving = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    run_tflite = tflite_runner(tflite_path) if tflite_path else None
    rows = []
    for image in images:
        batch = tf.constant(image[None])
        want = {k: v.numpy() for k, v in detect(batch).items()}
        row = {"saved_model": compare(want, {k: v.numpy() for k, v in serving(images=batch).items()})}
        if run_tflite:
            row["tflite"] = compare(want, run_tflite(image[None]))
        row["detections"] = int((want["classes"] > 0).sum())
        rows.append(row)
    summary = {}
    for fmt in ("saved_model", "tflite"):
        if rows and fmt in rows[0]:
            summary[fmt] = {"max_abs_diff": {k: max(r[fmt]["max_abs_diff"][k] for r in rows) for k in OUTPUT_KEYS},
                            "classes_equal": all(r[fmt]["classes_equal"] for r in rows)}
    return {"images": len(rows), "summary": summary, "per_image": rows}


def export_detector(cfg: DetectionExportConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Writes the SavedModel, tries the TFLite conversion, and writes ``parity.json``; returns the report.

    Raises:
      ValueError / CheckpointError: not a Mask R-CNN run, no checkpoint, or an existing
        ``out_dir/saved_model``.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg.detection.run_dir import load_detector  # pylint: disable=import-outside-toplevel
    from keras_seg.fileio import atomic_write_json, atomic_write_text  # pylint: disable=import-outside-toplevel

    saved = os.path.join(cfg.out_dir, "saved_model")
    if os.path.exists(saved):
        raise ValueError(f"{saved} already exists; choose a new --out_dir or delete it.")
    model, config, path = load_detector(cfg.model_dir, cfg.checkpoint)
    meta = metadata(config, path)
    os.makedirs(cfg.out_dir, exist_ok=True)
    staging = f"{saved}.tmp-{os.getpid()}"
    build_archive(model, config).write_out(staging, verbose=False)
    os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
    atomic_write_json(os.path.join(staging, "assets.extra", METADATA_FILE), meta)
    os.replace(staging, saved)
    log(f"Wrote {saved}")
    report: Dict[str, Any] = {"checkpoint": path, "saved_model": saved, "tflite": None}
    tflite_path = None
    if cfg.tflite:
        source = os.path.join(cfg.out_dir, f".tflite-source-{os.getpid()}")
        build_archive(model, config, batch=1, float_signature=False).write_out(source, verbose=False)
        try:
            flat = convert_tflite(source)
        except Exception as e:  # pylint: disable=broad-except  # ConverterError and plain exceptions alike
            message = str(e)
            report["tflite_error"] = {"blocking_ops": blocking_ops(message), "message": message[:4000]}
            atomic_write_text(os.path.join(cfg.out_dir, "tflite_error.txt"), message)
            log(f"TFLite (builtin ops) conversion failed; blocking ops: {report['tflite_error']['blocking_ops']}")
        else:
            tflite_path = os.path.join(cfg.out_dir, "model.tflite")
            with open(f"{tflite_path}.tmp", "wb") as f:
                f.write(flat)
            os.replace(f"{tflite_path}.tmp", tflite_path)
            atomic_write_json(os.path.join(cfg.out_dir, "model.json"),
                              {**meta, "format": "tflite_fp32", "inputs": {"images": {
                                  "dtype": "uint8", "shape": [1, *config["image_size"], 3]}}})
            report["tflite"] = tflite_path
            log(f"Wrote {tflite_path} ({len(flat) / 2**20:.2f} MiB)")
        finally:
            shutil.rmtree(source, ignore_errors=True)
    if cfg.parity_images:
        images = parity_images(cfg.data_dir or config["data_dir"], cfg.parity_split, config, cfg.parity_images)
        report["parity"] = _parity(tf.function(_detect_fn(model, config)), saved, tflite_path, images)
        for fmt, s in report["parity"]["summary"].items():
            log(f"parity {fmt} vs Keras on {len(images)} images: classes equal {s['classes_equal']}, max |diff| "
                + ", ".join(f"{k} {v:.2e}" for k, v in s["max_abs_diff"].items()))
    atomic_write_json(os.path.join(cfg.out_dir, "parity.json"), report)
    return report


def main(argv):
    """Exports from the parsed flags; errors exit with status 1."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # the SavedModel writer logs pages of INFO lines
        logging.set_verbosity(logging.WARNING)
    from keras_seg.flags import config_from_flags  # pylint: disable=import-outside-toplevel

    with user_errors(ValueError, OSError):
        export_detector(config_from_flags(FLAGS, DetectionExportConfig))


if __name__ == "__main__":
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel
    from keras_seg.flags import define_flags  # pylint: disable=import-outside-toplevel

    define_flags(DetectionExportConfig)
    app.run(main, argv=flagfile_argv())
