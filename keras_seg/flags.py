"""Command-line flags, generated from option declarations: the flag layer of every command.

Every training option is declared once, as a field of :class:`keras_seg.options.TrainConfig`
with its help, kind, parser and bounds; :func:`define_flags`, :func:`config_from_flags`,
:func:`flags_to_text` (``model_dir/flags.txt``) and :data:`TRAIN_FLAGS` all come from those
declarations. The same functions serve ``ExportConfig`` and the benchmarks' ``BenchSpec``.
:func:`define_inference_flags` / :func:`inference_from_flags` give evaluate and predict their
``--mode --window --stride --scales --flip``. Only the commands' ``main`` functions define
flags, and library code below them takes config objects, never ``FLAGS``.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from keras_seg import inference
from keras_seg.options import (  # noqa: F401  (re-exported: the names callers use)
    CLUSTERS,
    OPTIMIZERS,
    PREPROCESSING_CHOICES,
    STRATEGIES,
    WEIGHT_DECAY_MODES,
    TrainConfig,
    from_values,
    options_of,
    parse_class_weights,
    parse_model_opts,
    to_flag_lines,
)

#: Every training flag, in declaration order (``flags.txt`` writes them in this order).
TRAIN_FLAGS = tuple(flag for _, flag in options_of(TrainConfig))

_DEFINE = {
    "string": flags.DEFINE_string, "integer": flags.DEFINE_integer, "float": flags.DEFINE_float,
    "bool": flags.DEFINE_bool, "list": flags.DEFINE_list, "multi_string": flags.DEFINE_multi_string,
}


def define_flags(config_class=TrainConfig, flag_values=flags.FLAGS) -> None:
    """Defines one absl flag per option of ``config_class`` on ``flag_values`` (call once)."""
    for field, flag in options_of(config_class):
        meta = field.metadata
        default = meta["flag_default"]
        default = None if default is dataclasses.MISSING else default
        if meta["kind"] == "enum":
            flags.DEFINE_enum(flag, default, list(meta["choices"]), meta["help"], flag_values=flag_values)
        else:
            default = list(default) if isinstance(default, tuple) else default
            _DEFINE[meta["kind"]](flag, default, meta["help"], flag_values=flag_values)
        for alias in meta["aliases"]:
            flags.DEFINE_alias(alias, flag, flag_values=flag_values)


def config_from_flags(f, config_class=TrainConfig):
    """Builds and validates the config of parsed absl flags ``f``."""
    cfg = from_values(config_class, {flag: getattr(f, flag) for _, flag in options_of(config_class)})
    cfg.validate()
    return cfg


def flags_to_text(f, config_class=TrainConfig) -> str:
    """The resolved training flags as a flagfile, for ``model_dir/flags.txt``."""
    return to_flag_lines(config_class, {flag: getattr(f, flag) for _, flag in options_of(config_class)})


def define_inference_flags() -> None:
    """``--mode --window --stride --scales --flip`` of evaluate and predict."""
    flags.DEFINE_enum("mode", "whole", inference.MODES, "whole: one pass over the image; slide: windows of --window every "
                      "--stride, overlapping probabilities averaged.")
    flags.DEFINE_list("window", [], "--mode=slide: window H,W.")
    flags.DEFINE_list("stride", [], "--mode=slide: stride H,W (default: two thirds of the window).")
    flags.DEFINE_list("scales", ["1"], "Average the probabilities over these resize factors, e.g. 0.5,0.75,1,1.25,1.5,1.75.")
    flags.DEFINE_bool("flip", False, "Also average over the horizontally mirrored image.")


def inference_from_flags(f) -> "inference.InferenceConfig":
    """The validated :class:`InferenceConfig` of parsed flags."""
    return inference.InferenceConfig(
        mode=f.mode, window=inference.parse_pair(f.window, "window"), stride=inference.parse_pair(f.stride, "stride"),
        scales=inference.parse_scales(f.scales), flip=f.flip,
    ).validate()
