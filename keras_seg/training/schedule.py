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


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    """SGD with momentum or AdamW, poly schedule with warm-up, decoupled weight decay.

    With ``cfg.weight_decay_mode == "coupled"`` the optimizer has no decay of its own: the
    training step adds the L2 gradient instead (:func:`make_train_step`'s ``l2``).
    With ``cfg.mixed_precision == "float16"`` it is wrapped in a
    ``keras.optimizers.LossScaleOptimizer`` (:func:`keras_seg.precision.wrap_optimizer`).
    """
    lr = PolyWithWarmup(cfg.learning_rate, cfg.train_steps, cfg.warmup_steps, cfg.poly_power)
    wd = (cfg.weight_decay or None) if cfg.weight_decay_mode == "decoupled" else None
    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=wd)
    else:
        opt = keras.optimizers.AdamW(lr, beta_1=cfg.momentum, weight_decay=wd or 0.0)
    if wd:
        opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return wrap_optimizer(opt, cfg.mixed_precision)
