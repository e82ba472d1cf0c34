r"""Mask R-CNN training entry point.

    python -m keras_seg.detection.train --flagfile=configs/detection/shapes_maskrcnn.cfg [--model_dir=runs/x]

The flags are the fields of :class:`keras_seg.detection.options.DetectionTrainConfig`
(``--help`` lists them). Rerunning the same command resumes from the newest checkpoint in
``--model_dir``. Exit status: 0 done, 1 error.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from keras_seg.cli import user_errors  # noqa: E402
from keras_seg.detection.options import DetectionTrainConfig  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
    """Trains from the parsed flags; errors are one ``error: ...`` line and exit status 1."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]} (flags start with --).")
    if not FLAGS["verbosity"].present:  # checkpoint saves log INFO lines at every save
        logging.set_verbosity(logging.WARNING)
    from keras_seg.detection.evaluation import format_metrics  # pylint: disable=import-outside-toplevel
    from keras_seg.detection.trainer import train_detector  # pylint: disable=import-outside-toplevel
    from keras_seg.flags import config_from_flags, flags_to_text  # pylint: disable=import-outside-toplevel
    from keras_seg.training.loop import NonFiniteLossError  # pylint: disable=import-outside-toplevel

    with user_errors(ValueError, OSError, NonFiniteLossError):
        cfg = config_from_flags(FLAGS, DetectionTrainConfig)
        result = train_detector(cfg, flags_text=flags_to_text(FLAGS, DetectionTrainConfig),
                                log=lambda m: print(m, flush=True))
    if result.metrics is not None:
        print(format_metrics(result.metrics))


def define_flags() -> None:
    """One flag per field of :class:`DetectionTrainConfig` (call once per process)."""
    from keras_seg.flags import define_flags as define  # pylint: disable=import-outside-toplevel

    define(DetectionTrainConfig)


if __name__ == "__main__":
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
