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


def batch_norm(name: str, momentum: float = 0.9, epsilon: float = 1e-3) -> keras.layers.Layer:
    """BatchNormalization that uses the global batch statistics across replicas.

    Momentum 0.9 (PyTorch's 0.1) lets the moving statistics settle within short runs.
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


def logits_layer(x, num_classes: int, name: str = "logits", kernel_size: int = 1):
    """The final float32 classifier convolution, named ``logits``, with no softmax."""
    return keras.layers.Conv2D(
        num_classes, kernel_size, padding="same", dtype="float32", name=name
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
