r"""Time per training step of every registered model at its tiny size, as a table.

    python benchmarks/tiny_step_times.py [--size 64] [--batch 2] [--steps 5]

Reports the tiny parameter count, the first ``train_on_batch`` (trace + step) and the mean
of the following steps; the baseline column is the tiny U-Net's step, for ratios.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_seg  # noqa: E402
from keras_seg.losses import WeightedPixelCrossEntropy  # noqa: E402


def time_model(name: str, size: int, batch: int, steps: int, num_classes: int = 5):
    """Returns (tiny params, first step s, mean later step s)."""
    keras.utils.set_random_seed(0)
    model = keras_seg.build_model(name, num_classes, **keras_seg.tiny_options(name))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=WeightedPixelCrossEntropy(num_classes))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 3)).astype("float32")
    y = rng.integers(0, num_classes, size=(batch, size, size)).astype("int32")
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return model.count_params(), first, (time.perf_counter() - t0) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--models", default=",".join(keras_seg.list_models()))
    a = p.parse_args()
    rows = [(n, *time_model(n, a.size, a.batch, a.steps)) for n in a.models.split(",")]
    base = dict((r[0], r[3]) for r in rows).get("unet")
    print(f"tiny models, batch {a.batch} at {a.size}x{a.size}, {a.steps} timed steps after the first")
    print(f"| model | tiny params | first step (trace) s | step ms | step / unet |")
    print("|---|---:|---:|---:|---:|")
    for name, params, first, step in rows:
        ratio = f"{step / base:.2f}" if base else "n/a"
        print(f"| {name} | {params:,} | {first:.2f} | {step * 1000:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
