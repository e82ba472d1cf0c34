"""Shared building blocks and the custom layers every architecture uses.

Custom layers are registered with ``keras.saving.register_keras_serializable`` so that
every model saves and loads as a ``.keras`` file without ``custom_objects``.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "ResizeLike",
    "PadToMultiple",
    "CropLike",
    "CenterCropLike",
    "check_common_args",
    "conv_bn_act",
    "sep_conv_bn_act",
    "batch_norm",
    "BatchNorm",
    "AdaptiveAvgPool2D",
    "pyramid_pool",
    "aspp",
    "resize_logits",
    "PadChannels",
    "MaxPoolingWithArgmax2D",
    "MaxUnpooling2D",
    "LocalResponseNorm",
    "BilinearUpsampling",
    "bilinear_kernel",
]

_PKG = "keras_seg"
#: Environment variable: ``0`` makes :class:`BatchNorm` train with Keras's composite ops.
FUSED_BATCH_NORM_ENV = "KERAS_SEG_FUSED_BATCH_NORM"


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


def load_weights_if_given(model: keras.Model, weights: Optional[str]) -> keras.Model:
    """Loads a whole-model ``.weights.h5`` file into ``model`` when ``weights`` is set."""
    if weights is not None:
        if not tf.io.gfile.exists(weights):
            raise ValueError(f"weights file not found. Received: weights={weights!r}")
        model.load_weights(weights)
    return model


@keras.saving.register_keras_serializable(package=_PKG)
class BatchNorm(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training step runs TensorFlow's fused kernel.

    Keras 3 normalises with separate reductions and element-wise ops (``ops.moments`` and
    ``ops.batch_normalization``): on a CPU at CamVid size that was about half of ENet's
    training step (issue 13). In training on one replica (or unsynchronized), this layer
    computes the same thing with one ``FusedBatchNormV3`` op (oneDNN's kernel on CPUs) and
    its fused gradient. The moving statistics get Keras's update with the biased batch
    variance, as the parent does. Everything else (inference, several synchronized
    replicas, masks, renorm, other axes or ranks) is the parent's code. Weights, names and
    config are the parent's, so checkpoints and weight files load either way.
    ``KERAS_SEG_FUSED_BATCH_NORM=0`` in the environment (read when a model is traced) turns
    the fused path off.
    """

    def _fused_applies(self, inputs, training, mask) -> bool:
        if os.environ.get(FUSED_BATCH_NORM_ENV, "1") == "0":
            return False
        if not (training and self.trainable) or mask is not None or self.renorm:
            return False
        if len(inputs.shape) != 4 or self.axis not in (3, -1):
            return False
        if self.synchronized:
            ctx = tf.distribute.get_replica_context()
            if ctx is not None and ctx.num_replicas_in_sync > 1:
                return False  # the parent all-reduces the moments across replicas
        return True

    def call(self, inputs, training=None, mask=None):
        if not self._fused_applies(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # as the parent: statistics in float32 under mixed precision
        channels = x.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        y, mean, unbiased_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=tf.zeros([0], tf.float32), variance=tf.zeros([0], tf.float32),
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # The kernel returns Bessel's unbiased variance; Keras updates with the biased one.
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
        variance = unbiased_var * tf.maximum(n - 1.0, 0.0) / tf.maximum(n, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype) * (1.0 - momentum))
        self.moving_variance.assign(
            self.moving_variance * momentum + tf.cast(variance, self.moving_variance.dtype) * (1.0 - momentum))
        return tf.cast(y, self.compute_dtype)


