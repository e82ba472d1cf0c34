"""Exports a trained model for TF Serving (SavedModel) and LiteRT (TFLite), with a parity report.

``python -m keras_seg.export`` or ``keras-seg export`` (:mod:`keras_seg.export.__main__`,
whose docstring, the ``--help`` text, gives the flags and the layout of ``--out``), or from
Python::

    from keras_seg.export import ExportConfig, export
    result = export(ExportConfig(model_dir="runs/unet_shapes", out="exported"))

The parts:

- :mod:`~keras_seg.export.config`: :class:`ExportConfig` (its fields generate the flags), the resolved
  :class:`ExportPlan` and the :class:`ExportResult`;
- :mod:`~keras_seg.export.saved_model`: the serving SavedModel, its signatures and metadata;
- :mod:`~keras_seg.export.tflite`: the fixed-size TFLite source graph, its conversion and
  the ops the int8 model keeps in float32;
- :mod:`~keras_seg.export.report`: the parity report against the Keras model;
- :mod:`~keras_seg.export.exporter`: :func:`export`, which stages every format under a
  temporary name and renames the version into place.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=wrong-import-position
from keras_seg.export.config import (  # noqa: E402
    FORMATS,
    SAVED_MODEL,
    TFLITE_KINDS,
    ExportConfig,
    ExportPlan,
    ExportResult,
)
from keras_seg.export.exporter import dir_size, existing_versions, export  # noqa: E402
from keras_seg.export.report import write_parity_report  # noqa: E402
from keras_seg.export.saved_model import (  # noqa: E402
    METADATA_FILE,
    build_serving_archive,
    model_metadata,
    require_float32,
    write_saved_model,
)
from keras_seg.export.tflite import (  # noqa: E402
    FLOAT_TRANSPOSE_CONV_CHANNELS,
    INT8_FLOAT_OPS,
    convert_tflite,
    int8_float_ops,
    representative_tiles,
    transpose_convs,
    write_tflite_source,
)

__all__ = [
    "FLOAT_TRANSPOSE_CONV_CHANNELS", "FORMATS", "INT8_FLOAT_OPS", "METADATA_FILE", "SAVED_MODEL", "TFLITE_KINDS",
    "ExportConfig", "ExportPlan", "ExportResult", "build_serving_archive", "convert_tflite",
    "dir_size", "existing_versions", "export", "int8_float_ops", "model_metadata",
    "representative_tiles", "require_float32", "transpose_convs", "write_parity_report", "write_saved_model",
    "write_tflite_source",
]
