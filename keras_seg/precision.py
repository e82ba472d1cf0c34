"""Mixed precision: the ``--mixed_precision`` choices and the Keras dtype policy behind each.

==========  ==================  =====================================================
choice      Keras policy        what changes
==========  ==================  =====================================================
float32     ``float32``         nothing (the default)
bfloat16    ``mixed_bfloat16``  layers compute in bfloat16; variables stay float32
float16     ``mixed_float16``   layers compute in float16; variables stay float32; the
                                optimizer is a ``LossScaleOptimizer`` (dynamic loss scaling)
==========  ==================  =====================================================

Under every policy the logits (every model's ``logits`` layer and its auxiliary outputs),
the softmax and the loss are float32, and the model's variables are float32, so a
checkpoint does not depend on the policy it was written under.

The policy is applied while a model is *built*, by :func:`precision_scope`: Keras layers
take the current dtype policy when they are constructed, so building one of our functional
models inside the scope gives each of its layers the policy, except the layers that fix
their own (``dtype="float32"`` on ``logits``, on ``resize_logits`` and on the classifier
convolutions before a final crop or resize). A scope rather than a ``dtype=`` argument
because the builders compose many helpers (``conv_bn_act``, ``aspp``, the backbones, ...),
each creating its layers: a ``dtype=`` would have to be threaded through all of them. Keras
3 has no public context manager for this, and its policy is a per-thread setting
(``keras.src.backend.common.global_state`` is ``threading.local``), so the scope sets it and
restores the previous one on exit, touching no other thread.

This module imports Keras only inside its functions, so the flag code can use
:data:`PRECISIONS` without TensorFlow.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["PRECISIONS", "POLICIES", "HELP", "check_precision", "precision_scope", "wrap_optimizer",
           "inner_optimizer", "loss_scale_state"]

#: The ``--mixed_precision`` choices, in help order.
PRECISIONS = ("float32", "bfloat16", "float16")
#: The Keras dtype policy of each choice.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

#: The ``--help`` text of ``--mixed_precision``, shared by the commands that take it (each adds a sentence).
HELP = (
    "Compute precision. float32: full precision. bfloat16 / float16: the Keras mixed_bfloat16 / "
    "mixed_float16 policy; layers compute in 16 bits while the variables, the logits, the softmax and the "
    "loss stay float32. bfloat16 is fast only on CPUs with native bf16 (AVX512_BF16 / AMX) and on recent "
    "accelerators, and may be slower than float32 elsewhere. float16 is for GPUs (on CPUs float16 is "
    "emulated and slow)."
)


def check_precision(value: str, flag: str = "mixed_precision") -> str:
    """Returns ``value`` if it is one of :data:`PRECISIONS`.

    Args:
      value: the precision to check.
      flag: the flag name the error message uses.

    Raises:
      ValueError: naming the value received and the accepted ones.
    """
    if value not in PRECISIONS:
        hint = f" (the Keras policy {value!r} is --{flag}={_choice_of(value)})" if _choice_of(value) else ""
        raise ValueError(
            f"--{flag} must be one of {', '.join(PRECISIONS)}{hint}. Received: {flag}={value!r}"
        )
    return value


def _choice_of(policy) -> str:
    """The choice whose Keras policy is ``policy`` ('' if none)."""
    return next((k for k, v in POLICIES.items() if v == policy and k != v), "")


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """Builds the models created inside under ``precision``'s Keras dtype policy.

    Sets the (per-thread) Keras dtype policy and restores the previous one on exit, also
    when the body raises. A model keeps its layers' policies after the scope ends.

    Args:
      precision: one of :data:`PRECISIONS`.

    Raises:
      ValueError: for any other value.
    """
    import keras  # pylint: disable=import-outside-toplevel

    check_precision(precision)
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def wrap_optimizer(optimizer, precision: str):
    """``optimizer`` wrapped in a ``keras.optimizers.LossScaleOptimizer`` for float16, else itself.

    float16's range ends at 65504 and its smallest normal number is 6e-5, so small gradients
    underflow to zero; the wrapper multiplies the loss by a scale before the gradients are
    taken (``optimizer.scale_loss``), divides the gradients by it before the update, skips
    the update when a gradient is not finite and then halves the scale, and doubles the
    scale after 2000 finite steps. bfloat16 has float32's range and needs none of this.
    """
    import keras  # pylint: disable=import-outside-toplevel

    check_precision(precision)
    if precision != "float16" or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


def inner_optimizer(optimizer):
    """The optimizer a ``LossScaleOptimizer`` wraps (what checkpoints hold), else ``optimizer``.

    Checkpointing the inner optimizer keeps the checkpoint layout the same under every
    policy: ``tf.train.Checkpoint(optimizer=LossScaleOptimizer(...))`` would nest the slots
    and the step one level deeper (``optimizer/inner_optimizer/...``), and a float32 run
    could not restore them.
    """
    import keras  # pylint: disable=import-outside-toplevel

    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def loss_scale_state(optimizer) -> dict:
    """``{"scale": ..., "good_steps": ...}``: the variables of a built ``LossScaleOptimizer``; ``{}`` otherwise."""
    import keras  # pylint: disable=import-outside-toplevel

    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return {}
    if not optimizer.built:
        raise ValueError("Build the LossScaleOptimizer (optimizer.build(variables)) before checkpointing it.")
    return {"scale": optimizer.dynamic_scale, "good_steps": optimizer.step_counter}
