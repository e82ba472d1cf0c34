r"""Training entry point.

    python -m keras_seg.train --flagfile=configs/unet.cfg [--model_dir=runs/unet]

Flagfiles nest (``--flagfile`` inside a flagfile) and the last value wins. Rerunning the
same command resumes from the latest checkpoint in ``--model_dir``. With ``TF_CONFIG`` (or
``--cluster=slurm`` under ``srun``) naming several tasks, every task runs this command and
they train together (docs/distributed.md). Exit status: 0 done, 1 error, 75 a worker was
lost (rerun every worker to resume).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]} (flags start with --).")
    from keras_seg import flags as ks_flags  # pylint: disable=import-outside-toplevel
    from keras_seg.distribute import RESTART_EXIT_CODE, WorkerLostError  # pylint: disable=import-outside-toplevel
    from keras_seg.training import NonFiniteLossError, train  # pylint: disable=import-outside-toplevel

    try:
        cfg = ks_flags.config_from_flags(FLAGS)
        result = train(cfg, flags_text=ks_flags.flags_to_text(FLAGS), log=lambda m: print(m, flush=True))
    except WorkerLostError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(RESTART_EXIT_CODE)  # pylint: disable=protected-access  # TF's shutdown would wait for the lost worker
    except (ValueError, OSError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if result.eval_scores is not None:
        from keras_seg.training import format_iou_table  # pylint: disable=import-outside-toplevel
        from keras_seg.checkpoints import read_model_config  # pylint: disable=import-outside-toplevel

        print(format_iou_table(result.eval_scores, read_model_config(cfg.model_dir)["class_names"]))


if __name__ == "__main__":
    from keras_seg.flags import define_flags  # pylint: disable=import-outside-toplevel

    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
