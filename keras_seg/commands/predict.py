"""The ``predict`` command's flags and entry point (the CLI layer of :mod:`keras_seg.predict`).

``python -m keras_seg.predict`` and ``keras-seg predict`` end here; the library functions stay in
:mod:`keras_seg.predict`, which never reads flags.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from keras_seg.cli import user_errors
from keras_seg.predict import run, run_tflite


FLAGS = flags.FLAGS


def main(argv):
    # CheckpointError is a ValueError; not importing keras_seg.checkpoints keeps TensorFlow
    # out of the --tflite path.
    with user_errors(ValueError, OSError):
        if sum(map(bool, (FLAGS.model_dir, FLAGS.tflite, FLAGS.pretrained))) != 1:
            raise ValueError("pass exactly one of --model_dir (Keras checkpoint), --pretrained (shipped weights, "
                             "e.g. enet_camvid) or --tflite (exported model).")
        from keras_seg.flags import inference_from_flags  # pylint: disable=import-outside-toplevel
        from keras_seg.inference import InferenceConfig  # pylint: disable=import-outside-toplevel
        from keras_seg.registry import parse_inference_options  # pylint: disable=import-outside-toplevel

        inference = inference_from_flags(FLAGS)
        if FLAGS.pretrained and not FLAGS["scales"].present:  # the scales the shipped scores were measured at
            from keras_seg.pretrained import read_info, recorded_scales  # pylint: disable=import-outside-toplevel

            inference = dataclasses.replace(inference, scales=recorded_scales(read_info(FLAGS.pretrained))).validate()
        if FLAGS.tflite:
            if FLAGS.inference_options:
                raise ValueError("--inference_options applies to Keras prediction (--model_dir); a .tflite "
                                 "file holds one graph: export it with --inference_options instead.")
            if inference != InferenceConfig():
                raise ValueError("--mode, --window, --stride, --scales and --flip apply to Keras prediction "
                                 "(--model_dir, --pretrained); --tflite tiles with --tflite_fit and --tile_overlap.")
            run_tflite(FLAGS.tflite, argv[1:], FLAGS.out_dir, FLAGS.tflite_fit, FLAGS.tile_overlap,
                       num_threads=FLAGS.tflite_threads, save_probabilities=FLAGS.save_probabilities)
        else:
            run(FLAGS.model_dir, argv[1:], FLAGS.out_dir, FLAGS.checkpoint, pretrained=FLAGS.pretrained,
                inference=inference, save_probabilities=FLAGS.save_probabilities, batch_size=FLAGS.batch_size,
                inference_options=parse_inference_options(FLAGS.inference_options))


def define_flags() -> None:
    """Defines the command's flags (once per process)."""
    from keras_seg.registry import INFERENCE_OPTIONS_HELP  # pylint: disable=import-outside-toplevel

    flags.DEFINE_string("model_dir", None, "Training directory (Keras prediction).")
    flags.DEFINE_string("pretrained", None, "Shipped weights to predict with instead of --model_dir, e.g. "
                        "enet_camvid (keras_seg.pretrained.available() lists them).")
    flags.DEFINE_string("tflite", None, "A .tflite file from keras_seg.export (LiteRT prediction), instead of --model_dir.")
    flags.DEFINE_string("out_dir", "predictions", "Output folder.")
    flags.DEFINE_alias("out", "out_dir")  # the older spelling
    flags.DEFINE_integer("batch_size", 1, "Keras prediction: up to this many consecutive images of one size per "
                         "forward pass (never padded).", lower_bound=1)
    flags.DEFINE_bool("save_probabilities", False, "Also write <stem>_probs.npy, float32 (H, W, C) class probabilities.")
    flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint path prefix.")
    flags.DEFINE_list("inference_options", [], INFERENCE_OPTIONS_HELP)
    flags.DEFINE_enum("tflite_fit", "tile", ["tile", "resize"],
                      "--tflite: run other image sizes as overlapping tiles at native resolution, or resized.")
    flags.DEFINE_integer("tflite_threads", None, "--tflite: interpreter threads (default: every usable CPU; LiteRT's own default is 1).", lower_bound=1)
    flags.DEFINE_float("tile_overlap", 0.25, "--tflite tiling: overlap of neighbouring tiles, fraction of the tile side.")
    from keras_seg.flags import define_inference_flags  # pylint: disable=import-outside-toplevel

    define_inference_flags()


def run_command() -> None:
    """Defines the flags and runs :func:`main` under absl, with flagfiles expanded."""
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
