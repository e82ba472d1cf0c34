r"""Packages a training run as shipped weights (see :mod:`keras_seg.pretrained`).

    python -m keras_seg.pretrained --model_dir=runs/zoo/enet_camvid --name=enet_camvid \
        --checkpoint=best --metrics=val=runs/zoo/enet_camvid/eval/evaluate-val-00002400.json \
        --trained=config=configs/zoo/enet_camvid.cfg --trained=wall_hours=1.9
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_seg.cli import user_errors  # noqa: E402

FLAGS = flags.FLAGS


def _pairs(items, flag):
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--{flag} must be key=value. Received: {flag}={item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def main(argv):
    del argv
    from keras_seg.pretrained import package  # pylint: disable=import-outside-toplevel

    with user_errors(ValueError, OSError):
        trained = _pairs(FLAGS.trained, "trained")
        for key, value in trained.items():
            try:
                trained[key] = float(value) if "." in value else int(value)
            except ValueError:
                pass
        scales = tuple(float(v) for v in FLAGS.scales) if FLAGS.scales else None
        paths = package(FLAGS.model_dir, FLAGS.name, FLAGS.checkpoint, _pairs(FLAGS.metrics, "metrics"), trained,
                        directory=FLAGS.out_dir or os.path.dirname(os.path.abspath(__file__)), scales=scales)
    for path in paths:
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    flags.DEFINE_string("model_dir", None, "Training directory to package.", required=True)
    flags.DEFINE_string("name", None, "Entry name, <model>_<dataset>, e.g. enet_camvid.", required=True)
    flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint prefix.")
    flags.DEFINE_multi_string("metrics", [], "split=PATH of an evaluate JSON of that checkpoint (repeatable).")
    flags.DEFINE_multi_string("trained", [], "key=value about the training (config, wall_hours, machine; repeatable).")
    flags.DEFINE_list("scales", [], "Inference scales the metrics were measured at, e.g. 0.5 for a model trained "
                      "at half resolution (default: the run's --eval_scales, else 1).")
    flags.DEFINE_string("out_dir", None, "Folder to write to (default: the installed keras_seg/pretrained).")
    flags.DEFINE_alias("out", "out_dir")  # the older spelling
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
