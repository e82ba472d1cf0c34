"""The ``plot`` command's flags and entry point (the CLI layer of :mod:`keras_seg.plot`).

``python -m keras_seg.plot`` and ``keras-seg plot`` end here; the library functions stay in
:mod:`keras_seg.plot`, which never reads flags.
"""

from __future__ import annotations

import os

from absl import app, flags

from keras_seg.cli import user_errors
from keras_seg.plot import curves, plot, write_csv


FLAGS = flags.FLAGS


def main(argv):
    del argv
    with user_errors(ValueError, OSError):
        data = curves(FLAGS.model_dir)
        out = FLAGS.output or os.path.join(FLAGS.model_dir, "curves.png")
        plot(data, out, FLAGS.title or os.path.basename(os.path.normpath(FLAGS.model_dir)))
        print(f"wrote {out}")
        if FLAGS.csv:
            write_csv(data, FLAGS.csv)
            print(f"wrote {FLAGS.csv}")


def define_flags() -> None:
    """Defines the command's flags (once per process)."""
    flags.DEFINE_string("model_dir", None, "Training directory (its train/ and eval/ TensorBoard files).", required=True)
    flags.DEFINE_string("output", None, "PNG path (default: <model_dir>/curves.png).")
    flags.DEFINE_alias("out", "output")  # the older spelling
    flags.DEFINE_string("csv", None, "Also write the eval curve as step,hours,mean_iu CSV here.")
    flags.DEFINE_string("title", None, "Figure title (default: the model_dir's name).")


def run_command() -> None:
    """Defines the flags and runs :func:`main` under absl, with flagfiles expanded."""
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
