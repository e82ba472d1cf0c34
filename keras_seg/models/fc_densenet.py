"""FC-DenseNet ("Tiramisu"): Jégou et al., "The One Hundred Layers Tiramisu: Fully
Convolutional DenseNets for Semantic Segmentation", CVPR Workshops 2017.
https://arxiv.org/abs/1611.09326
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import keras

from keras_seg.models.blocks import (
    check_positive_ints,
    CropLike,
    PadToMultiple,
    batch_norm,
    check_common_args,
    load_weights_if_given,
    logits_layer,
)
from keras_seg.registry import register, variant

__all__ = ["build_fc_densenet", "build_fc_densenet56", "build_fc_densenet67", "build_fc_densenet103"]

_PAPER = "Jégou et al., The One Hundred Layers Tiramisu, CVPRW 2017, https://arxiv.org/abs/1611.09326"


def _bn_relu_conv(x, filters, kernel, dropout, name):
    """BN -> ReLU -> conv (with bias, as released) -> dropout: the paper's layer and TD core."""
    x = batch_norm(f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    x = keras.layers.Conv2D(filters, kernel, padding="same", kernel_initializer="he_uniform", name=f"{name}_conv")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


def dense_block(x, num_layers, growth_rate, dropout, name):
    """Dense block; returns (input and all new maps concatenated, the new maps only)."""
    new_maps: List = []
    for j in range(1, num_layers + 1):
        y = _bn_relu_conv(x, growth_rate, 3, dropout, f"{name}_l{j}")
        new_maps.append(y)
        x = keras.layers.Concatenate(name=f"{name}_l{j}_concat")([x, y])
    return x, new_maps


def build_fc_densenet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    first_filters: int = 48,
    growth_rate: int = 16,
    layers_per_block: Union[int, Sequence[int]] = (4, 5, 7, 10, 12, 15),
    dropout: float = 0.2,
    weights: Optional[str] = None,
    name: str = "fc_densenet",
) -> keras.Model:
    """Builds an FC-DenseNet, returning logits ``(B, H, W, num_classes)``.

    A 3x3 convolution (``first_filters``), then ``n`` dense blocks each followed by a
    transition down (BN, ReLU, 1x1 convolution keeping the width, dropout, 2x2 max pooling), a
    bottleneck dense block and ``n`` transitions up (3x3 stride-2 transposed convolution of
    only the maps the previous block created, concatenated with the skip) each followed by a
    dense block, and a 1x1 classifier. A dense-block layer is BN, ReLU, 3x3 convolution
    (``growth_rate`` maps) and dropout. The input is zero-padded to a multiple of ``2**n`` and
    the logits cropped back to the input size.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      first_filters: filters of the first convolution (48).
      growth_rate: maps each dense-block layer adds (12 or 16).
      layers_per_block: layers of the down blocks and the bottleneck, ``n + 1`` ints (the up
        blocks mirror the down blocks), or one int for every block.
      dropout: dropout rate after every convolution (0.2); 0 disables it.
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    check_positive_ints(first_filters=first_filters, growth_rate=growth_rate)
    if isinstance(layers_per_block, int) and not isinstance(layers_per_block, bool):
        layers_per_block = (layers_per_block,) * 6
    blocks = tuple(layers_per_block)
    if len(blocks) < 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in blocks):
        raise ValueError(
            "layers_per_block must be an int >= 1 or at least two ints >= 1 (down blocks, then the "
            f"bottleneck). Received: layers_per_block={layers_per_block!r}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    n_pool = len(blocks) - 1

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = PadToMultiple(2**n_pool, name="pad")(inputs)
    x = keras.layers.Conv2D(first_filters, 3, padding="same", kernel_initializer="he_uniform", name="first_conv")(x)
    skips = []
    for i in range(n_pool):
        x, _ = dense_block(x, blocks[i], growth_rate, dropout, f"down{i + 1}")
        skips.append(x)
        x = _bn_relu_conv(x, x.shape[-1], 1, dropout, f"td{i + 1}")
        x = keras.layers.MaxPooling2D(2, name=f"td{i + 1}_pool")(x)
    _, new_maps = dense_block(x, blocks[n_pool], growth_rate, dropout, "bottleneck")
    for i in reversed(range(n_pool)):
        level = i + 1
        y = keras.layers.Concatenate(name=f"tu{level}_gather")(new_maps) if len(new_maps) > 1 else new_maps[0]
        y = keras.layers.Conv2DTranspose(
            len(new_maps) * growth_rate, 3, strides=2, padding="same", kernel_initializer="he_uniform",
            name=f"tu{level}_conv",
        )(y)
        x = keras.layers.Concatenate(name=f"tu{level}_concat")([y, skips[i]])
        x, new_maps = dense_block(x, blocks[i], growth_rate, dropout, f"up{level}")
    x = logits_layer(x, num_classes, name="logits_full")
    outputs = CropLike(name="logits", dtype="float32")(x, inputs)
    return load_weights_if_given(keras.Model(inputs, outputs, name=name), weights)


#: The paper's three FC-DenseNets, as data: (name, defaults, test-size options, docstring).
_VARIANTS = (
    ("fc_densenet56", dict(growth_rate=12, layers_per_block=4),
     dict(first_filters=8, growth_rate=3, layers_per_block=(2, 2, 2)),
     "Builds FC-DenseNet56: 4 layers in every dense block, growth rate 12 (paper: 1.4M parameters)."),
    ("fc_densenet67", dict(growth_rate=16, layers_per_block=5),
     dict(first_filters=8, growth_rate=4, layers_per_block=(3, 3)),
     "Builds FC-DenseNet67: 5 layers in every dense block, growth rate 16 (paper: 3.5M parameters)."),
    ("fc_densenet103", dict(growth_rate=16, layers_per_block=(4, 5, 7, 10, 12, 15)),
     dict(first_filters=8, growth_rate=4, layers_per_block=(1, 2, 3)),
     "Builds FC-DenseNet103 (paper: 9.4M parameters): dense blocks of 4, 5, 7, 10 and 12 layers, a\n"
     "    15-layer bottleneck, then 12, 10, 7, 5 and 4 layers on the way up; growth rate 16."),
)
build_fc_densenet56, build_fc_densenet67, build_fc_densenet103 = (
    register(name, tiny=tiny, paper=_PAPER)(variant(build_fc_densenet, name, doc, **defaults))
    for name, defaults, tiny, doc in _VARIANTS
)
