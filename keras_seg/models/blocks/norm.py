"""Normalisation layers: batch norm on a fused kernel, and Caffe's local response normalisation."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

#: Environment variable: ``0`` makes :class:`BatchNorm` train with Keras's composite ops.
FUSED_BATCH_NORM_ENV = "KERAS_SEG_FUSED_BATCH_NORM"


@keras.saving.register_keras_serializable(package="keras_seg")
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


@keras.saving.register_keras_serializable(package="keras_seg")
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
