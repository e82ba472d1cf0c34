r"""Exports a trained model for TF Serving (SavedModel) and LiteRT (TFLite), with a parity report.

    python -m keras_seg.export --model_dir=runs/unet_shapes --out=exported \
        [--formats=saved_model,tflite_fp32,tflite_fp16,tflite_dynamic,tflite_int8] \
        [--checkpoint=latest|best|PATH] [--version=N] [--model_name=NAME] [--tflite_size=H,W] \
        [--data_dir=DIR] [--parity_split=val] [--parity_images=50] [--int8_samples=100]

Layout of ``--out`` for version ``N`` of model ``NAME`` (default: the model_dir's name)::

    NAME/N/                       SavedModel; serve with --model_base_path=<out>/NAME
    NAME/N/assets.extra/keras_seg_metadata.json
    NAME_vN/NAME_fp32.tflite      + NAME_fp32.json sidecar (and _fp16, _dynamic, _int8)
    NAME_vN/parity.json           parity report (and parity.txt, the printed table)

Everything is written under a temporary name in ``--out`` and renamed into place, so a
model server watching ``NAME/`` never sees a half-written version.

What each format holds: :mod:`keras_seg.export.saved_model` (the signatures) and
:mod:`keras_seg.export.tflite` (the LiteRT models and their int8 ops).
"""

from absl import app, flags, logging

from keras_seg.cli import user_errors
from keras_seg.export.config import ExportConfig
from keras_seg.export.exporter import export

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the export flags, one per :class:`ExportConfig` field."""
    from keras_seg.flags import define_flags as define  # pylint: disable=import-outside-toplevel

    define(ExportConfig)
    flags.mark_flags_as_required(["model_dir", "out_dir"])


def main(argv):
    """The ``python -m keras_seg.export`` entry point, after :func:`define_flags`."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # TF's SavedModel writer logs pages of INFO lines
        logging.set_verbosity(logging.WARNING)
    from keras_seg.checkpoints import CheckpointError  # pylint: disable=import-outside-toplevel
    from keras_seg.flags import config_from_flags  # pylint: disable=import-outside-toplevel

    with user_errors(CheckpointError, ValueError, OSError):
        export(config_from_flags(FLAGS, ExportConfig))


if __name__ == "__main__":
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
