"""Checks for the TensorFlow distribution, which setup.cfg leaves to an extra."""

from __future__ import annotations

import importlib.util

_HINT = (
    "keras_seg needs TensorFlow 2.21, which is installed through an extra so that the CPU "
    "and GPU builds never fight over the `tensorflow` module:\n"
    "  CPU:  pip install -e '.[cpu]'   (tensorflow-cpu)\n"
    "  GPU:  pip install -e '.[gpu]'   (tensorflow[and-cuda])"
)


def require_tensorflow() -> None:
    """Raises ImportError with install instructions when TensorFlow is missing."""
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError("TensorFlow is not installed. " + _HINT)
