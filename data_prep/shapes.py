r"""The built-in demo dataset: synthetic shapes, generated on the fly (no licence issues).

Each image has a textured, noisy background and 2-5 overlapping shapes (disk, square,
triangle) in random colours drawn from the same distribution for every class, so colour
says nothing about the class: a model must learn shape. Classes: 0 background, 1 disk,
2 square, 3 triangle.

Usage::

    python -m data_prep.shapes --out DIR [--num_train 400 --num_val 100 --size 64]

writes ``DIR/images/{train,val}/*.png`` and ``DIR/masks/{train,val}/*.png``, the layout
``python -m data_prep.folder`` converts.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

CLASS_NAMES = ["background", "disk", "square", "triangle"]
PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200]]


def make_example(rng: np.random.Generator, size: int):
    """Returns ``(rgb uint8 (size, size, 3), mask uint8 (size, size))``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 200, 3)
    grad = rng.uniform(-60, 60, (2, 3))
    freq = rng.uniform(4, 14, 2)
    texture = 25 * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + rng.uniform(0, 6.3))
    img = base + grad[0] * xx[..., None] + grad[1] * yy[..., None] + texture[..., None]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    draw, mdraw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    for _ in range(rng.integers(2, 6)):
        cls = int(rng.integers(1, 4))
        r = rng.uniform(0.08, 0.2) * size
        cx, cy = rng.uniform(r, size - r, 2)
        colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        if cls == 1:
            shape = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(shape, fill=colour)
            mdraw.ellipse(shape, fill=cls)
        else:
            n = 4 if cls == 2 else 3
            theta = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
            pts = [(float(cx + r * np.cos(t)), float(cy + r * np.sin(t))) for t in theta]
            draw.polygon(pts, fill=colour)
            mdraw.polygon(pts, fill=cls)
    rgb = np.asarray(canvas, np.float32) + rng.normal(0, 12, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), np.asarray(mask, np.uint8)


def generate(out: str, num_train: int = 400, num_val: int = 100, size: int = 64, seed: int = 0,
             log=print) -> None:
    """Writes the PNG folders; the val split uses a different seed stream than train."""
    if size < 16:
        raise ValueError(f"size must be >= 16. Received: size={size}")
    for split, n, s in (("train", num_train, seed), ("val", num_val, seed + 1_000_003)):
        rng = np.random.default_rng(s)
        for sub in ("images", "masks"):
            os.makedirs(os.path.join(out, sub, split), exist_ok=True)
        for i in range(n):
            rgb, mask = make_example(rng, size)
            name = f"{split}_{i:05d}.png"
            Image.fromarray(rgb).save(os.path.join(out, "images", split, name))
            Image.fromarray(mask).save(os.path.join(out, "masks", split, name))
        log(f"shapes: wrote {n} {split} examples of {size}x{size} to {out}")


FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        generate(FLAGS.out_dir, FLAGS.num_train, FLAGS.num_val, FLAGS.size, FLAGS.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.DEFINE_string("out_dir", None, "Output folder for images/ and masks/.")
    flags.DEFINE_alias("out", "out_dir")  # the older spelling
    flags.DEFINE_integer("num_train", 400, "Training examples.")
    flags.DEFINE_integer("num_val", 100, "Validation examples.")
    flags.DEFINE_integer("size", 64, "Image side in pixels.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.mark_flag_as_required("out_dir")
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
