r"""Predicts segmentation maps for images, with the Keras model or an exported TFLite model.

    python -m keras_seg.predict --model_dir=runs/unet_shapes --out=preds INPUT [INPUT ...]
    python -m keras_seg.predict --pretrained=enet_camvid --out=preds [--save_probabilities] \
        [--mode=slide --window=H,W] [--scales=0.75,1,1.25] [--flip] INPUT [INPUT ...]
    python -m keras_seg.predict --tflite=exported/unet_shapes_v1/unet_shapes_int8.tflite \
        --out=preds [--tflite_fit=tile|resize] [--tile_overlap=0.25] [--tflite_threads=N] INPUT [INPUT ...]

An INPUT is an image file, a folder (searched recursively; the images keep their relative
paths under ``--out``) or a glob pattern (quote it). For each image writes
``<out>/<stem>_label.png`` (a palette PNG: pixel values are the class ids, shown in the
dataset's colours by any viewer), ``<out>/<stem>_overlay.png`` (the image blended with the
palette) and, with ``--save_probabilities``, ``<out>/<stem>_probs.npy`` (float32
``(H, W, C)``), all at the image's original size. A progress bar runs on stderr. An input
that is not a readable image is skipped; every such input is listed at the end and the
command exits with status 1.

``--tflite`` runs the model with the LiteRT interpreter (no TensorFlow needed for the
inference itself) and reads the palette from the ``.json`` sidecar beside the file. The
model's input size is fixed; other sizes are tiled with overlap at native resolution
(default) or resized, see :mod:`keras_seg.litert`.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402



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


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class PredictionFailures(ValueError):
    """Some inputs could not be predicted; the others were written. ``failures``: (path, reason)."""

    def __init__(self, failures: List[Tuple[str, str]], written: List[str]):
        self.failures, self.written = failures, written
        lines = "\n".join(f"  {path}: {reason}" for path, reason in failures)
        super().__init__(f"{len(failures)} of the inputs failed (the others were written):\n{lines}")


def expand_inputs(args: Sequence[str]) -> List[Tuple[str, str]]:
    """``(path, output stem)`` of every input: files as given, folders searched recursively for
    images (by extension), glob patterns expanded. A folder's images keep their path relative
    to it (``out/<sub>/<stem>_label.png``); files and glob matches use their stem.

    Raises:
      ValueError: a path that matches nothing, or two inputs with the same output name.
    """
    out: List[Tuple[str, str]] = []
    for arg in args:
        if os.path.isdir(arg):
            found = sorted(os.path.join(root, f) for root, _, files in os.walk(arg) for f in files
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"{arg}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
            out += [(p, os.path.splitext(os.path.relpath(p, arg))[0]) for p in found]
        elif os.path.exists(arg):
            out.append((arg, os.path.splitext(os.path.basename(arg))[0]))
        elif glob.has_magic(arg):
            found = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not found:
                raise ValueError(f"{arg}: the pattern matches no files.")
            out += [(p, os.path.splitext(os.path.basename(p))[0]) for p in found]
        else:
            raise ValueError(f"{arg}: file not found.")
    seen: Dict[str, str] = {}
    for path, stem in out:
        if stem in seen and seen[stem] != path:
            raise ValueError(f"{seen[stem]} and {path} would both write {stem}_label.png: pass their folder "
                             "instead (it keeps relative paths), or predict them into different --out folders.")
        seen[stem] = path
    return list(dict.fromkeys(out))


def write_outputs(out_dir: str, stem: str, image: np.ndarray, labels: np.ndarray, palette,
                  probabilities: Optional[np.ndarray] = None) -> List[str]:
    """Writes ``<stem>_label.png``, ``<stem>_overlay.png`` and, if given, ``<stem>_probs.npy``
    (through temporary names); returns their paths.

    The label PNG is a palette image: its pixel values are the class ids, and any viewer
    shows them in the dataset's colours.
    """
    paths = []
    base = os.path.join(out_dir, stem)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    label_png = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = np.asarray(palette, np.uint8)
    label_png.putpalette(flat.ravel().tolist())
    for suffix, pic in (("label", label_png), ("overlay", Image.fromarray(overlay(image, labels, palette)))):
        path = f"{base}_{suffix}.png"
        tmp = f"{path}.tmp-{os.getpid()}.png"
        pic.save(tmp)
        os.replace(tmp, path)
        paths.append(path)
    if probabilities is not None:
        path = f"{base}_probs.npy"
        tmp = f"{path}.tmp-{os.getpid()}.npy"
        np.save(tmp, probabilities.astype(np.float32))
        os.replace(tmp, path)
        paths.append(path)
    return paths


def predict_batch(model, images: Sequence[np.ndarray], preprocessing: str = "imagenet", inference=None,
                  probs=None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``[(class ids (H, W) uint8, probabilities (H, W, C) float32)]`` for same-size uint8 RGB
    images, in one pass through the model's preprocessing and ``inference``
    (:class:`keras_seg.inference.InferenceConfig`, default one whole-image pass); ``probs`` is
    a reusable :func:`keras_seg.inference.make_probabilities` of ``model``."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg.data.preprocess import normalize_image  # pylint: disable=import-outside-toplevel
    from keras_seg.inference import InferenceConfig, predict_probabilities  # pylint: disable=import-outside-toplevel

    x = normalize_image(tf.convert_to_tensor(np.stack(images)), preprocessing)
    p = np.asarray(predict_probabilities(model, x, inference or InferenceConfig(), probs), np.float32)
    if p.shape[1:3] != images[0].shape[:2]:
        raise ValueError(f"model returned {p.shape[1:3]} for images of {images[0].shape[:2]}")
    return [(np.argmax(pi, axis=-1).astype(np.uint8), pi) for pi in p]


def predict_keras(model, image: np.ndarray, preprocessing: str = "imagenet", inference=None, probs=None,
                  with_probabilities: bool = False):
    """Class ids (H, W) of one uint8 RGB image (:func:`predict_batch` of one); with
    ``with_probabilities`` ``(class ids, probabilities (H, W, C) float32)``."""
    labels, probabilities = predict_batch(model, [image], preprocessing, inference, probs)[0]
    return (labels, probabilities) if with_probabilities else labels


def _predict_all(inputs: Sequence[str], out_dir: str, run_batch, palette, save_probabilities: bool,
                 log, batch_size: int = 1) -> List[str]:
    """Runs ``run_batch([images]) -> [(labels, probabilities)]`` over the expanded
    inputs, up to ``batch_size`` consecutive images of one size at a time, with a progress bar;
    unreadable inputs are reported at the end (:class:`PredictionFailures`)."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    if not inputs:
        raise ValueError("no images given: pass image files, folders or glob patterns after the flags.")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1. Received: batch_size={batch_size}")
    items = expand_inputs(inputs)
    written: List[str] = []
    failures: List[Tuple[str, str]] = []
    pending: List[Tuple[str, np.ndarray]] = []

    def flush():
        for (stem, image), (labels, probabilities) in zip(pending, run_batch([im for _, im in pending])):
            written.extend(write_outputs(out_dir, stem, image, labels, palette,
                                         probabilities if save_probabilities else None))
        pending.clear()

    with tqdm(items, desc="predict", unit="img", file=sys.stderr, disable=None) as bar:
        for path, stem in bar:
            try:
                image = read_rgb(path)
            except ValueError as e:
                failures.append((path, str(e).split(": ", 1)[-1]))
                continue
            if pending and (pending[0][1].shape != image.shape or len(pending) == batch_size):
                flush()
            pending.append((stem, image))
        flush()
    log(f"wrote {len(items) - len(failures)} predictions ({len(written)} files) to {out_dir}")
    if failures:
        raise PredictionFailures(failures, written)
    return written


