r"""Pictures of a run: learning curves, confusion matrix, per-class IoU bars and image sheets.

Learning curves, from the TensorBoard files the trainer writes:

    python -m keras_seg.plot --model_dir=runs/zoo/enet_camvid [--out=curves.png] [--csv=curves.csv]

Draws train loss, learning rate and val mean IoU against the step, and val mean IoU against
wall-clock hours, into one PNG (default ``<model_dir>/curves.png``); the IoU panels name the
run's ``--eval_split`` from its ``flags.txt`` (val when absent). ``--csv`` also writes the
evaluation curve as ``step,hours,mean_iu`` rows. Hours count from the moment the trainer
opened its summary files (after building the model), so a resumed run's hours include the
time it was stopped.

:func:`confusion_png`, :func:`iou_bars_png` and :func:`sheet_png` draw what ``evaluate``
writes next to its JSON and what training sends to TensorBoard at each evaluation.

matplotlib is an optional dependency (``pip install keras_seg[plot]``): the rest of the
package, TFLite inference included, does not need it.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


Series = Dict[str, List[Tuple[int, float, float]]]  # tag -> [(step, wall_time, value)]


def read_scalars(event_dir: str) -> Tuple[Series, float]:
    """``({tag: [(step, wall_time, value), ...]}, first wall_time)`` of the event files in ``event_dir``.

    Only scalars: image summaries (the eval sheets) are skipped.

    A step logged twice (a resumed run repeats the steps after its last checkpoint) keeps
    the later value.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    files = sorted(glob.glob(os.path.join(event_dir, "events.out.tfevents.*")))
    series: Dict[str, Dict[int, Tuple[float, float]]] = {}
    images = set()
    start = float("inf")
    for path in files:
        try:
            for raw in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(raw.numpy())
                start = min(start, event.wall_time)
                for value in event.summary.value:
                    if value.HasField("tensor"):
                        array = tf.make_ndarray(value.tensor)
                        if array.ndim != 0 or array.dtype.kind not in "fiu":
                            images.add(value.tag)  # images and text: not a curve
                            continue
                        number = float(array)
                    else:
                        number = float(value.simple_value)
                    series.setdefault(value.tag, {})[int(event.step)] = (event.wall_time, number)
        except tf.errors.DataLossError as e:  # a run killed mid-write leaves a truncated last record
            print(f"warning: {path}: truncated at the end ({e.message.splitlines()[0]}); using what precedes it.",
                  file=sys.stderr)
    out = {tag: sorted((s, t, v) for s, (t, v) in points.items()) for tag, points in series.items()}
    return out, start


def curves(model_dir: str) -> Dict[str, object]:
    """The train and eval series of ``model_dir`` and the run's start time; ValueError if none."""
    from keras_seg.layout import ModelDir  # pylint: disable=import-outside-toplevel

    paths = ModelDir(model_dir)
    train, t0 = read_scalars(paths.train_dir)
    evals, t1 = read_scalars(paths.eval_dir)
    if not train and not evals:
        raise ValueError(f"{model_dir}/train and {model_dir}/eval hold no TensorBoard scalars: not a training "
                         "directory, or nothing was logged yet (the trainer logs every --log_every steps).")
    return {"train": train, "eval": evals, "start": min(t0, t1), "eval_split": _eval_split(paths.flags_txt)}


def _eval_split(flags_txt: str) -> str:
    """The split the run evaluated on, from its ``flags.txt`` (``val`` when the file or flag is absent)."""
    split = "val"
    if os.path.isfile(flags_txt):
        with open(flags_txt, encoding="utf-8") as f:
            for line in f:
                if line.startswith("--eval_split="):
                    split = line.strip().split("=", 1)[1] or split
    return split


def write_csv(data: Dict[str, object], path: str) -> None:
    """The eval curve as ``step,hours,mean_iu`` (through a temporary file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "hours", "mean_iu"])
        for step, wall, value in data["eval"].get("mean_iu", []):
            w.writerow([step, f"{(wall - data['start']) / 3600:.4f}", f"{value:.4f}"])
    os.replace(tmp, path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; ValueError saying how to install it."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ValueError("plotting needs matplotlib: pip install 'keras_seg[plot]' (or matplotlib).") from e
    return plt


def _save(fig, path: Optional[str]) -> bytes:
    """The figure as PNG bytes, also written to ``path`` (through a temporary file) if given."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    pyplot().close(fig)
    data = buf.getvalue()
    if path:
        tmp = f"{path}.tmp-{os.getpid()}.png"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return data


def confusion_png(cm, class_names: Sequence[str], path: Optional[str] = None, title: str = "") -> bytes:
    """Row-normalised confusion matrix (rows: truth, columns: prediction) with class names; PNG bytes."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    plt = pyplot()
    cm = np.asarray(cm, np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.005:
                ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or "confusion matrix (% of each true class)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def iou_bars_png(iu: Sequence[float], class_names: Sequence[str], path: Optional[str] = None,
                 title: str = "") -> bytes:
    """Horizontal bars of per-class IoU (NaN: class absent, drawn empty) and the mean; PNG bytes."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    plt = pyplot()
    iu = np.asarray(iu, np.float64)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.3 * n))
    ax.barh(range(n), np.nan_to_num(iu), color="tab:blue")
    for i, v in enumerate(iu):
        ax.text(min(np.nan_to_num(v) + 0.01, 0.9), i, "absent" if np.isnan(v) else f"{v:.3f}", va="center", fontsize=8)
    mean = float(np.nanmean(iu)) if np.isfinite(iu).any() else float("nan")
    ax.axvline(mean, color="tab:red", linestyle="--", label=f"mean IoU {mean:.3f}")
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "per-class IoU", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def sheet_png(rows: Sequence[Tuple[object, object, object]], palette, ignore_label: int,
              path: Optional[str] = None, title: str = "") -> bytes:
    """Image | ground truth | prediction | error map for each ``(image uint8 HxWx3, label HxW,
    prediction HxW)`` row, labels in the dataset's palette; errors red, correct green,
    ignored pixels black. PNG bytes."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    plt = pyplot()
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 2.6 * len(rows)), squeeze=False)
    for r, (image, label, pred) in enumerate(rows):
        label, pred = np.asarray(label), np.asarray(pred)
        error = np.zeros(label.shape + (3,), np.uint8)
        valid = label != ignore_label
        error[valid & (label == pred)] = (40, 160, 40)
        error[valid & (label != pred)] = (220, 30, 30)
        acc = (label == pred)[valid].mean() if valid.any() else float("nan")
        for c, (pic, name) in enumerate([(image, "image"), (lut[label], "ground truth"), (lut[pred], "prediction"),
                                         (error, f"errors (pixel acc {100 * acc:.1f}%)")]):
            axes[r, c].imshow(pic)
            axes[r, c].set_axis_off()
            if r == 0 or c == 3:
                axes[r, c].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot(data: Dict[str, object], path: str, title: str = "") -> None:
    """Writes the 2x2 learning-curve figure to ``path`` (PNG, through a temporary file)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    split = data.get("eval_split", "val")
    panels = [(axes[0, 0], data["train"], "loss", "train loss", False),
              (axes[0, 1], data["train"], "learning_rate", "learning rate", False),
              (axes[1, 0], data["eval"], "mean_iu", f"{split} mean IoU", False),
              (axes[1, 1], data["eval"], "mean_iu", f"{split} mean IoU", True)]
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
    _save(fig, path)


if __name__ == "__main__":
    from keras_seg.commands.plot import run_command  # pylint: disable=import-outside-toplevel

    run_command()
