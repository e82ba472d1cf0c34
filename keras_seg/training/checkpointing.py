"""The run's checkpoints: latest and best, on every worker, with the dropout RNG state.

A checkpoint holds the model, the optimizer (its step drives the learning-rate schedule), the
float16 loss scale where there is one and the dropout RNG state, so a resumed run continues
exactly where an uninterrupted one would have been.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Callable, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from keras_seg.checkpoints import (CheckpointError, error_line, find_checkpoint, read_model_config, remove_partial_writes,
                                  restore_newest, set_aside_checkpoints)
from keras_seg.distribute import num_workers, sum_over_workers, worker_index
from keras_seg.layout import ModelDir
from keras_seg.options import TrainConfig
from keras_seg.precision import inner_optimizer, loss_scale_state
from keras_seg.training.model_dir import writing


def seed_generator_states(model: keras.Model) -> Dict[str, keras.Variable]:
    """The state variables of the model's ``keras.random.SeedGenerator`` s (dropout), by layer name.

    Keras tracks them as model variables, but ``tf.train.Checkpoint(model=...)`` does not
    save them; checkpointing this dict makes dropout masks continue exactly after a resume.
    """
    states: Dict[str, keras.Variable] = {}

    def visit(layer):
        if isinstance(layer, keras.Model) and layer is not model:
            for sub in layer.layers:
                visit(sub)
            return
        own = [v for v in layer.variables if v.name == "seed_generator_state"]
        for i, v in enumerate(own):
            states[f"{layer.name}_seed{i}"] = v

    for layer in model.layers:
        visit(layer)
    return states


@dataclasses.dataclass
class Progress:
    """Where a run is, for error messages."""

    step: int = 0
    last_checkpoint: Optional[str] = None

    def __str__(self) -> str:
        return f"At step {self.step}; last checkpoint: {self.last_checkpoint or 'none'}. "


class RunCheckpoints:
    """Restores and saves the run's latest and best checkpoints on every worker.

    Every worker takes part in every save, as ``MultiWorkerMirroredStrategy`` requires; the
    chief writes ``model_dir/ckpt`` and ``model_dir/best`` through
    ``tf.train.CheckpointManager`` (data files first, then the ``checkpoint`` state file,
    each through a temporary file and a rename), the other workers write to
    ``model_dir/.tmp-worker-<i>``, which is removed at once. Every worker restores from the
    chief's ``ckpt`` directory, so ``model_dir`` must be shared by all of them.
    """

    def __init__(self, cfg: TrainConfig, model: keras.Model, optimizer, chief: bool, index: int,
                 progress: Progress, log: Callable[[str], None]):
        # The inner optimizer of a LossScaleOptimizer, and its loss scale apart, so that the
        # layout is the same under every --mixed_precision (keras_seg/precision.py).
        self._model, self._optimizer = model, inner_optimizer(optimizer)
        self._loss_scale = loss_scale_state(optimizer)
        self._rng = seed_generator_states(model)
        self.chief, self.progress, self.log = chief, progress, log
        paths = ModelDir(cfg.model_dir)
        self.latest_dir, self.best_dir, self.tmp_dir = paths.latest_dir, paths.best_dir, paths.worker_tmp(index)
        self._ckpt = tf.train.Checkpoint(model=model, optimizer=self._optimizer, rng=self._rng,
                                         **({"loss_scale": self._loss_scale} if self._loss_scale else {}))
        self._best = tf.train.Checkpoint(model=model)
        self._keep = cfg.keep_checkpoints
        self._managers: Dict[str, tf.train.CheckpointManager] = {}

    def _for_restore(self, path: str) -> tf.train.Checkpoint:
        """A fresh checkpoint object for ``path``; without the RNG state if ``path`` predates it.

        The float16 loss scale is restored when ``path`` has one; a checkpoint of a float32 or
        bfloat16 run has none, and the loss scale then starts at its initial value.
        """
        names = [name for name, _ in tf.train.list_variables(path)]
        parts = {"model": self._model, "optimizer": self._optimizer}
        if self._loss_scale and any(name.startswith("loss_scale/") for name in names):
            parts["loss_scale"] = self._loss_scale
        if self._rng and not any(name.startswith("rng/") for name in names):
            self.log(f"warning: {path} holds no dropout RNG state (written by an older keras_seg); the "
                     "dropout masks after this resume differ from those of an uninterrupted run.")
            return tf.train.Checkpoint(**parts)
        return tf.train.Checkpoint(**parts, rng=self._rng)

    def restore(self) -> Optional[str]:
        """Restores the newest readable checkpoint; the chief sets unreadable ones aside."""
        if self.chief:
            for d in (self.latest_dir, self.best_dir):
                if os.path.isdir(d):
                    for path in remove_partial_writes(d):
                        self.log(f"Removed {path}, left by a checkpoint write that was interrupted.")
        else:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        path, bad = restore_newest(self._for_restore, self.latest_dir, self.log)
        if self.chief:
            if bad:
                with writing("", self.latest_dir, self.progress.step, path):
                    set_aside_checkpoints(self.latest_dir, bad, path)
                self.log(f"Renamed the files of {bad} to *.corrupt.")
            self._managers = {
                "latest": tf.train.CheckpointManager(self._ckpt, self.latest_dir, max_to_keep=self._keep),
                "best": tf.train.CheckpointManager(self._best, self.best_dir, max_to_keep=1),
            }
        return path

    def save(self, kind: str, step: int) -> str:
        """Saves the ``latest`` or ``best`` checkpoint of ``step``; returns the chief's path."""
        target = os.path.join(self.latest_dir if kind == "latest" else self.best_dir, f"ckpt-{step}")
        if self.chief:
            with writing("checkpoint", target, step, self.progress.last_checkpoint):
                return self._managers[kind].save(checkpoint_number=step)
        with writing("temporary checkpoint", self.tmp_dir, step, self.progress.last_checkpoint):
            (self._ckpt if kind == "latest" else self._best).write(os.path.join(self.tmp_dir, f"ckpt-{step}"))
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        return target


