"""FusionNet (Quan, Hildebrand and Jeong, "FusionNet: A deep fully residual convolutional
neural network for image segmentation in connectomics", 2016).

Paper: https://arxiv.org/abs/1612.05360 (Frontiers in Computer Science, 2021). A U-shaped
network whose every level is a *conv-res-conv* unit: a 3x3 convolution, a residual block of
three 3x3 convolutions with an identity shortcut, and another 3x3 convolution (each
convolution followed by BatchNorm and ReLU, except the residual block's last, whose ReLU
comes after the next convolution). The encoder has four levels of 64, 128, 256 and 512
filters with 2x2 max pooling, the bridge 1024; the decoder upsamples with stride-2
transposed convolutions that halve the channels, and merges the skips by *summation* (not
concatenation), then applies a conv-res-conv unit. A 1x1 convolution gives the output maps
(one membrane map in the paper's EM experiments; ``num_classes`` logits here).

Inputs are zero-padded at the bottom/right to a multiple of ``2 ** depth`` and the logits
are cropped back, so every input size works.
"""

from __future__ import annotations

from typing import Optional

import keras

from keras_seg.models.blocks import (
    check_positive_ints,
    CropLike,
    PadToMultiple,
    batch_norm,
    check_common_args,
    conv_bn_act,
    load_weights_if_given,
    logits_layer,
)
from keras_seg.registry import register

__all__ = ["build_fusionnet"]


def _conv_res_conv(x, filters: int, name: str):
    """conv -> residual block (3 convs + identity) -> conv, as the paper's Fig. 2 level."""
    x = conv_bn_act(x, filters, f"{name}_conv1")
    r = conv_bn_act(x, filters, f"{name}_res1")
    r = conv_bn_act(r, filters, f"{name}_res2")
    r = conv_bn_act(r, filters, f"{name}_res3", activation=None)
    x = keras.layers.Add(name=f"{name}_res_add")([x, r])
    return conv_bn_act(x, filters, f"{name}_conv2")


@register(
    "fusionnet",
    tiny=dict(base_width=8, depth=1),
    paper="Quan, Hildebrand and Jeong, FusionNet, arXiv 2016, https://arxiv.org/abs/1612.05360",
)
def build_fusionnet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    base_width: int = 64,
    depth: int = 4,
    up_kernel_size: int = 2,
    weights: Optional[str] = None,
    name: str = "fusionnet",
) -> keras.Model:
    """Builds FusionNet: conv-res-conv levels in a U shape with summation skips.

    With the paper's configuration (1 input channel, 1 output map) it has 75,065,217
    parameters, of which 31,360 are BatchNorm moving statistics (non-trainable).

    Args:
      num_classes: number of output maps (logits).
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None`` (the paper: 1-channel EM
        images, 640x640 training tiles). Every size works.
      base_width: filters of the first level; level ``i`` has ``base_width * 2**i`` and the
        bridge ``base_width * 2**depth`` (64 ... 1024 in the paper).
      depth: number of 2x2 poolings (4 in the paper).
      up_kernel_size: kernel of the stride-2 transposed convolutions (2: the paper's figure;
        the widely used PyTorch port uses 3). The output is exactly twice the input either way.
      weights: ``None`` or a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A ``keras.Model`` returning float32 logits ``(B, H, W, num_classes)``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    check_positive_ints(base_width=base_width, depth=depth, up_kernel_size=up_kernel_size)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = PadToMultiple(2**depth, name="pad")(inputs)
    skips = []
    for i in range(1, depth + 1):
        x = _conv_res_conv(x, base_width * 2 ** (i - 1), f"enc{i}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
    x = _conv_res_conv(x, base_width * 2**depth, "bridge")
    for i in range(depth, 0, -1):
        filters = base_width * 2 ** (i - 1)
        x = keras.layers.Conv2DTranspose(
            filters, up_kernel_size, strides=2, padding="same", use_bias=False,
            kernel_initializer="he_normal", name=f"dec{i}_up",
        )(x)
        x = batch_norm(f"dec{i}_up_bn")(x)
        x = keras.layers.Activation("relu", name=f"dec{i}_up_relu")(x)
        x = keras.layers.Add(name=f"dec{i}_add")([x, skips[i - 1]])
        x = _conv_res_conv(x, filters, f"dec{i}")
    x = logits_layer(x, num_classes, name="logits_full")
    outputs = CropLike(dtype="float32", name="logits")(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    return load_weights_if_given(model, weights)
