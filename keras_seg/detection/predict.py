r"""Draws the instances a trained Mask R-CNN finds in images.

    python -m keras_seg.detection.predict --model_dir=runs/x --out_dir=preds [--min_score=0.5] INPUT [INPUT ...]

An INPUT is an image file, a folder (searched recursively) or a quoted glob pattern
(:func:`keras_seg.predict.expand_inputs`). Each image is resized and padded to the model's
input as in training (:func:`keras_seg.detection.evaluation.prepare_image`), and the
detections are mapped back to its own size (:func:`~keras_seg.detection.evaluation.to_instances`).
For each image it writes, atomically:

* ``<out_dir>/<stem>_instances.png``: every detection scoring at least ``--min_score``, its
  mask filled semi-transparently (``--alpha``) and outlined in a colour of its own, labelled
  with its class name and score (Pillow only);
* ``<out_dir>/<stem>.json``: the image size, checkpoint and, per detection, class id and
  name, score, box ``[y1, x1, y2, x2]`` in image pixels and mask area in pixels.
"""

from __future__ import annotations

import colorsys
import os
from typing import Any, Callable, Dict, List, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from keras_seg.cli import user_errors  # noqa: E402
from keras_seg.detection.options import DetectionPredictConfig  # noqa: E402

__all__ = ["distinct_colors", "draw_instances", "instances_json", "run"]

FLAGS = flags.FLAGS


def distinct_colors(n: int) -> List[tuple]:
    """``n`` saturated RGB colours with hues a golden-ratio step apart (neighbours differ most)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((0.13 + i * 0.618034) % 1.0, 0.85, 0.95))
            for i in range(n)]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def draw_instances(image: np.ndarray, instances: Dict[str, np.ndarray], class_names: Sequence[str],
                   alpha: float = 0.45, min_side: int = 256) -> Image.Image:
    """The image with each instance's mask filled (opacity ``alpha``), outlined and labelled.

    Images whose longer side is under ``min_side`` are drawn enlarged by an integer factor
    (nearest neighbour), so that the labels stay legible on small images.

    Args:
      image: uint8 ``(H, W, 3)``.
      instances: ``boxes [N, 4]``, ``classes [N]`` (1..K), ``scores [N]``, ``masks [N, H, W]`` binary.
      class_names: names of classes 1..K.
      alpha: fill opacity.
      min_side: enlarge smaller images to at least this longer side.
    """
    zoom = max(1, -(-min_side // max(image.shape[:2])))
    canvas = np.repeat(np.repeat(image.astype(np.float32), zoom, 0), zoom, 1)
    colors = distinct_colors(len(instances["classes"]))
    masks = np.asarray(instances["masks"]).astype(bool)
    masks = np.repeat(np.repeat(masks, zoom, 1), zoom, 2) if masks.size else masks
    for mask, color in zip(masks, colors):
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.asarray(color, np.float32)
    for mask, color in zip(masks, colors):
        canvas[_outline(mask)] = color
    picture = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for box, cls, score, color in zip(instances["boxes"], instances["classes"], instances["scores"], colors):
        text = f"{class_names[int(cls) - 1]} {float(score):.2f}"
        x, y = zoom * float(box[1]), max(zoom * float(box[0]) - 11, 0.0)
        left, top, right, bottom = draw.textbbox((x, y), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=color)
        draw.text((x, y), text, fill=(0, 0, 0))
    return picture


def instances_json(instances: Dict[str, np.ndarray], class_names: Sequence[str]) -> List[Dict[str, Any]]:
    """The JSON list of detections: class id and name, score, box and mask area."""
    return [{"class_id": int(c), "class_name": class_names[int(c) - 1], "score": round(float(s), 5),
             "box_yxyx": [round(float(v), 2) for v in b], "mask_area": int(np.asarray(m).sum())}
            for b, c, s, m in zip(instances["boxes"], instances["classes"], instances["scores"], instances["masks"])]


def _keep(instances: Dict[str, np.ndarray], min_score: float) -> Dict[str, np.ndarray]:
    keep = instances["scores"] >= min_score
    return {k: v[keep] for k, v in instances.items()}


def run(cfg: DetectionPredictConfig, inputs: Sequence[str], log: Callable[[str], None] = print) -> List[str]:
    """Predicts every input; returns the paths written.

    Raises:
      ValueError: no input, an input that matches nothing or cannot be decoded, or a
        model_dir that is not a Mask R-CNN run.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg.detection.evaluation import prepare_image, to_instances  # pylint: disable=import-outside-toplevel
    from keras_seg.detection.run_dir import load_detector  # pylint: disable=import-outside-toplevel
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel
    from keras_seg.predict import expand_inputs, read_rgb  # pylint: disable=import-outside-toplevel

    if not inputs:
        raise ValueError("no input images: pass image files, folders or glob patterns after the flags.")
    items = expand_inputs(inputs)
    model, config, path = load_detector(cfg.model_dir, cfg.checkpoint)
    forward = tf.function(lambda x: model(x, training=False))
    names, written = config["class_names"], []
    for source, stem in items:
        image = read_rgb(source)
        x, image_hw = prepare_image(image, config["image_size"], config["preprocessing"])
        instances = to_instances(forward(x[None]), image_hw[None], np.array([image.shape[:2]]))[0]
        instances = _keep(instances, cfg.min_score)
        base = os.path.join(cfg.out_dir, stem)
        os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
        png = f"{base}_instances.png"
        tmp = f"{png}.tmp-{os.getpid()}.png"
        draw_instances(image, instances, names, cfg.alpha).save(tmp)
        os.replace(tmp, png)
        record = {"image": os.path.abspath(source), "height": int(image.shape[0]), "width": int(image.shape[1]),
                  "checkpoint": path, "min_score": cfg.min_score, "detections": instances_json(instances, names)}
        atomic_write_json(f"{base}.json", record)
        written += [png, f"{base}.json"]
        log(f"{source}: {len(instances['classes'])} instance(s) -> {png}")
    return written


def main(argv):
    """Predicts the positional inputs with the parsed flags; errors exit with status 1."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from keras_seg.flags import config_from_flags  # pylint: disable=import-outside-toplevel

    with user_errors(ValueError, OSError):
        run(config_from_flags(FLAGS, DetectionPredictConfig), argv[1:])


if __name__ == "__main__":
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel
    from keras_seg.flags import define_flags  # pylint: disable=import-outside-toplevel

    define_flags(DetectionPredictConfig)
    app.run(main, argv=flagfile_argv())
