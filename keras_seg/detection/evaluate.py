r"""Box and mask AP of a trained Mask R-CNN run.

    python -m keras_seg.detection.evaluate --model_dir=runs/x [--split=val] [--checkpoint=latest|best|PATH]

Runs the inference model over the split and scores its detections at each image's stored
size with pycocotools (:mod:`keras_seg.detection.evaluation`); prints one line of AP, AP50
and AP75 for boxes and masks, and writes ``model_dir/eval/evaluate-<split>-<step>.json``
atomically (training's own evaluations are ``eval/metrics-<step>.json``; the command's
record is named by its split, so scoring another split never overwrites them).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_seg.cli import user_errors  # noqa: E402
from keras_seg.detection.options import DetectionEvalConfig  # noqa: E402

FLAGS = flags.FLAGS


def checkpoint_step(path: str) -> int:
    """The step of a ``.../ckpt-<step>`` checkpoint path (0 when it has none)."""
    found = re.search(r"ckpt-(\d+)$", path)
    return int(found.group(1)) if found else 0


def run(cfg: DetectionEvalConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Evaluates ``cfg.model_dir``; returns the record written to ``eval/evaluate-<split>-<step>.json``."""
    from keras_seg.detection.evaluation import (  # pylint: disable=import-outside-toplevel
        eval_dataset, evaluate_detector, format_metrics, metrics_record)
    from keras_seg.detection.run_dir import load_detector  # pylint: disable=import-outside-toplevel
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel
    from keras_seg.layout import ModelDir  # pylint: disable=import-outside-toplevel

    overrides = {"score_threshold": cfg.score_threshold} if cfg.score_threshold >= 0 else {}
    model, config, path = load_detector(cfg.model_dir, cfg.checkpoint, **overrides)
    data_dir = cfg.data_dir or config["data_dir"]
    data = eval_dataset(data_dir, cfg.split, tuple(config["image_size"]), cfg.batch_size, config["preprocessing"],
                        cfg.max_images)
    metrics = evaluate_detector(model, data, config["class_names"], log)
    step = checkpoint_step(path)
    record = {**metrics_record(metrics, step, cfg.split, path), "data_dir": os.path.abspath(data_dir)}
    out = ModelDir(cfg.model_dir).evaluate_json(cfg.split, step)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    atomic_write_json(out, record)
    log(f"{cfg.split} @ {path}: {format_metrics(metrics)}")
    log(f"Wrote {out}")
    return record


def main(argv):
    """Evaluates from the parsed flags; errors are one ``error: ...`` line and exit status 1."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from keras_seg.flags import config_from_flags  # pylint: disable=import-outside-toplevel

    with user_errors(ValueError, OSError):
        run(config_from_flags(FLAGS, DetectionEvalConfig))


if __name__ == "__main__":
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel
    from keras_seg.flags import define_flags  # pylint: disable=import-outside-toplevel

    define_flags(DetectionEvalConfig)
    app.run(main, argv=flagfile_argv())