def batch_norm(
    name: str, momentum: float = 0.9, epsilon: float = 1e-3, gamma_initializer="ones"
) -> keras.layers.Layer:
    """Batch normalization that uses the global batch statistics across replicas.

    Momentum 0.9 (PyTorch's 0.1) lets the moving statistics settle within short runs.
    ``synchronized=True`` makes multi-replica training compute the same statistics as
    single-device training on the same global batch; on one device it is plain batch norm,
    run as one fused kernel (:class:`BatchNorm`). ``gamma_initializer="zeros"`` starts a
    residual branch's last normalisation at zero, so the block starts as its shortcut.
    """
    return BatchNorm(
        momentum=momentum, epsilon=epsilon, gamma_initializer=gamma_initializer, synchronized=True, name=name
    )


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


@keras.saving.register_keras_serializable(package=_PKG)
class ResizeLike(keras.layers.Layer):
    """Resizes ``x`` to the spatial size of ``ref``; dynamic H/W, SavedModel/TFLite safe.

    The only resize primitive in keras_seg: ``UpSampling2D(interpolation="bilinear")`` and
    ``keras.ops.image.resize`` with a symbolic size break on retrace under TF (STYLE.md).
    The result is cast back to ``x.dtype`` because ``tf.image.resize`` returns float32.

    Args:
      method: ``"bilinear"`` or ``"nearest"``.
    """

    def __init__(self, method: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        if method not in ("bilinear", "nearest"):
            raise ValueError(f"method must be 'bilinear' or 'nearest'. Received: method={method!r}")
        self.method = method

    def call(self, x, ref):
        y = tf.image.resize(x, tf.shape(ref)[1:3], method=self.method)
        return tf.cast(y, x.dtype)

    def compute_output_shape(self, x_shape, ref_shape):
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "method": self.method}