def init_model_from(cfg: TrainConfig, model: keras.Model, model_config: Dict, log: Callable[[str], None]) -> str:
    """Reads the model weights of ``cfg.init_checkpoint`` in the run ``cfg.init_from``; returns its path.

    Only the model is read (the optimizer, step and RNG state stay fresh). The source run must
    have the same model, classes and model options, or the weights would not mean the same.

    Raises:
      CheckpointError: the source is not a training run, has no such checkpoint, is of another
        model, or its weights do not fit this model.
    """
    source = read_model_config(cfg.init_from)
    for key in ("model", "num_classes", "model_options"):
        if source.get(key) != model_config[key]:
            raise CheckpointError(
                f"--init_from={cfg.init_from} holds a run with {key}={source.get(key)!r}, but this run has "
                f"{key}={model_config[key]!r}. Initialise from a run of the same model, or drop --init_from."
            )
    path = find_checkpoint(cfg.init_from, cfg.init_checkpoint)
    try:
        status = tf.train.Checkpoint(model=model).read(path)
        status.expect_partial()  # the source's optimizer and RNG state are not wanted
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError, IndexError) as e:
        raise CheckpointError(f"--init_from checkpoint {path} cannot be read into {cfg.model}: {error_line(e)}. "
                              "Is it complete? Choose another --init_checkpoint.") from e
    log(f"Initialised the model from {path} (weights only; the optimizer and step start at 0).")
    return path


def check_same_step(strategy: tf.distribute.Strategy, step: int, ckpt_dir: str) -> None:
    """Multi-worker: every worker must have restored the same checkpoint."""
    workers = num_workers(strategy)
    steps = sum_over_workers(strategy, np.eye(workers, dtype=np.int64)[worker_index(strategy)] * step)
    if len(set(steps.tolist())) > 1:
        raise ValueError(
            f"The workers resumed from different steps {steps.tolist()}: every worker must read the "
            f"chief's checkpoints in {ckpt_dir}, so --model_dir must be one directory on a filesystem "
            "that all workers share."
        )
