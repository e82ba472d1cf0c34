r"""Evaluation over many image sizes: the relaxed signature against one trace per size.

    python benchmarks/eval_retracing.py [--model=enet] [--sizes=40] [--rounds=2] [--results=PATH]

VOC's val split has hundreds of image sizes. ``keras_seg.training.evaluate`` runs its step
in a ``tf.function(reduce_retracing=True)``, which after two sizes traces one graph for any
size; the baseline is the same step in a plain ``tf.function``, which traces once per size
(what ``evaluate`` did before). Both evaluate the same ``--sizes`` random images of distinct
VOC-like sizes (sides 300-500) with the registry's paper model ``--model`` (random weights,
21 classes), alternately, ``--rounds`` times each, each round with fresh functions; the table
gives the traces, the seconds and the ratio baseline / ours (above 1: ours is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run as a script: make `benchmarks` and `keras_seg` importable
    sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_seg  # noqa: E402
from keras_seg.metrics import StreamingConfusionMatrixMetric  # noqa: E402
from keras_seg.training import evaluate  # noqa: E402


def _dataset(count: int, seed: int = 0) -> tf.data.Dataset:
    rng = np.random.default_rng(seed)
    sizes = set()
    while len(sizes) < count:
        sizes.add((int(rng.integers(300, 501)), int(rng.integers(300, 501))))
    items = [(rng.normal(size=(1, h, w, 3)).astype("float32"), rng.integers(0, 21, (1, h, w)).astype("int32"),
              np.ones((1, h, w), "float32")) for h, w in sorted(sizes)]
    return tf.data.Dataset.from_generator(
        lambda: iter(items),
        output_signature=(tf.TensorSpec((1, None, None, 3), tf.float32), tf.TensorSpec((1, None, None), tf.int32),
                          tf.TensorSpec((1, None, None), tf.float32)))


def _baseline(model, dataset) -> int:
    """The former evaluation loop: a plain tf.function, one trace per image size."""
    metric = StreamingConfusionMatrixMetric(21, 255)

    @tf.function
    def step(images, labels):
        metric.update_state(labels, model(images, training=False))

    for images, labels, _ in dataset:
        step(images, labels)
    return int(step.experimental_get_tracing_count())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="enet")
    p.add_argument("--sizes", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--results", default="", help="Append the table to this Markdown file ('': print only).")
    a = p.parse_args(argv)
    model = keras_seg.build_model(a.model, 21)
    ds = _dataset(a.sizes)
    times = {"baseline (tf.function)": [], "ours (reduce_retracing)": []}
    traces = {}
    for _ in range(a.rounds):
        for name in times:
            t0 = time.perf_counter()
            if name.startswith("ours"):
                traces[name] = evaluate(model, ds, 21, 255)["traces"]
            else:
                traces[name] = _baseline(model, ds)
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    from benchmarks.report import script_section  # pylint: disable=import-outside-toplevel

    base = best["baseline (tf.function)"]
    script_section(
        f"Evaluation over {a.sizes} image sizes ({a.model}, batch 1)",
        f"`python benchmarks/eval_retracing.py --model={a.model} --sizes={a.sizes} --rounds={a.rounds}`; "
        f"best of {a.rounds} alternating rounds; load average {os.getloadavg()[0]:.1f} at the end.",
        ["variant", "traces", "seconds", "baseline / ours"],
        [[name, traces[name], f"{sec:.1f}", f"{base / sec:.2f}"] for name, sec in best.items()], a.results)


if __name__ == "__main__":
    main()
