r"""Predicts segmentation maps for images, with the Keras model or an exported TFLite model.

    python -m keras_seg.predict --model_dir=runs/unet_shapes --out=preds IMAGE [IMAGE ...]
    python -m keras_seg.predict --pretrained=enet_camvid --out=preds IMAGE [IMAGE ...]
    python -m keras_seg.predict --tflite=exported/unet_shapes_v1/unet_shapes_int8.tflite \
        --out=preds [--tflite_fit=tile|resize] [--tile_overlap=0.25] [--tflite_threads=N] IMAGE [IMAGE ...]

For each image writes ``<out>/<stem>_label.png`` (8-bit class ids) and
``<out>/<stem>_overlay.png`` (the image blended with the class palette), both at the
image's original size.

``--tflite`` runs the model with the LiteRT interpreter (no TensorFlow needed for the
inference itself) and reads the palette from the ``.json`` sidecar beside the file. The
model's input size is fixed; other sizes are tiled with overlap at native resolution
(default) or resized, see :mod:`keras_seg.litert`.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

FLAGS = flags.FLAGS


def read_rgb(path: str) -> np.ndarray:
    """Reads an image as uint8 RGB (H, W, 3); raises ValueError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise ValueError(f"{path}: file not found.") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot decode the image ({e}); it is corrupt or not an image.") from e


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Maps class ids (H, W) to palette colours (H, W, 3); ids outside the palette are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[labels]


