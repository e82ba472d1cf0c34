"""What every builder shares around its layers: argument checks and weight loading."""

from __future__ import annotations

from typing import Optional, Tuple

import keras
import tensorflow as tf


def check_common_args(num_classes, input_shape, weights=None, min_size: int = 1) -> None:
    """Validates the arguments every builder shares.

    Args:
      num_classes: number of output classes, an int >= 1.
      input_shape: ``(H, W, C)`` with ``H``/``W`` ints or ``None`` (dynamic).
      weights: ``None`` or a path to a ``.weights.h5`` file.
      min_size: the smallest static ``H``/``W`` the architecture accepts.

    Raises:
      ValueError: naming the offending argument and the value received.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1. Received: num_classes={num_classes!r}")
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            "input_shape must be (height, width, channels), with None for a dynamic size. "
            f"Received: input_shape={input_shape!r}"
        )
    h, w, c = input_shape
    if not isinstance(c, int) or c < 1:
        raise ValueError(f"input_shape channels must be a positive int. Received: input_shape={input_shape!r}")
    for side in (h, w):
        if side is not None and (not isinstance(side, int) or side < min_size):
            raise ValueError(
                f"input_shape height and width must be None or ints >= {min_size} for this "
                f"architecture. Received: input_shape={input_shape!r}"
            )
    if weights is not None and not str(weights).endswith(".weights.h5"):
        raise ValueError(
            "weights must be None or a path to a '.weights.h5' file saved with "
            f"model.save_weights(). Received: weights={weights!r}"
        )


def check_positive_ints(**values) -> None:
    """Raises ``ValueError("x must be an int >= 1. Received: x=...")`` for the first bad value."""
    for arg, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1. Received: {arg}={value!r}")


def static_hw(input_shape) -> Tuple[Optional[int], Optional[int]]:
    """Returns the static ``(H, W)`` of an ``input_shape`` (``None`` where dynamic)."""
    return input_shape[0], input_shape[1]


def load_weights_if_given(model: keras.Model, weights: Optional[str]) -> keras.Model:
    """Loads a whole-model ``.weights.h5`` file into ``model`` when ``weights`` is set."""
    if weights is not None:
        if not tf.io.gfile.exists(weights):
            raise ValueError(f"weights file not found. Received: weights={weights!r}")
        model.load_weights(weights)
    return model


def copy_weights_by_name(model: keras.Model, reference: keras.Model, received: str,
                         missing_hint: str = "", shape_hint: str = "") -> keras.Model:
    """Copies every weighted layer of ``reference`` into the same-named layer of ``model``.

    How backbones load ``keras.applications`` weight files: layer names match, so weights
    transfer by name whatever else the segmentation model adds.

    Raises:
      ValueError: a reference layer is missing from ``model`` or has other weight shapes;
        the message ends with ``Received: backbone_weights=...``.
    """
    for ref_layer in reference.layers:
        values = ref_layer.get_weights()
        if not values:
            continue
        try:
            layer = model.get_layer(ref_layer.name)
        except ValueError as err:
            raise ValueError(
                f"Model {model.name!r} has no layer {ref_layer.name!r} of the reference weights"
                f"{missing_hint}. Received: backbone_weights={received!r}"
            ) from err
        shapes = [tuple(v.shape) for v in layer.get_weights()]
        if shapes != [v.shape for v in values]:
            raise ValueError(
                f"Layer {ref_layer.name!r} has weight shapes {shapes}, the reference has "
                f"{[v.shape for v in values]}{shape_hint}. Received: backbone_weights={received!r}"
            )
        layer.set_weights(values)
    return model
