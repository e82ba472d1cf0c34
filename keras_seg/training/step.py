"""The training step: per-replica loss and gradients, coupled L2, the finite-loss guard, and the
loop of ``steps_per_loop`` steps in one ``tf.function``."""

from __future__ import annotations

from typing import Any, Callable, Tuple

import keras
import tensorflow as tf

from keras_seg.losses import pixel_ce_sums
from keras_seg.training.schedule import decayed_variables


def is_input_pipeline_error(error: tf.errors.OpError) -> bool:
    """Whether a training-step error came from reading the data (not from the model or devices)."""
    return isinstance(error, tf.errors.DataLossError) or "IteratorGetNext" in str(error)


def _finite_on_every_replica(grads, ctx: tf.distribute.ReplicaContext) -> tf.Tensor:
    """Whether every replica's gradients are all finite (a boolean scalar, the same on all)."""
    local = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(local, tf.float32))
    return tf.equal(bad, 0.0)


def _make_step_on_batch(model: keras.Model, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                        num_classes: int, ignore_label: int, class_weights, aux_weights,
                        l2: float = 0.0) -> Callable[..., tf.Tensor]:
    """``step_on_batch(images, labels, weights) -> global mean loss``: one replicated update."""
    aux_weights = list(aux_weights)
    decayed = decayed_variables(model) if l2 else []
    # The replicas' gradients are summed, so each adds 1/replicas of the L2 term's gradient.
    l2_per_replica = 0.5 * float(l2) / strategy.num_replicas_in_sync
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images, labels, weights):
        ctx = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            outs = model(images, training=True)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            total, count = pixel_ce_sums(labels, outs[0], num_classes=num_classes, ignore_label=ignore_label,
                                         class_weights=class_weights, pixel_weights=weights)
            global_count = tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, count), 1e-12)
            loss = total / global_count
            for out, w in zip(outs[1:], aux_weights):
                aux_total, _ = pixel_ce_sums(labels, out, num_classes=num_classes, ignore_label=ignore_label,
                                             class_weights=class_weights, pixel_weights=weights)
                loss = loss + w * aux_total / global_count
            objective = loss
            if decayed:  # coupled L2: gradient + l2 * w before momentum (Caffe / PyTorch SGD)
                objective = loss + l2_per_replica * tf.add_n([tf.reduce_sum(tf.square(v.value)) for v in decayed])
            scaled_loss = optimizer.scale_loss(objective)  # the objective itself unless loss-scaled
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        if loss_scaled:
            finite = _finite_on_every_replica(grads, ctx)
            nan_unless_finite = tf.where(finite, 0.0, float("nan"))
            grads = [None if g is None else g + tf.cast(nan_unless_finite, g.dtype) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if loss_scaled:
            optimizer.iterations.assign_add(tf.cast(tf.logical_not(finite), optimizer.iterations.dtype))
        return loss

    def step_on_batch(images, labels, weights):
        per_replica = strategy.run(replica_step, args=(images, labels, weights))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step_on_batch


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                    num_classes: int, ignore_label: int, class_weights=None, aux_weights=(),
                    jit_compile: bool = False, l2: float = 0.0) -> Callable[[Any], tf.Tensor]:
    """One training step: ``step(distributed_iterator) -> global mean loss``.

    Each replica computes the weighted pixel cross-entropy summed over its pixels and divides
    by the *global* sum of the pixel weights (an all-reduce; with no class or pixel weights,
    the count of valid pixels), so the update does not depend on how the batch is split.
    Auxiliary outputs (``outputs[1:]``) add ``aux_weights[i]`` times their loss.
    :func:`make_train_loop` runs several of these steps per call.

    With a ``keras.optimizers.LossScaleOptimizer`` (``--mixed_precision=float16``) the
    gradients are taken of the scaled loss (``optimizer.scale_loss``) and the optimizer
    unscales them; a step whose gradients are not finite on *any* replica is skipped on
    every replica (the wrapper alone would look at the first replica's gradients only) and
    halves the scale. A skipped step still counts in ``optimizer.iterations`` (the wrapper
    would leave it alone), so the step count, the learning-rate schedule, the checkpoint
    number and the data position of a resume agree with the loop's step. The returned loss
    is the unscaled one.

    ``l2 > 0`` is coupled weight decay (``--weight_decay_mode=coupled``): the gradient of
    ``l2 / 2 * sum(w**2)`` over :func:`decayed_variables`, i.e. ``l2 * w``, is added to the
    loss's gradient before the optimizer's momentum, as Caffe's and PyTorch's SGD do. The
    returned loss is the data loss alone.

    Args:
      model: built under ``strategy.scope()``.
      optimizer: built (``optimizer.build(model.trainable_variables)``) under the same scope.
      strategy: the distribution strategy.
      num_classes: number of classes.
      ignore_label: label value excluded from the loss.
      class_weights: per-class loss weights or ``None``.
      aux_weights: loss weight of each auxiliary output.
      jit_compile: compile the step (forward, backward, all-reduces and update) with XLA.
      l2: coupled weight decay (0: none; decoupled decay belongs to the optimizer).
    """
    step_on_batch = _make_step_on_batch(model, optimizer, strategy, num_classes, ignore_label, class_weights,
                                        aux_weights, l2)
    if jit_compile:
        # XLA cannot compile the iterator, and a nested jit function cannot hold the
        # synchronized batch norm's all-reduce, so the whole replicated step is compiled and
        # the batch is fetched outside it.
        compiled = tf.function(step_on_batch, jit_compile=True)

        def train_step(it):
            return compiled(*next(it))
    else:
        @tf.function
        def train_step(it):
            return step_on_batch(*next(it))

    return train_step


def make_train_loop(model: keras.Model, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                    num_classes: int, ignore_label: int, class_weights=None, aux_weights=(),
                    jit_compile: bool = False, l2: float = 0.0) -> Callable[[Any, tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]:
    """Several training steps in one ``tf.function``: ``loop(iterator, n) -> (loss, steps_run)``.

    Runs the step of :func:`make_train_step` up to ``n`` times (``n`` an int32 scalar tensor,
    so a new ``n`` does not retrace) with no round trip to Python between steps, and stops
    right after the first step whose loss is not finite. ``loss`` is that of the last step
    run, ``steps_run`` how many ran. Same arguments as :func:`make_train_step`.
    """
    step_on_batch = _make_step_on_batch(model, optimizer, strategy, num_classes, ignore_label, class_weights,
                                        aux_weights, l2)
    # Under XLA only the replicated step is compiled; the loop and the iterator stay outside it.
    run_batch = tf.function(step_on_batch, jit_compile=True) if jit_compile else step_on_batch

    @tf.function
    def train_loop(it, n):
        loss = tf.constant(0.0, tf.float32)
        done = tf.constant(0, tf.int32)
        for _ in tf.range(n):
            loss = tf.cast(run_batch(*next(it)), tf.float32)
            done += 1
            if not tf.math.is_finite(loss):
                break
        return loss, done

    return train_loop


def steps_until_boundary(step: int, limit: int, steps_per_loop: int, *periods: int) -> int:
    """How many steps the next loop runs from ``step``: at most ``steps_per_loop``, never past
    ``limit``, and ending on the next multiple of each non-zero period (logging, checkpoints,
    evaluation), so every event happens at exactly the step it would with one step per loop."""
    n = min(steps_per_loop, limit - step)
    for period in periods:
        if period:
            n = min(n, period - step % period)
    return max(n, 1)