def overlay(image: np.ndarray, labels: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """Blends the colourised labels over the image."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels, palette).astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def write_outputs(out_dir: str, stem: str, image: np.ndarray, labels: np.ndarray, palette) -> List[str]:
    """Writes the label PNG and the overlay PNG (through temporary names); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for suffix, arr in (("label", labels.astype(np.uint8)), ("overlay", overlay(image, labels, palette))):
        path = os.path.join(out_dir, f"{stem}_{suffix}.png")
        tmp = f"{path}.tmp-{os.getpid()}.png"
        Image.fromarray(arr).save(tmp)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def predict_keras(model, image: np.ndarray, preprocessing: str = "imagenet", inference=None, probs=None) -> np.ndarray:
    """Class ids (H, W) for one uint8 RGB image, through the model's preprocessing.

    ``inference`` (:class:`keras_seg.inference.InferenceConfig`) picks sliding windows,
    multi-scale and flip (default: one whole-image pass); ``probs`` is a reusable
    :func:`keras_seg.inference.make_probabilities` of ``model``.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg.data.preprocess import normalize_image  # pylint: disable=import-outside-toplevel

    x = normalize_image(tf.convert_to_tensor(image[None]), preprocessing)
    if inference is not None and not inference.plain:
        from keras_seg.inference import predict_probabilities  # pylint: disable=import-outside-toplevel

        scores = predict_probabilities(model, x, inference, probs)
    else:
        scores = model(x, training=False)
    labels = np.asarray(tf.argmax(scores, axis=-1)[0]).astype(np.uint8)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"model returned {labels.shape} for an image of {image.shape[:2]}")
    return labels


def run(model_dir: Optional[str], images: Sequence[str], out_dir: str, checkpoint: str = "latest", log=print,
        pretrained: Optional[str] = None, inference=None) -> List[str]:
    """Predicts every image with a Keras model; returns written paths.

    The model is the checkpoint of ``model_dir``, or the shipped weights ``pretrained``
    (a name of :func:`keras_seg.pretrained.available`, e.g. ``"enet_camvid"``), whose class
    names, palette and preprocessing come with them.
    """
    from keras_seg.checkpoints import load_trained_model, model_preprocessing  # pylint: disable=import-outside-toplevel

    if not images:
        raise ValueError("no images given: pass image paths after the flags.")
    if bool(model_dir) == bool(pretrained):
        raise ValueError("pass exactly one of model_dir (a training directory) or pretrained (shipped weights).")
    if pretrained:
        from keras_seg.pretrained import load_pretrained  # pylint: disable=import-outside-toplevel

        model, config = load_pretrained(pretrained)
        log(f"Shipped weights {pretrained!r}: {config['model']} on {config['dataset']} "
            f"({config['licence']}).")
    else:
        model, config, _ = load_trained_model(model_dir, checkpoint)
    from keras_seg.inference import make_probabilities  # pylint: disable=import-outside-toplevel

    preprocessing = model_preprocessing(config)
    probs = make_probabilities(model)
    written = []
    for i, path in enumerate(images, 1):
        image = read_rgb(path)
        labels = predict_keras(model, image, preprocessing, inference, probs)
        stem = os.path.splitext(os.path.basename(path))[0]
        written += write_outputs(out_dir, stem, image, labels, config["palette"])
        log(f"[{i}/{len(images)}] {path}: {image.shape[1]}x{image.shape[0]} -> {written[-2]}, {written[-1]}")
    return written


def run_tflite(tflite_path: str, images: Sequence[str], out_dir: str, fit: str = "tile",
               overlap: float = 0.25, log=print, num_threads: Optional[int] = None) -> List[str]:
    """Predicts every image with a TFLite export under LiteRT; returns written paths.

    Args:
      tflite_path: a ``.tflite`` file written by :mod:`keras_seg.export` (with its sidecar).
      images: image paths.
      out_dir: output folder.
      fit: ``tile`` or ``resize``: how images of another size than the model's are run.
      overlap: tile overlap, as a fraction of the tile side.
      log: progress printer.
      num_threads: interpreter threads (``None``: every usable CPU).

    Raises:
      ValueError: no images, an unreadable image, or a file that is not a keras_seg export.
    """
    from keras_seg.litert import TFLiteSegmenter  # pylint: disable=import-outside-toplevel

    if not images:
        raise ValueError("no images given: pass image paths after the flags.")
    segmenter = TFLiteSegmenter(tflite_path, num_threads=num_threads)
    h, w = segmenter.input_size
    written = []
    for i, path in enumerate(images, 1):
        image = read_rgb(path)
        labels = segmenter.predict(image, fit, overlap)
        stem = os.path.splitext(os.path.basename(path))[0]
        written += write_outputs(out_dir, stem, image, labels, segmenter.palette)
        log(f"[{i}/{len(images)}] {path}: {image.shape[1]}x{image.shape[0]} ({fit}, model {w}x{h}) -> "
            f"{written[-2]}, {written[-1]}")
    return written


def main(argv):
    # CheckpointError is a ValueError; not importing keras_seg.checkpoints keeps TensorFlow
    # out of the --tflite path.
    try:
        if sum(map(bool, (FLAGS.model_dir, FLAGS.tflite, FLAGS.pretrained))) != 1:
            raise ValueError("pass exactly one of --model_dir (Keras checkpoint), --pretrained (shipped weights, "
                             "e.g. enet_camvid) or --tflite (exported model).")
        from keras_seg.inference import InferenceConfig, inference_from_flags  # pylint: disable=import-outside-toplevel

        inference = inference_from_flags(FLAGS)
        if FLAGS.tflite:
            if inference != InferenceConfig():
                raise ValueError("--mode, --window, --stride, --scales and --flip apply to Keras prediction "
                                 "(--model_dir, --pretrained); --tflite tiles with --tflite_fit and --tile_overlap.")
            run_tflite(FLAGS.tflite, argv[1:], FLAGS.out, FLAGS.tflite_fit, FLAGS.tile_overlap,
                       num_threads=FLAGS.tflite_threads)
        else:
            run(FLAGS.model_dir, argv[1:], FLAGS.out, FLAGS.checkpoint, pretrained=FLAGS.pretrained,
                inference=inference)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.DEFINE_string("model_dir", None, "Training directory (Keras prediction).")
    flags.DEFINE_string("pretrained", None, "Shipped weights to predict with instead of --model_dir, e.g. "
                        "enet_camvid (keras_seg.pretrained.available() lists them).")
    flags.DEFINE_string("tflite", None, "A .tflite file from keras_seg.export (LiteRT prediction), instead of --model_dir.")
    flags.DEFINE_string("out", "predictions", "Output folder.")
    flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint path prefix.")
    flags.DEFINE_enum("tflite_fit", "tile", ["tile", "resize"],
                      "--tflite: run other image sizes as overlapping tiles at native resolution, or resized.")
    flags.DEFINE_integer("tflite_threads", None, "--tflite: interpreter threads (default: every usable CPU; LiteRT's own default is 1).", lower_bound=1)
    flags.DEFINE_float("tile_overlap", 0.25, "--tflite tiling: overlap of neighbouring tiles, fraction of the tile side.")
    from keras_seg.inference import define_inference_flags  # pylint: disable=import-outside-toplevel

    define_inference_flags()
    app.run(main)
