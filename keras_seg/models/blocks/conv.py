"""Convolution blocks, the logits layer and the bilinear initialisation of transposed convolutions."""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from keras_seg.models.blocks.norm import batch_norm


def conv_bn_act(
    x,
    filters: int,
    name: str,
    *,
    kernel_size=3,
    strides=1,
    dilation_rate=1,
    padding: str = "same",
    use_bn: bool = True,
    activation: Optional[str] = "relu",
    use_bias: Optional[bool] = None,
    kernel_initializer="he_normal",
):
    """Conv2D, optional BatchNorm, optional activation: layers ``{name}_conv/_bn/_relu``."""
    if use_bias is None:
        use_bias = not use_bn
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        dilation_rate=dilation_rate,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=f"{name}_conv",
    )(x)
    if use_bn:
        x = batch_norm(f"{name}_bn")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def sep_conv_bn_act(x, filters: int, name: str, *, kernel_size=3, dilation_rate=1):
    """Depthwise-separable convolution with batch norm and ReLU after each half.

    DeepLab v3+'s ``split_separable_conv2d`` (tensorflow/models ``research/deeplab/core/utils.py``;
    Chen et al., 2018, https://arxiv.org/abs/1802.02611): a depthwise ``kernel_size``
    convolution at ``dilation_rate`` + batch norm + ReLU (``{name}_depthwise_conv/_bn/_relu``),
    then a pointwise 1x1 convolution to ``filters`` + batch norm + ReLU
    (``{name}_pointwise_conv/_bn/_relu``). Neither convolution has a bias.
    """
    x = keras.layers.DepthwiseConv2D(
        kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False,
        depthwise_initializer="he_normal", name=f"{name}_depthwise_conv",
    )(x)
    x = batch_norm(f"{name}_depthwise_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_depthwise_relu")(x)
    return conv_bn_act(x, filters, f"{name}_pointwise", kernel_size=1)


def logits_layer(x, num_classes: int, name: str = "logits", kernel_size: int = 1, dilation_rate: int = 1):
    """The final float32 classifier convolution, named ``logits``, with no softmax."""
    return keras.layers.Conv2D(
        num_classes, kernel_size, padding="same", dilation_rate=dilation_rate, dtype="float32",
        name=name,
    )(x)


def bilinear_kernel(size: int):
    """The ``size x size`` bilinear-interpolation filter of FCN's ``surgery.upsample_filt``.

    A transposed convolution with this kernel and stride ``s`` (``size = 2 * s``) is
    bilinear upsampling by ``s``. https://github.com/shelhamer/fcn.berkeleyvision.org
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    grid = np.arange(size, dtype=np.float64)
    line = 1.0 - np.abs(grid - center) / factor
    return np.outer(line, line)


@keras.saving.register_keras_serializable(package="keras_seg")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialises a ``Conv2DTranspose`` kernel to per-channel bilinear upsampling.

    Channel ``i`` of the input feeds only channel ``i`` of the output, through
    :func:`bilinear_kernel`: FCN's ``surgery.interp`` initialisation (Long et al., 2015,
    https://arxiv.org/abs/1411.4038). Kernel shape is ``(k, k, out_channels, in_channels)``.
    """

    def __call__(self, shape, dtype=None):
        kh, kw, out_c, in_c = shape
        if kh != kw:
            raise ValueError(f"BilinearUpsampling needs a square kernel. Received: shape={tuple(shape)}")
        kernel = np.zeros(shape, dtype=np.float64)
        filt = bilinear_kernel(kh)
        for c in range(min(out_c, in_c)):
            kernel[:, :, c, c] = filt
        return tf.constant(kernel, dtype=dtype or keras.backend.floatx())

    def get_config(self):
        return {}
