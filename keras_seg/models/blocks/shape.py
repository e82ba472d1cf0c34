"""Layers that match spatial sizes: resize, pad or crop to a reference tensor or a multiple,
pad channels, and check input sizes; all work with dynamic H and W."""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_seg")
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


def resize_logits(x, ref, name: str = "logits"):
    """Bilinear-resizes class scores ``x`` to the size of ``ref`` as a float32 layer ``name``.

    The final layer of every head that predicts at a reduced resolution (DeepLab, PSPNet,
    RefineNet) and of their auxiliary outputs; float32 keeps logits full precision under
    mixed precision.
    """
    return ResizeLike(name=name, dtype="float32")(x, ref)


@keras.saving.register_keras_serializable(package="keras_seg")
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


@keras.saving.register_keras_serializable(package="keras_seg")
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


@keras.saving.register_keras_serializable(package="keras_seg")
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


@keras.saving.register_keras_serializable(package="keras_seg")
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


@keras.saving.register_keras_serializable(package="keras_seg")
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
