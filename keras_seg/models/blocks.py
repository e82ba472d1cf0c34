"""Shared building blocks and the custom layers every architecture uses.

Custom layers are registered with ``keras.saving.register_keras_serializable`` so that
every model saves and loads as a ``.keras`` file without ``custom_objects``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import keras
import tensorflow as tf

__all__ = [
    "ResizeLike",
    "PadToMultiple",
    "CropLike",
    "CenterCropLike",
    "check_common_args",
    "conv_bn_act",
    "batch_norm",
    "AdaptiveAvgPool2D",
    "pyramid_pool",
    "aspp",
    "resize_logits",
]

_PKG = "keras_seg"


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


def batch_norm(name: str, momentum: float = 0.99, epsilon: float = 1e-3) -> keras.layers.Layer:
    """BatchNormalization that uses the global batch statistics across replicas.

    ``synchronized=True`` makes multi-replica training compute the same statistics as
    single-device training on the same global batch; on one device it is plain batch norm.
    """
    return keras.layers.BatchNormalization(
        momentum=momentum, epsilon=epsilon, synchronized=True, name=name
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
    """

    def __init__(self, multiple: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"multiple must be an int >= 1. Received: multiple={multiple!r}")
        self.multiple = multiple

    def call(self, x):
        shape = tf.shape(x)
        m = self.multiple
        pad_h = (m - shape[1] % m) % m
        pad_w = (m - shape[2] % m) % m
        return tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def compute_output_shape(self, input_shape):
        def up(v):
            return None if v is None else -(-v // self.multiple) * self.multiple

        return (input_shape[0], up(input_shape[1]), up(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


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


def aspp(x, filters: int = 256, rates: Sequence[int] = (6, 12, 18), *, image_pooling: bool = True, name: str = "aspp"):
    """DeepLab v3's atrous spatial pyramid pooling (Chen et al., 2017, https://arxiv.org/abs/1706.05587).

    Branches, each convolution + batch norm + ReLU with ``filters`` channels: a 1x1
    convolution (``{name}_1x1``), one 3x3 convolution per atrous rate (``{name}_r{rate}``) and,
    with ``image_pooling``, global average pooling -> 1x1 convolution -> bilinear upsampling
    (``{name}_pool``). They are concatenated and projected by a 1x1 convolution + batch norm +
    ReLU (``{name}_proj``).
    """
    branches = [conv_bn_act(x, filters, f"{name}_1x1", kernel_size=1)]
    for rate in rates:
        branches.append(conv_bn_act(x, filters, f"{name}_r{rate}", dilation_rate=rate))
    if image_pooling:
        y = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool_gap")(x)
        y = conv_bn_act(y, filters, f"{name}_pool", kernel_size=1)
        branches.append(ResizeLike(name=f"{name}_pool_up")(y, x))
    y = keras.layers.Concatenate(name=f"{name}_concat")(branches)
    return conv_bn_act(y, filters, f"{name}_proj", kernel_size=1)
