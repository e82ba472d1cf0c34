"""Command-line flags of ``python -m keras_seg.train``, generated from :class:`TrainConfig`.

Every training option is declared once, as a field of :class:`keras_seg.options.TrainConfig`
with its help, kind, parser and bounds; :func:`define_flags`, :func:`config_from_flags`,
:func:`flags_to_text` (``model_dir/flags.txt``) and :data:`TRAIN_FLAGS` all come from those
declarations. Only ``train.py``'s ``__main__`` (and the realsize benchmark) define the flags,
and nothing below reads ``FLAGS``.
"""

from __future__ import annotations

import dataclasses

from absl import flags

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
