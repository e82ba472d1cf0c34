"""What an export is asked for (:class:`ExportConfig`, also the export flags), what it
resolves to before anything is written (:class:`ExportPlan`) and what it returns
(:class:`ExportResult`)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Tuple

from keras_seg.options import option
from keras_seg.options import validate as validate_options
from keras_seg.registry import parse_inference_options

SAVED_MODEL = "saved_model"
TFLITE_KINDS = ("fp32", "fp16", "dynamic", "int8")
FORMATS = (SAVED_MODEL,) + tuple(f"tflite_{k}" for k in TFLITE_KINDS)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _parse_size(values) -> Optional[Tuple[int, int]]:
    if not values:
        return None
    try:
        return tuple(int(v) for v in values)
    except ValueError as e:
        raise ValueError(f"--tflite_size must be H,W integers. Received: tflite_size={list(values)!r}") from e


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What :func:`~keras_seg.export.export` needs. Each field is also the export flag of its
    name, declared once (:mod:`keras_seg.options`): its help, parser and bounds make the
    flags, the config and the validation."""

    model_dir: str = option(help="Training directory (model_config.json, ckpt/, best/).", kind="string")
    out: str = option(help="Output directory; see the module docstring for the layout.", kind="string",
                      flag="out_dir", aliases=("out",))
    formats: Tuple[str, ...] = option(
        FORMATS, f"Comma-separated subset of {','.join(FORMATS)}.", parse=tuple, flag_default=list(FORMATS),
        check=lambda v, c: bool(v) and all(f in FORMATS for f in v), want=f"a non-empty subset of {','.join(FORMATS)}")
    checkpoint: str = option("latest", "latest, best, or a checkpoint path prefix.")
    version: Optional[int] = option(None, "Version number (default: one more than the highest in --out).", kind="integer",
                                    check=lambda v, c: v is None or v >= 0, want="an integer >= 0")
    model_name: Optional[str] = option(None, "Serving model name (default: the model_dir's basename).", kind="string",
                                       check=lambda v, c: v is None or bool(_NAME_RE.match(v)),
                                       want="letters, digits, '_', '.', '-' (no '/')")
    tflite_size: Optional[Tuple[int, int]] = option(
        None, "Fixed TFLite input H,W (default: the training crop_size).", kind="list", parse=_parse_size,
        check=lambda v, c: v is None or (len(v) == 2 and min(v) >= 1), want="H,W with H, W >= 1")
    data_dir: Optional[str] = option(None, "Dataset for parity and int8 calibration (default: the training one).",
                                     kind="string")
    parity_split: str = option("val", "Split the parity report evaluates.")
    parity_images: int = option(50, "Images compared (the whole split if smaller; 0 skips).",
                                check=lambda v, c: v >= 0, want=">= 0")
    int8_split: Optional[str] = option(None, "Split of the int8 calibration tiles (default: the training split).",
                                       kind="string")
    int8_samples: int = option(100, "int8 calibration tiles.", check=lambda v, c: v >= 1, want=">= 1")
    tflite_fit: str = option("tile", "How TFLite parity runs images of other sizes (as predict --tflite).",
                             choices=("tile", "resize"))
    tile_overlap: float = option(0.25, "Tile overlap, fraction of the tile side.",
                                 check=lambda v, c: 0.0 <= v <= 0.9, want="in [0, 0.9]")
    warn_below: float = option(98.0, "Print a WARNING block under this agreement (percent).")
    inference_options: Dict[str, Any] = option(
        {}, "key=value options that pick another inference graph of the same trained variables, e.g. head=L2 "
        "exports a U-Net++ pruned to head L2 (keras_seg.registry.ModelSpec.inference_options); the metadata's "
        "model_options record it.", kind="list", parse=parse_inference_options, flag_default=[])

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        validate_options(self)


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """What one export writes where, resolved and checked before anything is written.

    Attributes:
      name: the serving model name.
      version: the version exported.
      serving_dir: ``<out>/NAME/N``, the SavedModel's final place.
      extras_dir: ``<out>/NAME_vN``, the TFLite models' and the parity report's.
      tflite_kinds: the TFLite kinds asked for (``fp32``, ...), in ``--formats`` order.
      size: the fixed TFLite input ``(H, W)`` (empty when neither given nor in the config).
      data_dir: the dataset of the parity report and the int8 calibration (may be ``None``
        when neither needs one).
    """

    name: str
    version: int
    serving_dir: str
    extras_dir: str
    tflite_kinds: List[str]
    size: Tuple[int, ...]
    data_dir: Optional[str]


@dataclasses.dataclass
class ExportResult:
    """What :func:`~keras_seg.export.export` wrote.

    Attributes:
      version: the version exported.
      paths: format -> path (the SavedModel directory or the ``.tflite`` file).
      report_path: the parity JSON (``None`` when ``parity_images`` is 0).
      report: the parity report dict (``None`` when skipped).
      warnings: the WARNING blocks printed (agreement under the threshold).
    """

    version: int
    paths: Dict[str, str]
    report_path: Optional[str]
    report: Optional[Dict[str, Any]]
    warnings: List[str]
