"""Floating-point operation counts (TF profiler) and the machine's measured ceiling.

FLOPs are counted by ``tf.compat.v1.profiler`` on the frozen inference graph of one image,
with TensorFlow's registered op statistics: a convolution or matmul counts 2 FLOPs per
multiply-add, bias adds and batch norms their element-wise work. Ops without registered
statistics (resizes, argmax, scatters) count 0, so the totals are the convolution and matmul
work that dominates these models. Training is taken as 3x the forward FLOPs (forward, plus
the gradients with respect to inputs and weights), the usual convention.

The ceiling is the best rate this process reaches on one large matmul and one large
convolution, each in a ``tf.function`` on all cores: what the kernels can do on this
machine, not the vendor's peak.
"""

from __future__ import annotations

from typing import Dict, Tuple

import tensorflow as tf

from benchmarks.timing import time_calls

#: Training FLOPs per image as a multiple of the forward FLOPs.
TRAIN_FLOPS_FACTOR = 3


def forward_flops(model, input_shape: Tuple[int, int, int]) -> int:
    """FLOPs of one forward pass (``training=False``) of one image of ``input_shape`` (H, W, C).

    Raises:
      ValueError: the profiler counted no operations (the graph did not trace).
    """
    from tensorflow.python.framework.convert_to_constants import (  # pylint: disable=import-outside-toplevel
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec((1, *input_shape), tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        opts = tf.compat.v1.profiler.ProfileOptionBuilder(
            tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        ).with_empty_output().build()
        prof = tf.compat.v1.profiler.profile(graph, options=opts)
    total = int(prof.total_float_ops)
    if total <= 0:
        raise ValueError(f"the TF profiler counted no float operations for {model.name} at {input_shape}")
    return total


def matmul_ceiling(n: int = 2048, iters: int = 5) -> Dict[str, float]:
    """GFLOP/s of an ``n x n`` float32 matmul (``2 n^3`` FLOPs)."""
    a = tf.random.stateless_normal((n, n), seed=(1, 2))
    b = tf.random.stateless_normal((n, n), seed=(3, 4))
    f = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    t = time_calls(lambda: f().numpy(), iters=iters, warmup=2)
    flops = 2.0 * n**3
    return {"gflops": flops / 1e9, "median_s": t.median_s, "gflops_per_s": flops / t.median_s / 1e9,
            "shape": f"{n}x{n} @ {n}x{n}"}


def conv_ceiling(size: int = 128, channels: int = 256, iters: int = 5) -> Dict[str, float]:
    """GFLOP/s of a 3x3, ``channels -> channels`` float32 convolution on one ``size x size`` map."""
    x = tf.random.stateless_normal((1, size, size, channels), seed=(5, 6))
    k = tf.random.stateless_normal((3, 3, channels, channels), seed=(7, 8))
    f = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, k, strides=1, padding="SAME")))
    t = time_calls(lambda: f().numpy(), iters=iters, warmup=2)
    flops = 2.0 * size * size * 9 * channels * channels
    return {"gflops": flops / 1e9, "median_s": t.median_s, "gflops_per_s": flops / t.median_s / 1e9,
            "shape": f"1x{size}x{size}x{channels} * 3x3x{channels}x{channels}"}
