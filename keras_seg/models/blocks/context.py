"""Context modules over a feature map: adaptive average pooling, PSPNet's pyramid pooling and
DeepLab's atrous spatial pyramid pooling."""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

from keras_seg.models.blocks.conv import conv_bn_act, sep_conv_bn_act
from keras_seg.models.blocks.shape import ResizeLike


@keras.saving.register_keras_serializable(package="keras_seg")
class AdaptiveAvgPool2D(keras.layers.Layer):
    """Average-pools ``(B, H, W, C)`` to ``(B, bins, bins, C)`` for any, dynamic, H and W.

    Bin ``i`` of a side of length ``n`` spans ``[floor(i*n/bins), ceil((i+1)*n/bins))``: the
    bins of PyTorch's ``AdaptiveAvgPool2d`` and of PSPNet's released code; bins overlap when
    ``n`` is not a multiple of ``bins`` and are never empty, also for ``n < bins``.

    The pooling is separable: the mean over each bin's rows, then over its columns. With a
    dynamic input size it is two matrix products with averaging matrices computed from the
    run-time size, so it converts to builtin TFLite ops (BATCH_MATMUL, RANGE, ...) where
    ``AveragePooling2D`` would need a fixed kernel. With a static size (a model built for one
    input shape) the bins are known when the graph is traced, and each is a slice and a
    mean (STRIDED_SLICE, MEAN, CONCATENATION): ``TFLiteConverter.from_keras_model`` fails on
    the matrix-product form of a static-shape model ("BytesRequired number of elements
    overflowed" when the interpreter allocates it).

    Args:
      bins: output side length, an int >= 1.
    """

    def __init__(self, bins: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be an int >= 1. Received: bins={bins!r}")
        self.bins = bins

    def _averaging_matrix(self, size, dtype):
        n = self.bins
        i = tf.range(n)
        start = (i * size) // n
        end = ((i + 1) * size + n - 1) // n
        pos = tf.range(size)
        inside = tf.logical_and(pos[None, :] >= start[:, None], pos[None, :] < end[:, None])
        return tf.cast(inside, dtype) / tf.cast(end - start, dtype)[:, None]

    def _bounds(self, size: int):
        n = self.bins
        return [((i * size) // n, ((i + 1) * size + n - 1) // n) for i in range(n)]

    def _static_call(self, x, height: int, width: int):
        rows = [tf.reduce_mean(x[:, a:b], axis=1, keepdims=True) for a, b in self._bounds(height)]
        y = tf.concat(rows, axis=1) if len(rows) > 1 else rows[0]
        cols = [tf.reduce_mean(y[:, :, a:b], axis=2, keepdims=True) for a, b in self._bounds(width)]
        return tf.concat(cols, axis=2) if len(cols) > 1 else cols[0]

    def call(self, x):
        if isinstance(x.shape[1], int) and isinstance(x.shape[2], int):
            return self._static_call(x, x.shape[1], x.shape[2])
        shape = tf.shape(x)
        rows = self._averaging_matrix(shape[1], x.dtype)  # (bins, H)
        cols = self._averaging_matrix(shape[2], x.dtype)  # (bins, W)
        y = tf.einsum("ih,bhwc->biwc", rows, x)
        return tf.einsum("jw,biwc->bijc", cols, y)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


def pyramid_pool(x, bins: Sequence[int] = (1, 2, 3, 6), filters: Optional[int] = None, *, name: str = "ppm"):
    """PSPNet's pyramid pooling module (Zhao et al., CVPR 2017, https://arxiv.org/abs/1612.01105).

    Each bin size ``b`` gives a branch ``{name}_b{b}``: adaptive average pooling to ``b x b``,
    1x1 convolution to ``filters`` (default ``C / len(bins)``), batch norm, ReLU and bilinear
    upsampling back to ``x``'s size. Returns ``concat([x, *branches])`` (layer ``{name}_concat``).
    """
    channels = x.shape[-1]
    filters = filters or channels // len(bins)
    branches = [x]
    for b in bins:
        y = AdaptiveAvgPool2D(b, name=f"{name}_b{b}_pool")(x)
        y = conv_bn_act(y, filters, f"{name}_b{b}", kernel_size=1)
        branches.append(ResizeLike(name=f"{name}_b{b}_up")(y, x))
    return keras.layers.Concatenate(name=f"{name}_concat")(branches)


def aspp(
    x,
    filters: int = 256,
    rates: Sequence[int] = (6, 12, 18),
    *,
    image_pooling: bool = True,
    separable: bool = False,
    name: str = "aspp",
):
    """DeepLab v3's atrous spatial pyramid pooling (Chen et al., 2017, https://arxiv.org/abs/1706.05587).

    Branches, each convolution + batch norm + ReLU with ``filters`` channels: a 1x1
    convolution (``{name}_1x1``), one 3x3 convolution per atrous rate (``{name}_r{rate}``) and,
    with ``image_pooling``, global average pooling -> 1x1 convolution -> bilinear upsampling
    (``{name}_pool``). They are concatenated and projected by a 1x1 convolution + batch norm +
    ReLU (``{name}_proj``). With ``separable`` the 3x3 branches are depthwise-separable
    (:func:`sep_conv_bn_act`), as DeepLab v3+'s ``aspp_with_separable_conv``.
    """
    branches = [conv_bn_act(x, filters, f"{name}_1x1", kernel_size=1)]
    for rate in rates:
        if separable:
            branches.append(sep_conv_bn_act(x, filters, f"{name}_r{rate}", dilation_rate=rate))
        else:
            branches.append(conv_bn_act(x, filters, f"{name}_r{rate}", dilation_rate=rate))
    if image_pooling:
        y = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool_gap")(x)
        y = conv_bn_act(y, filters, f"{name}_pool", kernel_size=1)
        branches.append(ResizeLike(name=f"{name}_pool_up")(y, x))
    y = keras.layers.Concatenate(name=f"{name}_concat")(branches)
    return conv_bn_act(y, filters, f"{name}_proj", kernel_size=1)
