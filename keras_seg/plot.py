r"""Learning curves of a training run, from the TensorBoard files the trainer writes.

    python -m keras_seg.plot --model_dir=runs/zoo/enet_camvid [--out=curves.png] [--csv=curves.csv]

Draws train loss, learning rate and val mean IoU against the step, and val mean IoU against
wall-clock hours, into one PNG (default ``<model_dir>/curves.png``). ``--csv`` also writes the
evaluation curve as ``step,hours,mean_iu`` rows. Hours count from the moment the trainer
opened its summary files (after building the model), so a resumed run's hours include the
time it was stopped.

matplotlib is an optional dependency (``pip install keras_seg[plot]``): the rest of the
package, TFLite inference included, does not need it.
"""

from __future__ import annotations

import csv
import glob
import os
import sys
from typing import Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
Series = Dict[str, List[Tuple[int, float, float]]]  # tag -> [(step, wall_time, value)]


def read_scalars(event_dir: str) -> Tuple[Series, float]:
    """``({tag: [(step, wall_time, value), ...]}, first wall_time)`` of the event files in ``event_dir``.

    A step logged twice (a resumed run repeats the steps after its last checkpoint) keeps
    the later value.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    files = sorted(glob.glob(os.path.join(event_dir, "events.out.tfevents.*")))
    series: Dict[str, Dict[int, Tuple[float, float]]] = {}
    start = float("inf")
    for path in files:
        try:
            for raw in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(raw.numpy())
                start = min(start, event.wall_time)
                for value in event.summary.value:
                    number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                              else float(value.simple_value))
                    series.setdefault(value.tag, {})[int(event.step)] = (event.wall_time, number)
        except tf.errors.DataLossError as e:  # a run killed mid-write leaves a truncated last record
            print(f"warning: {path}: truncated at the end ({e.message.splitlines()[0]}); using what precedes it.",
                  file=sys.stderr)
    out = {tag: sorted((s, t, v) for s, (t, v) in points.items()) for tag, points in series.items()}
    return out, start


def curves(model_dir: str) -> Dict[str, object]:
    """The train and eval series of ``model_dir`` and the run's start time; ValueError if none."""
    train, t0 = read_scalars(os.path.join(model_dir, "train"))
    evals, t1 = read_scalars(os.path.join(model_dir, "eval"))
    if not train and not evals:
        raise ValueError(f"{model_dir}/train and {model_dir}/eval hold no TensorBoard scalars: not a training "
                         "directory, or nothing was logged yet (the trainer logs every --log_every steps).")
    return {"train": train, "eval": evals, "start": min(t0, t1)}


def write_csv(data: Dict[str, object], path: str) -> None:
    """The eval curve as ``step,hours,mean_iu`` (through a temporary file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "hours", "mean_iu"])
        for step, wall, value in data["eval"].get("mean_iu", []):
            w.writerow([step, f"{(wall - data['start']) / 3600:.4f}", f"{value:.4f}"])
    os.replace(tmp, path)


def plot(data: Dict[str, object], path: str, title: str = "") -> None:
    """Writes the 2x2 learning-curve figure to ``path`` (PNG, through a temporary file)."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ValueError("plotting needs matplotlib: pip install 'keras_seg[plot]' (or matplotlib).") from e
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [(axes[0, 0], data["train"], "loss", "train loss", False),
              (axes[0, 1], data["train"], "learning_rate", "learning rate", False),
              (axes[1, 0], data["eval"], "mean_iu", "val mean IoU", False),
              (axes[1, 1], data["eval"], "mean_iu", "val mean IoU", True)]
    for ax, series, tag, label, hours in panels:
        points = series.get(tag, [])
        if hours:
            xs = [(wall - data["start"]) / 3600 for _, wall, _ in points]
        else:
            xs = [step for step, _, _ in points]
        ax.plot(xs, [v for _, _, v in points], marker="o" if tag == "mean_iu" else None, markersize=3)
        ax.set_xlabel("wall-clock hours" if hours else "step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if tag == "mean_iu" and points:
            best = max(points, key=lambda p: p[2])
            ax.set_title(f"best {best[2]:.4f} at step {best[0]}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv):
    del argv
    try:
        data = curves(FLAGS.model_dir)
        out = FLAGS.out or os.path.join(FLAGS.model_dir, "curves.png")
        plot(data, out, FLAGS.title or os.path.basename(os.path.normpath(FLAGS.model_dir)))
        print(f"wrote {out}")
        if FLAGS.csv:
            write_csv(data, FLAGS.csv)
            print(f"wrote {FLAGS.csv}")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.DEFINE_string("model_dir", None, "Training directory (its train/ and eval/ TensorBoard files).", required=True)
    flags.DEFINE_string("out", None, "PNG path (default: <model_dir>/curves.png).")
    flags.DEFINE_string("csv", None, "Also write the eval curve as step,hours,mean_iu CSV here.")
    flags.DEFINE_string("title", None, "Figure title (default: the model_dir's name).")
    app.run(main)
