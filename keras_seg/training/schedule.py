"""Learning-rate schedule (poly with linear warm-up), the optimizer, and which variables decay."""

from __future__ import annotations

from typing import List

import keras
import tensorflow as tf

from keras_seg.options import TrainConfig
from keras_seg.precision import wrap_optimizer


@keras.saving.register_keras_serializable(package="keras_seg")
class PolyWithWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``base_lr``, then ``base_lr * (1 - t)**power`` to zero at ``total_steps``."""

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, power: float = 0.9):
        self.base_lr, self.total_steps = float(base_lr), int(total_steps)
        self.warmup_steps, self.power = int(warmup_steps), float(power)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = float(max(self.warmup_steps, 1))
        decay_len = float(max(self.total_steps - self.warmup_steps, 1))
        t = tf.clip_by_value((step - self.warmup_steps) / decay_len, 0.0, 1.0)
        poly = self.base_lr * tf.pow(1.0 - t, self.power)
        if self.warmup_steps == 0:
            return poly
        return tf.where(step < self.warmup_steps, self.base_lr * (step + 1.0) / warm, poly)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "power": self.power}


NO_DECAY = ("bias", "gamma", "beta")  # variable names weight decay leaves alone


def decayed_variables(model: keras.Model) -> List[keras.Variable]:
    """The trainable variables weight decay applies to: all but biases and norm scales/offsets."""
    return [v for v in model.trainable_variables if v.name not in NO_DECAY]


def build_optimizer(
    optimizer: str,
    learning_rate: float,
    train_steps: int,
    *,
    warmup_steps: int = 0,
    poly_power: float = 0.9,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    decoupled_decay: bool = True,
    mixed_precision: str = "float32",
) -> keras.optimizers.Optimizer:
    """SGD with momentum (``"sgd"``) or AdamW (``"adamw"``) on :class:`PolyWithWarmup`.

    The one optimizer builder of the semantic and the detection trainers. With
    ``decoupled_decay`` the optimizer decays every variable but biases and norm parameters
    (:data:`NO_DECAY`) by ``weight_decay``; without it the optimizer has no decay of its own and
    the caller adds the L2 gradient. ``mixed_precision="float16"`` wraps it in a loss-scale
    optimizer (:func:`keras_seg.precision.wrap_optimizer`).
    """
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    lr = PolyWithWarmup(learning_rate, train_steps, warmup_steps, poly_power)
    wd = (weight_decay or None) if decoupled_decay else None
    if optimizer == "sgd":
        opt = keras.optimizers.SGD(lr, momentum=momentum, weight_decay=wd)
    else:
        opt = keras.optimizers.AdamW(lr, beta_1=momentum, weight_decay=wd or 0.0)
    if wd:
        opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return wrap_optimizer(opt, mixed_precision)


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    """The semantic trainer's optimizer: :func:`build_optimizer` from a :class:`TrainConfig`.

    With ``cfg.weight_decay_mode == "coupled"`` the optimizer has no decay of its own: the
    training step adds the L2 gradient instead (:func:`make_train_step`'s ``l2``).
    With ``cfg.mixed_precision == "float16"`` it is wrapped in a
    ``keras.optimizers.LossScaleOptimizer`` (:func:`keras_seg.precision.wrap_optimizer`).
    """
    return build_optimizer(
        cfg.optimizer, cfg.learning_rate, cfg.train_steps, warmup_steps=cfg.warmup_steps,
        poly_power=cfg.poly_power, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        decoupled_decay=cfg.weight_decay_mode == "decoupled", mixed_precision=cfg.mixed_precision)
