"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015). https://arxiv.org/abs/1505.04597"""

from __future__ import annotations

from typing import List, Optional, Tuple

import keras

from keras_seg.models.blocks import (
    CenterCropLike,
    CropLike,
    InputSizeCheck,
    PadToMultiple,
    check_common_args,
    conv_bn_act,
    load_weights_if_given,
    logits_layer,
)
from keras_seg.registry import register

__all__ = ["build_unet", "valid_unet_sizes", "valid_unet_output_size"]


def _valid_geometry(depth: int) -> Tuple[int, int, int]:
    """(multiple, offset, minimum input) of the sizes a valid-padding U-Net accepts.

    Each level loses 4 pixels to two 3x3 valid convolutions and halves the size, so an input
    ``s`` works iff ``s = 2**depth * t + 4 * (2**depth - 1)``; the expanding path then gives
    ``2**depth * (t - 4) - 4 * (2**depth - 1)`` output pixels, which must be >= 1.
    """
    m = 2**depth
    offset = 4 * (m - 1)
    t_min = 4 + -(-(offset + 1) // m)  # smallest t with m*(t-4) - offset >= 1
    return m, offset, m * t_min + offset


def valid_unet_output_size(size: int, depth: int = 4) -> int:
    """Output side length of a valid-padding U-Net for input side ``size`` (572 -> 388).

    Raises:
      ValueError: if ``size`` is not an accepted input size; the message lists the nearest.
    """
    m, offset, minimum = _valid_geometry(depth)
    if size < minimum or (size - offset) % m:
        below, above = valid_unet_sizes(size, depth)
        raise ValueError(
            f"padding='valid' U-Net of depth {depth} cannot take an input side of {size}: sides "
            f"must be {offset} + {m}*k and >= {minimum}. Nearest accepted sizes: "
            f"{[s for s in (below, above) if s is not None]}. Received: input side={size}"
        )
    t = (size - offset) // m
    return m * (t - 4) - offset


def valid_unet_sizes(size: int, depth: int = 4) -> Tuple[Optional[int], int]:
    """The accepted input sides nearest to ``size``: (largest <= size or None, smallest >= size)."""
    m, offset, minimum = _valid_geometry(depth)
    if size < minimum:
        return None, minimum
    below = offset + ((size - offset) // m) * m
    above = below if below == size else below + m
    return below, above


def _double_conv(x, filters, name, padding, batch_norm):
    x = conv_bn_act(x, filters, f"{name}_1", padding=padding, use_bn=batch_norm)
    return conv_bn_act(x, filters, f"{name}_2", padding=padding, use_bn=batch_norm)


@register(
    "unet",
    tiny=dict(base_width=8, depth=2, batch_norm=True),
    paper="Ronneberger et al., U-Net, MICCAI 2015, https://arxiv.org/abs/1505.04597",
)
def build_unet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    base_width: int = 64,
    depth: int = 4,
    batch_norm: bool = False,
    dropout: float = 0.5,
    padding: str = "same",
    weights: Optional[str] = None,
    name: str = "unet",
) -> keras.Model:
    """Builds U-Net, returning logits ``(B, H, W, num_classes)``.

    The defaults are the paper's network: 5 levels of two 3x3 convolutions (64 ... 1024
    filters), 2x2 max pooling, 2x2 up-convolutions that halve the channels, copy-and-concat
    skips, dropout at the end of the contracting path and a final 1x1 convolution.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      base_width: filters of the first level; level ``i`` has ``base_width * 2**i``.
      depth: number of 2x2 poolings (the paper uses 4).
      batch_norm: add batch normalisation after every 3x3 convolution (not in the paper).
      dropout: dropout rate at the end of the contracting path (paper: 0.5); 0 disables it.
      padding: ``"same"`` (default) returns logits at exactly the input size for any input:
        the input is zero-padded to a multiple of ``2**depth`` and the logits are cropped
        back. ``"valid"`` is the paper's unpadded network with crop-and-concat: a 572x572
        input gives 388x388 logits, and only sizes ``4*(2**depth-1) + 2**depth*k`` are taken.
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for bad arguments, or a static input size the valid network cannot take
        (the message gives the nearest accepted sizes).
    """
    check_common_args(num_classes, input_shape, weights)
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1. Received: depth={depth!r}")
    if not isinstance(base_width, int) or base_width < 1:
        raise ValueError(f"base_width must be an int >= 1. Received: base_width={base_width!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid'. Received: padding={padding!r}")
    if padding == "valid":
        for side in input_shape[:2]:
            if side is not None:
                valid_unet_output_size(side, depth)  # raises with the nearest sizes

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    if padding == "same":
        x = PadToMultiple(2**depth, name="pad")(inputs)
    else:
        m, offset, minimum = _valid_geometry(depth)
        x = InputSizeCheck(m, offset, minimum, name="size_check")(inputs)

    skips: List = []
    for i in range(depth):
        x = _double_conv(x, base_width * 2**i, f"enc{i + 1}", padding, batch_norm)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{i + 1}_pool")(x)
    x = _double_conv(x, base_width * 2**depth, "bottleneck", padding, batch_norm)
    if dropout:
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)

    for i in reversed(range(depth)):
        filters = base_width * 2**i
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{i + 1}_up")(x)
        x = keras.layers.Activation("relu", name=f"dec{i + 1}_up_relu")(x)
        skip = skips[i]
        if padding == "valid":
            skip = CenterCropLike(name=f"dec{i + 1}_crop")(skip, x)
        x = keras.layers.Concatenate(name=f"dec{i + 1}_concat")([skip, x])
        x = _double_conv(x, filters, f"dec{i + 1}", padding, batch_norm)

    x = logits_layer(x, num_classes, name="logits_full" if padding == "same" else "logits")
    if padding == "same":
        x = CropLike(name="logits", dtype="float32")(x, inputs)
    model = keras.Model(inputs, x, name=name)
    return load_weights_if_given(model, weights)
