r"""Max pooling with argmax indices, and max unpooling (SegNet, DeconvNet, ENet).

SegNet (https://arxiv.org/abs/1511.00561), DeconvNet (https://arxiv.org/abs/1505.04366)
and ENet (https://arxiv.org/abs/1606.02147) upsample by putting every pooled value back
at the position its max came from. ``tf.nn.max_pool_with_argmax`` computes those
positions, but MaxPoolWithArgmax is not a TFLite builtin and the LiteRT interpreter has no
Flex delegate, so a model using it cannot run on device. These layers use one exact
formulation, made only of TFLite builtins, for training, Keras inference and TFLite alike:

  slot_k  = split(space_to_depth(x, p), p*p, axis=-1)[k]      k = dy * p + dx
      slot_k[i, j] = x[p*i + dy, p*j + dx] (row-major window order)
  pooled  = max_pool(x, p, stride p)
      max returns one of its inputs, so some slot of every window equals it bit for bit
  k*      = min{k : slot_k == pooled}                     (first maximum in row-major order)
  index   = ((p*i + k* // p) * W + (p*j + k* % p)) * C + c
          = start_k*(i) + p*j*C + c,    start_k(i) = p*i*W*C + ((k // p) * W + k % p) * C

start_k*(i) is picked by p*p - 1 selects, from the last slot to the first so the first
match wins. Every tensor stays 4-D: TFLite's EQUAL broadcasts only up to 4-D, and the
earlier 5-D formulation (windows == pooled[:, :, :, None, :]) converted to a BROADCAST_TO
that took 18% of ENet's fp32 TFLite time (benchmarks/int8_ops.py).

``index`` is the convention of ``tf.nn.max_pool_with_argmax(include_batch_in_index=False)``
(flat position in the image's (H, W, C) tensor), with ties broken by the first maximum in
row-major window order: the rule of Caffe's pooling layer that SegNet and DeconvNet used.
Unpooling scatters each pooled value to its index with ``tf.scatter_nd`` (TFLite
SCATTER_ND). Windows are disjoint, so the indices of one image are distinct and the
scatter's summation of duplicates never happens: scatter-add equals scatter-assign.
tests/models/test_unpool.py checks both against NumPy references (ties included), against
``tf.nn.max_pool_with_argmax``, and Keras against LiteRT.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_seg")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """Non-overlapping max pooling that also returns where each maximum came from.

    See the module docstring for the exact, TFLite-builtin formulation. Used by
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


@keras.saving.register_keras_serializable(package="keras_seg")
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
