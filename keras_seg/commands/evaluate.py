"""The ``evaluate`` command's flags and entry point (the CLI layer of :mod:`keras_seg.evaluate`).

``python -m keras_seg.evaluate`` and ``keras-seg evaluate`` end here; the library functions stay in
:mod:`keras_seg.evaluate`, which never reads flags.
"""

from __future__ import annotations


from absl import app, flags

from keras_seg.cli import user_errors
from keras_seg.evaluate import run


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from keras_seg.checkpoints import CheckpointError  # pylint: disable=import-outside-toplevel
    from keras_seg.registry import parse_inference_options  # pylint: disable=import-outside-toplevel

    from keras_seg.flags import inference_from_flags  # pylint: disable=import-outside-toplevel

    with user_errors(CheckpointError, ValueError, OSError):
        run(FLAGS.model_dir, FLAGS.split, FLAGS.data_dir, FLAGS.checkpoint, FLAGS.batch_size, FLAGS.output,
            jit_compile=FLAGS.jit_compile, mixed_precision=FLAGS.mixed_precision,
            inference=inference_from_flags(FLAGS), pictures=FLAGS.pictures, sheet_images=FLAGS.sheet_images,
            inference_options=parse_inference_options(FLAGS.inference_options), group_by=FLAGS.group_by or None)


def define_flags() -> None:
    """Defines the command's flags (once per process)."""
    flags.DEFINE_string("model_dir", None, "Training directory (holds model_config.json and ckpt/).")
    flags.DEFINE_string("split", "val", "Split to evaluate.")
    flags.DEFINE_string("data_dir", None, "Dataset directory (default: the one the model trained on).")
    flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint path prefix.")
    flags.DEFINE_integer("batch_size", 1, "Images per batch; a batch only ever holds images of one size (never padded), so every batch size gives the scores of batch 1.")
    flags.DEFINE_string("output", None, "JSON output path (default: model_dir/eval/evaluate-<split>-<step><mode>.json).")
    flags.DEFINE_alias("out", "output")  # the older spelling
    flags.DEFINE_bool("jit_compile", False, "Run the forward pass under XLA (compiled once per image size; "
                      "benchmarks/RESULTS.md compares it with plain tf.function).")
    from keras_seg.precision import HELP, PRECISIONS  # pylint: disable=import-outside-toplevel

    flags.DEFINE_enum("mixed_precision", "float32", PRECISIONS,
                      HELP + " Of the forward pass, whatever the run was trained under (default float32).")
    from keras_seg.flags import define_inference_flags  # pylint: disable=import-outside-toplevel

    define_inference_flags()
    flags.DEFINE_bool("pictures", True, "Write the confusion-matrix, per-class IoU and image-sheet PNGs next to the JSON (needs matplotlib).")
    from keras_seg.registry import INFERENCE_OPTIONS_HELP  # pylint: disable=import-outside-toplevel

    flags.DEFINE_list("inference_options", [], INFERENCE_OPTIONS_HELP)
    flags.DEFINE_string("group_by", None, "Also score each group of images sharing this field of the records' "
                        "metadata (CamVid: sequence, the drive; Cityscapes: city): a row per group, and "
                        "'groups' in the JSON.")
    flags.DEFINE_integer("sheet_images", 4, "Images in the image sheet (0: no sheet).", lower_bound=0)
    flags.mark_flag_as_required("model_dir")


def run_command() -> None:
    """Defines the flags and runs :func:`main` under absl, with flagfiles expanded."""
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