def run(model_dir: Optional[str], images: Sequence[str], out_dir: str, checkpoint: str = "latest", log=print,
        pretrained: Optional[str] = None, inference=None, save_probabilities: bool = False,
        batch_size: int = 1, inference_options=None) -> List[str]:
    """Predicts every image with a Keras model; returns written paths.

    ``inference_options`` (e.g. ``{"head": "L2"}``) picks another inference graph of the
    trained variables (:func:`keras_seg.checkpoints.inference_model`); ``model_dir`` only.

    Up to ``batch_size`` consecutive images of the same size run in one forward pass (never
    padded to a common size, so a batch predicts what one image at a time would).

    ``images`` are files, folders (searched recursively; relative paths are kept under
    ``out_dir``) or glob patterns. The model is the checkpoint of ``model_dir``, or the
    shipped weights ``pretrained`` (a name of :func:`keras_seg.pretrained.available`, e.g.
    ``"enet_camvid"``), whose class names, palette and preprocessing come with them.

    Raises:
      PredictionFailures: after writing the others, naming every input that is not a
        readable image.
    """
    from keras_seg.checkpoints import load_trained_model, model_preprocessing  # pylint: disable=import-outside-toplevel
    from keras_seg.inference import make_probabilities  # pylint: disable=import-outside-toplevel

    if bool(model_dir) == bool(pretrained):
        raise ValueError("pass exactly one of model_dir (a training directory) or pretrained (shipped weights).")
    expand_inputs(images)  # bad paths fail before the model loads
    if pretrained and inference_options:
        raise ValueError("--inference_options applies to --model_dir; shipped weights have a fixed graph.")
    if pretrained:
        from keras_seg.pretrained import load_pretrained  # pylint: disable=import-outside-toplevel

        from keras_seg.pretrained import recorded_scales  # pylint: disable=import-outside-toplevel

        model, config = load_pretrained(pretrained)
        log(f"Shipped weights {pretrained!r}: {config['model']} on {config['dataset']} ({config['licence']})")
        if inference is None and recorded_scales(config) != (1.0,):
            from keras_seg.inference import InferenceConfig  # pylint: disable=import-outside-toplevel

            inference = InferenceConfig(scales=recorded_scales(config)).validate()
            log(f"  at the recorded inference scales {list(inference.scales)} (pass --scales to change)")
    else:
        model, config, _ = load_trained_model(model_dir, checkpoint, inference_options=inference_options)
    preprocessing = model_preprocessing(config)
    probs = make_probabilities(model)

    def run_batch(batch):
        return predict_batch(model, batch, preprocessing, inference, probs)

    return _predict_all(images, out_dir, run_batch, config["palette"], save_probabilities, log, batch_size)


