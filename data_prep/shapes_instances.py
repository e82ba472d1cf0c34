r"""The built-in synthetic instance dataset: overlapping, touching shapes (no licence issues).

Each ``size`` x ``size`` image has a textured, noisy background and 2-6 shapes drawn in order:
circles (class 1), squares (2) and triangles (3), in random colours from the same
distribution for every class. A third of the shapes after the first are placed to touch an
earlier one (centres one sum of radii apart), a third to overlap one, the rest anywhere. Later
shapes occlude earlier ones; each instance's mask is its *visible* part, and instances with
fewer than ``min_visible`` visible pixels are dropped. Every image is a pure function of
``(seed, split, index)``, so the dataset is the same for any number of writer processes.

Usage::

    python -m data_prep.shapes_instances --out DIR [--num_train 400 --num_val 100 --size 64]

writes instance TFRecords and ``manifest.json`` to ``DIR`` (read them with
:func:`keras_seg.detection.data.make_instance_dataset`).
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Optional

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from data_prep import cli
from data_prep.instances import InstanceInfo, Instances, summary
from data_prep.writer import Item, Loaded, write_dataset

CLASS_NAMES = ["circle", "square", "triangle"]
PALETTE = [[230, 25, 75], [60, 180, 75], [0, 130, 200]]
SPLIT_STREAMS = {"train": 0, "val": 1}
INFO = InstanceInfo(name="shapes_instances", class_names=CLASS_NAMES, palette=PALETTE)


@dataclasses.dataclass
class ShapesImage:
    """One generated image.

    Attributes:
      image: uint8 ``(S, S, 3)``.
      masks: uint8 ``(N, S, S)`` visible part of each kept shape, values 0/1, in drawing order.
      classes: int64 ``(N,)`` in ``1..3``.
      full_masks: uint8 ``(N, S, S)`` each kept shape as drawn, before occlusion.
    """

    image: np.ndarray
    masks: np.ndarray
    classes: np.ndarray
    full_masks: np.ndarray


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAMS[split], index]))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    grad = rng.uniform(-60, 60, (2, 3))
    freq = rng.uniform(4, 14, 2)
    texture = 25 * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + rng.uniform(0, 6.3))
    img = rng.uniform(40, 200, 3) + grad[0] * xx[..., None] + grad[1] * yy[..., None] + texture[..., None]
    return np.clip(img, 0, 255)


def _centre(rng: np.random.Generator, size: int, r: float, placed) -> np.ndarray:
    """A centre for radius ``r``: touching or overlapping an earlier shape, or anywhere."""
    mode = rng.integers(0, 3) if placed else 0
    if mode:
        cy, cx, r0 = placed[int(rng.integers(0, len(placed)))]
        dist = (r0 + r) * (1.0 if mode == 1 else rng.uniform(0.3, 0.8))
        t = rng.uniform(0, 2 * np.pi)
        centre = np.array([cy + dist * np.sin(t), cx + dist * np.cos(t)])
    else:
        centre = rng.uniform(0, size, 2)
    return np.clip(centre, r, size - r)


def make_instance_example(rng: np.random.Generator, size: int = 64, min_visible: int = 20) -> ShapesImage:
    """Draws one image and its instances; see the module docstring."""
    canvas = Image.fromarray(_background(rng, size).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    full, classes, placed = [], [], []
    for _ in range(int(rng.integers(2, 7))):
        cls = int(rng.integers(1, 4))
        r = float(rng.uniform(0.1, 0.22) * size)
        cy, cx = _centre(rng, size, r, placed)
        placed.append((cy, cx, r))
        colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        mask = Image.new("L", (size, size), 0)
        if cls == 1:
            shape = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(shape, fill=colour)
            ImageDraw.Draw(mask).ellipse(shape, fill=1)
        else:
            n = 4 if cls == 2 else 3
            theta = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
            pts = [(float(cx + r * np.cos(t)), float(cy + r * np.sin(t))) for t in theta]
            draw.polygon(pts, fill=colour)
            ImageDraw.Draw(mask).polygon(pts, fill=1)
        full.append(np.asarray(mask, np.uint8))
        classes.append(cls)
    full_masks = np.stack(full)
    # Visible part: not covered by any later shape.
    covered_after = np.zeros((size, size), bool)
    visible = np.zeros_like(full_masks)
    for i in range(len(full) - 1, -1, -1):
        visible[i] = full_masks[i] & ~covered_after
        covered_after |= full_masks[i].astype(bool)
    keep = visible.reshape(len(full), -1).sum(axis=1) >= min_visible
    rgb = np.asarray(canvas, np.float32) + rng.normal(0, 10, (size, size, 3))
    return ShapesImage(image=np.clip(rgb, 0, 255).astype(np.uint8), masks=visible[keep],
                       classes=np.asarray(classes, np.int64)[keep], full_masks=full_masks[keep])


def load_shapes_item(item: Item) -> Loaded:
    """``load`` for :func:`write_dataset`: generates the image from ``item.payload``."""
    p = item.payload
    ex = make_instance_example(example_rng(p["seed"], p["split"], p["index"]), p["size"], p["min_visible"])
    buf = io.BytesIO()
    Image.fromarray(ex.image).save(buf, format="PNG", compress_level=1)
    n = len(ex.classes)
    return Loaded(image=buf.getvalue(), image_format="png", height=p["size"], width=p["size"],
                  instances=Instances(classes=ex.classes, masks=ex.masks, is_crowd=np.zeros(n, np.int64)))


def write_shapes_instances(out: str, *, num_train: int = 400, num_val: int = 100, size: int = 64, seed: int = 0,
                           min_visible: int = 20, workers: Optional[int] = None, shard_mb: float = 64,
                           overwrite: bool = False, log=print) -> dict:
    """Generates and writes the dataset; returns the manifest.

    Raises:
      ValueError: ``size < 16``, a negative count, no examples at all or ``min_visible < 1``.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16. Received: size={size}")
    if min_visible < 1:
        raise ValueError(f"min_visible must be >= 1. Received: min_visible={min_visible}")
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"need a positive number of examples. Received: num_train={num_train}, num_val={num_val}")
    splits = {}
    for split, n in (("train", num_train), ("val", num_val)):
        if n:
            splits[split] = [
                Item(key=f"{split}_{i:05d}", image_path=f"<shapes {split} {i}>", mask_path=f"<shapes {split} {i}>",
                     size_hint=size * size * 4,
                     payload={"seed": seed, "split": split, "index": i, "size": size, "min_visible": min_visible})
                for i in range(n)
            ]
    log(f"shapes_instances: generating {cli.count_items(splits)} images of {size}x{size} (seed {seed}).")
    manifest = write_dataset(out, splits, load_shapes_item, INFO, workers=workers,
                             shard_bytes=int(shard_mb * (1 << 20)), overwrite=overwrite, log=log,
                             extra_manifest={"source": {"converter": "data_prep.shapes_instances", "seed": seed,
                                                        "size": size, "min_visible": min_visible}})
    log(summary(manifest))
    return manifest


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.shapes_instances``."""
    flags.DEFINE_integer("num_train", 400, "Training images.")
    flags.DEFINE_integer("num_val", 100, "Validation images.")
    flags.DEFINE_integer("size", 64, "Image side in pixels.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_integer("min_visible", 20, "Instances with fewer visible pixels are dropped.")
    cli.define_output_flags()
    flags.mark_flag_as_required("out_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.exit_on_error(lambda: write_shapes_instances(
        FLAGS.out_dir, num_train=FLAGS.num_train, num_val=FLAGS.num_val, size=FLAGS.size, seed=FLAGS.seed,
        min_visible=FLAGS.min_visible, workers=FLAGS.workers, shard_mb=FLAGS.shard_mb, overwrite=FLAGS.overwrite))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