@keras.saving.register_keras_serializable(package=_PKG)
class PadToMultiple(keras.layers.Layer):
    """Zero-pads H and W at the bottom/right up to the next multiple of ``multiple``.

    Used by architectures that downsample by a fixed factor, together with
    :class:`CropLike` to cut the logits back to exactly the input size.

    Args:
      multiple: H and W are padded up to a multiple of this.
      minimum: H and W are also padded up to at least this size (rounded up to a multiple
        of ``multiple``), for networks with a smallest working size such as DeconvNet's
        7x7 ``fc6`` on the stride-32 map. 0 (the default) sets no minimum.
    """

    def __init__(self, multiple: int, minimum: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"multiple must be an int >= 1. Received: multiple={multiple!r}")
        if not isinstance(minimum, int) or minimum < 0:
            raise ValueError(f"minimum must be an int >= 0. Received: minimum={minimum!r}")
        self.multiple = multiple
        self.minimum = minimum

    def _target(self, size):
        m = self.multiple
        floor = -(-self.minimum // m) * m
        if isinstance(size, int):
            return max(-(-size // m) * m, floor)
        return tf.maximum((size + m - 1) // m * m, floor)

    def call(self, x):
        shape = tf.shape(x)
        pad_h = self._target(shape[1]) - shape[1]
        pad_w = self._target(shape[2]) - shape[2]
        return tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def compute_output_shape(self, input_shape):
        def up(v):
            return None if v is None else self._target(v)

        return (input_shape[0], up(input_shape[1]), up(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple, "minimum": self.minimum}


@keras.saving.register_keras_serializable(package=_PKG)
class CropLike(keras.layers.Layer):
    """Crops ``x`` to the spatial size of ``ref`` at a fixed top-left ``offset``.

    Raises at run time (``InvalidArgumentError``) if ``x`` is too small, so a wrong size
    can never pass silently.

    Args:
      offset: ``(top, left)`` crop offset in pixels; ``(0, 0)`` undoes :class:`PadToMultiple`.
    """

    def __init__(self, offset: Sequence[int] = (0, 0), **kwargs):
        super().__init__(**kwargs)
        offset = tuple(int(o) for o in offset)
        if len(offset) != 2 or min(offset) < 0:
            raise ValueError(f"offset must be two ints >= 0. Received: offset={offset!r}")
        self.offset = offset

    def call(self, x, ref):
        ref_hw = tf.shape(ref)[1:3]
        x_hw = tf.shape(x)[1:3]
        top, left = self.offset
        need = ref_hw + tf.constant([top, left])
        with tf.control_dependencies(
            [
                tf.debugging.assert_greater_equal(
                    x_hw, need, message=f"{self.name}: tensor too small to crop to the reference size"
                )
            ]
        ):
            return x[:, top : top + ref_hw[0], left : left + ref_hw[1], :]

    def compute_output_shape(self, x_shape, ref_shape):
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "offset": list(self.offset)}


@keras.saving.register_keras_serializable(package=_PKG)
class CenterCropLike(keras.layers.Layer):
    """Center-crops ``x`` to the spatial size of ``ref`` (U-Net's crop-and-concat)."""

    def call(self, x, ref):
        ref_hw = tf.shape(ref)[1:3]
        x_hw = tf.shape(x)[1:3]
        start = (x_hw - ref_hw) // 2
        with tf.control_dependencies(
            [tf.debugging.assert_non_negative(start, message=f"{self.name}: skip smaller than target")]
        ):
            return x[:, start[0] : start[0] + ref_hw[0], start[1] : start[1] + ref_hw[1], :]

    def compute_output_shape(self, x_shape, ref_shape):
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


def logits_layer(x, num_classes: int, name: str = "logits", kernel_size: int = 1, dilation_rate: int = 1):
    """The final float32 classifier convolution, named ``logits``, with no softmax."""
    return keras.layers.Conv2D(
        num_classes, kernel_size, padding="same", dilation_rate=dilation_rate, dtype="float32",
        name=name,
    )(x)


def static_hw(input_shape) -> Tuple[Optional[int], Optional[int]]:
    """Returns the static ``(H, W)`` of an ``input_shape`` (``None`` where dynamic)."""
    return input_shape[0], input_shape[1]


@keras.saving.register_keras_serializable(package=_PKG)
class InputSizeCheck(keras.layers.Layer):
    """Refuses, at run time, inputs whose H or W is not ``offset + multiple * k`` (k >= k_min).

    Architectures without internal padding (valid-convolution U-Net) accept only such sizes;
    this layer turns a deep shape error into a message that states the rule.
    """

    def __init__(self, multiple: int, offset: int, minimum: int, **kwargs):
        super().__init__(**kwargs)
        self.multiple, self.offset, self.minimum = int(multiple), int(offset), int(minimum)

    def call(self, x):
        hw = tf.shape(x)[1:3]
        ok = tf.logical_and(
            tf.reduce_all(tf.equal((hw - self.offset) % self.multiple, 0)),
            tf.reduce_all(hw >= self.minimum),
        )
        msg = (
            f"{self.name}: input height and width must each be {self.offset} + "
            f"{self.multiple}*k and >= {self.minimum} (e.g. {self.minimum}, "
            f"{self.minimum + self.multiple}, {self.minimum + 2 * self.multiple}); received H, W ="
        )
        with tf.control_dependencies([tf.debugging.Assert(ok, [msg, hw])]):
            return tf.identity(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "multiple": self.multiple,
            "offset": self.offset,
            "minimum": self.minimum,
        }


def resize_logits(x, ref, name: str = "logits"):
    """Bilinear-resizes class scores ``x`` to the size of ``ref`` as a float32 layer ``name``.

    The final layer of every head that predicts at a reduced resolution (DeepLab, PSPNet,
    RefineNet) and of their auxiliary outputs; float32 keeps logits full precision under
    mixed precision.
    """
    return ResizeLike(name=name, dtype="float32")(x, ref)


@keras.saving.register_keras_serializable(package=_PKG)
class AdaptiveAvgPool2D(keras.layers.Layer):
    """Average-pools ``(B, H, W, C)`` to ``(B, bins, bins, C)`` for any, dynamic, H and W.

    Bin ``i`` of a side of length ``n`` spans ``[floor(i*n/bins), ceil((i+1)*n/bins))``: the
    bins of PyTorch's ``AdaptiveAvgPool2d`` and of PSPNet's released code; bins overlap when
    ``n`` is not a multiple of ``bins`` and are never empty, also for ``n < bins``.

    The pooling is two matrix products with averaging matrices computed from the run-time
    size, so it converts to builtin TFLite ops (BATCH_MATMUL, RANGE, ...) also with a
    dynamic input size, where ``AveragePooling2D`` would need a fixed kernel.

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

    def call(self, x):
        shape = tf.shape(x)
        rows = self._averaging_matrix(shape[1], x.dtype)  # (bins, H)
        cols = self._averaging_matrix(shape[2], x.dtype)  # (bins, W)
        y = tf.einsum("ih,bhwc->biwc", rows, x)
        return tf.einsum("jw,biwc->bijc", cols, y)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


@keras.saving.register_keras_serializable(package=_PKG)
class PadChannels(keras.layers.Layer):
    """Zero-pads the channel axis of ``(B, H, W, C)`` to ``channels`` (ENet's downsampling shortcut).

    Args:
      channels: output channels, at least the input's.
    """

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1. Received: channels={channels!r}")
        self.channels = channels

    def call(self, x):
        extra = self.channels - x.shape[-1]
        if extra < 0:
            raise ValueError(
                f"{self.name}: input has more than {self.channels} channels. "
                f"Received: input channels={x.shape[-1]}"
            )
        return tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


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
# =============================================================================
# Max pooling with argmax indices, and max unpooling (SegNet, DeconvNet, ENet)
# =============================================================================
#
# SegNet (https://arxiv.org/abs/1511.00561), DeconvNet (https://arxiv.org/abs/1505.04366)
# and ENet (https://arxiv.org/abs/1606.02147) upsample by putting every pooled value back
# at the position its max came from. ``tf.nn.max_pool_with_argmax`` computes those
# positions, but MaxPoolWithArgmax is not a TFLite builtin and the LiteRT interpreter has no
# Flex delegate, so a model using it cannot run on device. These layers use one exact
# formulation, made only of TFLite builtins, for training, Keras inference and TFLite alike:
#
#   slot_k  = split(space_to_depth(x, p), p*p, axis=-1)[k]      k = dy * p + dx
#       slot_k[i, j] = x[p*i + dy, p*j + dx] (row-major window order)
#   pooled  = max_pool(x, p, stride p)
#       max returns one of its inputs, so some slot of every window equals it bit for bit
#   k*      = min{k : slot_k == pooled}                     (first maximum in row-major order)
#   index   = ((p*i + k* // p) * W + (p*j + k* % p)) * C + c
#           = start_k*(i) + p*j*C + c,    start_k(i) = p*i*W*C + ((k // p) * W + k % p) * C
#
# start_k*(i) is picked by p*p - 1 selects, from the last slot to the first so the first
# match wins. Every tensor stays 4-D: TFLite's EQUAL broadcasts only up to 4-D, and the
# earlier 5-D formulation (windows == pooled[:, :, :, None, :]) converted to a BROADCAST_TO
# that took 18% of ENet's fp32 TFLite time (benchmarks/int8_ops.py).
#
# ``index`` is the convention of ``tf.nn.max_pool_with_argmax(include_batch_in_index=False)``
# (flat position in the image's (H, W, C) tensor), with ties broken by the first maximum in
# row-major window order: the rule of Caffe's pooling layer that SegNet and DeconvNet used.
# Unpooling scatters each pooled value to its index with ``tf.scatter_nd`` (TFLite
# SCATTER_ND). Windows are disjoint, so the indices of one image are distinct and the
# scatter's summation of duplicates never happens: scatter-add equals scatter-assign.
# tests/models/test_unpool.py checks both against NumPy references (ties included), against
# ``tf.nn.max_pool_with_argmax``, and Keras against LiteRT.


@keras.saving.register_keras_serializable(package=_PKG)
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """Non-overlapping max pooling that also returns where each maximum came from.

    See the section comment above for the exact, TFLite-builtin formulation. Used by
    SegNet (Badrinarayanan et al., 2017, https://arxiv.org/abs/1511.00561) and DeconvNet
    (Noh et al., 2015, https://arxiv.org/abs/1505.04366); pair with :class:`MaxUnpooling2D`.

    Args:
      pool_size: window size and stride ``p`` (windows never overlap). Input H and W must be
        multiples of ``p``: pad with :class:`PadToMultiple` first.

    Call arguments:
      x: ``(B, H, W, C)`` float tensor.

    Returns:
      ``(pooled, indices)``: ``pooled`` is ``(B, H/p, W/p, C)`` in ``x``'s dtype; ``indices``
      is int32 of the same shape, ``(y * W + x) * C + c`` of each window's first maximum
      (row-major window order) in this image's ``(H, W, C)`` input.

    Raises:
      ValueError: for a bad ``pool_size`` or a static H/W that ``pool_size`` does not divide;
        a dynamic one fails at run time with a message that says so.
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1. Received: pool_size={pool_size!r}")
        self.pool_size = pool_size

    def call(self, x):
        p = self.pool_size
        self._pooled_shape(tuple(x.shape))  # a static size p does not divide: ValueError now
        shape = tf.shape(x)
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    shape[1:3] % p,
                    0,
                    message=f"{self.name}: input height and width must be multiples of "
                    f"pool_size={p}; pad the input with PadToMultiple first",
                )
            ]
        ):
            x = tf.identity(x)
        width, channels = shape[2], shape[3]
        pooled = tf.nn.max_pool2d(x, p, p, "VALID")
        slots = tf.split(tf.nn.space_to_depth(x, p), p * p, axis=-1) if p > 1 else [x]

        # Flat index of each window's slot k: its row term (h, 1, 1) plus offset(k) goes into
        # the selects, the column and channel term (1, w, C) is added last. A sum of the two
        # constant terms would fold, in a fixed-size TFLite graph, into a constant as large
        # as the indices (4 MB for a 256x256x64 input).
        rows = tf.range(shape[1] // p)[:, None, None] * (p * width * channels)
        cols = tf.range(shape[2] // p)[None, :, None] * (p * channels) + tf.range(channels)[None, None, :]

        def start(k):
            return rows + ((k // p) * width + k % p) * channels

        # First maximal slot; a window without a match (only possible for NaN) gets p*p - 1.
        first = start(p * p - 1) if p > 1 else start(0) + tf.zeros_like(pooled, tf.int32)
        for k in range(p * p - 2, -1, -1):
            first = tf.where(tf.equal(slots[k], pooled), start(k), first)
        indices = first + cols
        return pooled, indices

    def _pooled_shape(self, input_shape):
        p = self.pool_size
        out = [input_shape[0]]
        for side in input_shape[1:3]:
            if side is not None and side % p:
                raise ValueError(
                    f"{self.name}: input height and width must be multiples of pool_size={p}; "
                    f"pad with PadToMultiple first. Received: input_shape={tuple(input_shape)}"
                )
            out.append(None if side is None else side // p)
        return tuple(out) + (input_shape[3],)

    def compute_output_spec(self, x):
        shape = self._pooled_shape(x.shape)
        return (
            keras.KerasTensor(shape, dtype=self.compute_dtype),
            keras.KerasTensor(shape, dtype="int32"),
        )

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package=_PKG)
class MaxUnpooling2D(keras.layers.Layer):
    """Max unpooling: writes each value of ``x`` at its argmax index in a zero tensor.

    The upsampling of SegNet (https://arxiv.org/abs/1511.00561), DeconvNet
    (https://arxiv.org/abs/1505.04366) and ENet (https://arxiv.org/abs/1606.02147), through
    ``tf.scatter_nd`` (TFLite builtin SCATTER_ND). Pair with :class:`MaxPoolingWithArgmax2D`.

    Args:
      pool_size: the pooling window ``p``; without ``ref`` the output is ``(p*h, p*w)``.

    Call arguments:
      x: ``(B, h, w, C)`` values to place.
      indices: int tensor shaped like ``x``: flat ``(y * W + x) * C + c`` positions in the
        ``(H, W, C)`` output, as :class:`MaxPoolingWithArgmax2D` returns them.
      ref: optional tensor whose H and W set the output size (the tensor that was pooled).

    Returns:
      ``(B, H, W, C)`` tensor, zero except at the indexed positions.
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1. Received: pool_size={pool_size!r}")
        self.pool_size = pool_size

    def call(self, x, indices, ref=None):
        shape = tf.shape(x)
        batch, channels = shape[0], shape[3]
        if ref is None:
            out_h, out_w = shape[1] * self.pool_size, shape[2] * self.pool_size
        else:
            out_h, out_w = tf.shape(ref)[1], tf.shape(ref)[2]
        size = out_h * out_w * channels
        # Positions in the whole batch's flat (B * H * W * C) output: image b starts at b * size.
        flat = tf.reshape(tf.cast(indices, tf.int32), [batch, -1]) + tf.range(batch)[:, None] * size
        out = tf.scatter_nd(tf.reshape(flat, [-1, 1]), tf.reshape(x, [-1]), tf.reshape(batch * size, [1]))
        return tf.reshape(out, [batch, out_h, out_w, channels])

    def compute_output_shape(self, x_shape, indices_shape, ref_shape=None):
        if ref_shape is not None:
            return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])
        p = self.pool_size
        h, w = (None if v is None else v * p for v in x_shape[1:3])
        return (x_shape[0], h, w, x_shape[3])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package=_PKG)
class LocalResponseNorm(keras.layers.Layer):
    """Caffe's cross-channel local response normalisation (``LRN``, ACROSS_CHANNELS).

    ``y_c = x_c / (k + alpha / n * sum_{|c' - c| <= n // 2} x_{c'}^2) ** beta``, the layer
    SegNet-Basic applies to its input (SegNet-Tutorial ``segnet_basic_train.prototxt``:
    ``local_size: 5 alpha: 0.0001 beta: 0.75``). Note Caffe divides ``alpha`` by ``n`` while
    ``tf.nn.local_response_normalization`` does not; this layer takes Caffe's parameters.
    TFLite builtin LOCAL_RESPONSE_NORMALIZATION.

    Args:
      local_size: odd number of channels ``n`` summed over.
      alpha: scale, Caffe convention.
      beta: exponent.
      k: additive constant.
    """

    def __init__(
        self, local_size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, **kwargs
    ):
        super().__init__(**kwargs)
        odd = isinstance(local_size, int) and not isinstance(local_size, bool) and local_size % 2 == 1
        if not odd or local_size < 1:
            raise ValueError(f"local_size must be an odd int >= 1. Received: local_size={local_size!r}")
        self.local_size, self.alpha, self.beta, self.k = local_size, float(alpha), float(beta), float(k)

    def call(self, x):
        # TF's CPU kernel of LRN (and of its gradient) takes float32 and float16 but not
        # bfloat16, so under mixed precision the normalisation runs in float32 and the result
        # goes back to the compute dtype.
        y = tf.nn.local_response_normalization(
            tf.cast(x, tf.float32),
            depth_radius=(self.local_size - 1) // 2,
            bias=self.k,
            alpha=self.alpha / self.local_size,
            beta=self.beta,
        )
        return tf.cast(y, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "local_size": self.local_size,
            "alpha": self.alpha,
            "beta": self.beta,
            "k": self.k,
        }


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


@keras.saving.register_keras_serializable(package=_PKG)
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


def check_positive_ints(**values) -> None:
    """Raises ``ValueError("x must be an int >= 1. Received: x=...")`` for the first bad value."""
    for arg, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1. Received: {arg}={value!r}")