def run_tflite(tflite_path: str, images: Sequence[str], out_dir: str, fit: str = "tile",
               overlap: float = 0.25, log=print, num_threads: Optional[int] = None,
               save_probabilities: bool = False) -> List[str]:
    """Predicts every image with a TFLite export under LiteRT; returns written paths.

    Args:
      tflite_path: a ``.tflite`` file written by :mod:`keras_seg.export` (with its sidecar).
      images: image files, folders or glob patterns (as :func:`run`).
      out_dir: output folder.
      fit: ``tile`` or ``resize``: how images of another size than the model's are run.
      overlap: tile overlap, as a fraction of the tile side.
      log: progress printer.
      num_threads: interpreter threads (``None``: every usable CPU).
      save_probabilities: also write ``<stem>_probs.npy``.

    Raises:
      ValueError: no images, or a file that is not a keras_seg export.
      PredictionFailures: after writing the others, naming every unreadable input.
    """
    from keras_seg.litert import TFLiteSegmenter  # pylint: disable=import-outside-toplevel

    expand_inputs(images)
    segmenter = TFLiteSegmenter(tflite_path, num_threads=num_threads)
    h, w = segmenter.input_size
    log(f"{tflite_path}: model input {w}x{h}; other sizes: {fit}")

    def run_batch(batch):  # the TFLite model takes one image at a time
        out = []
        for image in batch:
            probabilities = segmenter.probabilities(image, fit, overlap)
            out.append((np.argmax(probabilities, axis=-1).astype(np.uint8), probabilities))
        return out

    return _predict_all(images, out_dir, run_batch, segmenter.palette, save_probabilities, log)


if __name__ == "__main__":
    from keras_seg.commands.predict import run_command  # pylint: disable=import-outside-toplevel

    run_command()
