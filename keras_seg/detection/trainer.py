"""Mask R-CNN training: the distributed step, the loop and its hooks (log, checkpoint, evaluation).

The loop mirrors the semantic one (:mod:`keras_seg.training.loop`): a custom loop under
``tf.distribute`` (``MirroredStrategy`` over the local devices), checkpoints of the model,
the optimizer (its step drives the poly schedule of
:class:`keras_seg.training.schedule.PolyWithWarmup`) and the target-sampling
``SeedGenerator`` states (:func:`keras_seg.training.checkpointing.seed_generator_states`),
so a resumed run samples the same anchors and RoIs, sees the same batches (the training
stream is a pure function of the seed; a resume skips the batches already consumed) and,
with ``--deterministic``, ends with the weights of an uninterrupted one.

Losses across replicas: each replica's losses are means over its own images' sampled
anchors and RoIs; each replica takes the gradient of ``sum_k w_k L_k / replicas`` and the
optimizer sums the replicas' gradients, so the update is the mean of the replicas' losses,
which is the global-batch mean whenever the replicas sample equally many anchors and RoIs
(the samplers draw ``batch_per_image`` per image; only images short of candidates draw
fewer, and the mask loss averages over each replica's own foreground RoIs). The backbone's
batch norm is synchronized (:func:`keras_seg.models.blocks.batch_norm`), so the forward pass
normalises with the global batch's statistics. The global batch is split across replicas by
``experimental_distribute_dataset``, so the batches do not depend on the replica count.
tests/detection/test_distributed_step.py checks on two CPU replicas that a step equals the
single-device step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, Optional

import keras
import tensorflow as tf

from keras_seg.checkpoints import remove_partial_writes, restore_newest
from keras_seg.data import features as F
from keras_seg.data.manifest import load_manifest
from keras_seg.detection.evaluation import eval_dataset, evaluate_detector, format_metrics, metrics_record
from keras_seg.detection.model import LOSS_NAMES, inference_model_from, transfer_weights
from keras_seg.detection.options import LOSS_WEIGHT_FIELDS, DetectionTrainConfig
from keras_seg.detection.run_dir import build_train_model, check_model_dir, make_model_config
from keras_seg.distribute import make_strategy
from keras_seg.fileio import atomic_write_json, atomic_write_text
from keras_seg.layout import ModelDir
from keras_seg.training.checkpointing import seed_generator_states
from keras_seg.training.loop import NonFiniteLossError
from keras_seg.training.model_dir import check_writable, writing
from keras_seg.training.schedule import PolyWithWarmup, build_optimizer
from keras_seg.training.summaries import write_scalar

__all__ = ["DetectionTrainResult", "make_detection_optimizer", "make_detection_step", "train_detector"]

_TRAIN_INPUTS = ("gt_boxes", "gt_classes", "gt_masks")


@dataclasses.dataclass
class DetectionTrainResult:
    """What :func:`train_detector` returns: the final step, the last logged losses, throughput, last metrics."""

    step: int
    losses: Dict[str, float]
    images_per_second: float
    metrics: Optional[Dict[str, Any]]


def make_detection_optimizer(cfg: DetectionTrainConfig) -> keras.optimizers.Optimizer:
    """SGD with momentum or AdamW on the poly schedule with warm-up; decoupled decay off biases and norms.

    The semantic trainer's builder (:func:`keras_seg.training.schedule.build_optimizer`) in
    float32: the detection config has no coupled decay and no mixed precision.
    """
    return build_optimizer(
        cfg.optimizer, cfg.learning_rate, cfg.train_steps, warmup_steps=cfg.warmup_steps,
        poly_power=cfg.poly_power, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_detection_step(model: keras.Model, optimizer, strategy: tf.distribute.Strategy,
                        loss_weights: Dict[str, float], clip_norm: float = 0.0) -> Callable:
    """``step(distributed_iterator) -> {loss name: global mean, "total": weighted sum}`` as a ``tf.function``.

    See the module docstring for how the replicas' losses combine. With ``clip_norm > 0`` the
    replicas' gradients are summed first (one all-reduce), clipped by their global norm, and
    each replica applies ``1 / replicas`` of the clipped sum (the optimizer sums them again).
    """
    replicas = strategy.num_replicas_in_sync
    variables = model.trainable_variables

    def replica_step(inputs):
        with tf.GradientTape() as tape:
            losses = model(inputs, training=True)
            total = tf.add_n([loss_weights[k] * losses[k] for k in LOSS_NAMES])
            scaled = total / replicas
        grads = tape.gradient(scaled, variables)
        if clip_norm:
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, clip_norm)
            grads = [g / replicas for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        return {**{k: losses[k] / replicas for k in LOSS_NAMES}, "total": scaled}

    @tf.function
    def step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    return step


def _train_dataset(cfg: DetectionTrainConfig, skip: int) -> tf.data.Dataset:
    """The training batches from batch ``skip`` on, as the train model's input dict."""
    from keras_seg.detection.data import make_instance_dataset  # pylint: disable=import-outside-toplevel

    ds = make_instance_dataset(cfg.data_dir, cfg.train_split, cfg.batch_size, tuple(cfg.image_size),
                               cfg.max_instances, training=True, seed=cfg.seed)
    ds = ds.map(lambda features, labels: {"image": features["image"], **{k: labels[k] for k in _TRAIN_INPUTS}})
    return ds.skip(skip) if skip else ds


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(max(seconds, 0)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class _Checkpoints:
    """``ckpt/`` (model, optimizer, sampling state; ``keep_checkpoints``) and ``best/`` (model only)."""

    def __init__(self, cfg: DetectionTrainConfig, model, optimizer, log):
        paths = ModelDir(cfg.model_dir)
        self.latest_dir, self.best_dir, self.log = paths.latest_dir, paths.best_dir, log
        self._parts = {"model": model, "optimizer": optimizer, "rng": seed_generator_states(model)}
        self._latest = tf.train.CheckpointManager(tf.train.Checkpoint(**self._parts), self.latest_dir,
                                                  max_to_keep=cfg.keep_checkpoints)
        self._best = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), self.best_dir, max_to_keep=1)
        self.last: Optional[str] = None

    def restore(self) -> Optional[str]:
        for d in (self.latest_dir, self.best_dir):
            if os.path.isdir(d):
                for path in remove_partial_writes(d):
                    self.log(f"Removed {path}, left by a checkpoint write that was interrupted.")
        self.last, _ = restore_newest(lambda path: tf.train.Checkpoint(**self._parts), self.latest_dir, self.log)
        return self.last

    def save(self, kind: str, step: int) -> str:
        manager = self._latest if kind == "latest" else self._best
        with writing("checkpoint", manager.directory, step, self.last):
            path = manager.save(checkpoint_number=step)
        if kind == "latest":
            self.last = path
        return path


class _Evaluator:
    """The evaluation hook: mask and box AP of the eval split, ``eval/metrics-<step>.json``, best by mask AP50."""

    def __init__(self, cfg: DetectionTrainConfig, config: Dict[str, Any], model, checkpoints: _Checkpoints, log):
        self.cfg, self.config, self.model, self.checkpoints, self.log = cfg, config, model, checkpoints, log
        self.paths = ModelDir(cfg.model_dir)
        self.inference = None
        self.writer = tf.summary.create_file_writer(self.paths.eval_dir)
        self.best = None
        if os.path.isfile(self.paths.best_json):  # a resumed run keeps its best so far
            with open(self.paths.best_json, encoding="utf-8") as f:
                self.best = json.load(f)["mask_AP50"]

    def __call__(self, step: int) -> Optional[Dict[str, Any]]:
        cfg = self.cfg
        if not cfg.eval_split:
            return None
        if self.inference is None:  # built once, outside the strategy; weights copied by name each time
            self.inference = inference_model_from(self.model)
        else:
            transfer_weights(self.model, self.inference)
        data = eval_dataset(cfg.data_dir, cfg.eval_split, tuple(cfg.image_size), cfg.eval_batch_size,
                            self.config["preprocessing"], cfg.eval_images)
        metrics = evaluate_detector(self.inference, data, self.config["class_names"], self.log)
        record = metrics_record(metrics, step, cfg.eval_split, self.checkpoints.last or "")
        path = self.paths.metrics_json(step)
        with writing("metrics", path, step, self.checkpoints.last):
            os.makedirs(self.paths.eval_dir, exist_ok=True)
            atomic_write_json(path, record)
            with self.writer.as_default(step=step):
                for t, name in (("bbox", "box"), ("segm", "mask")):
                    for k, v in metrics[t].items():
                        if v == v:
                            write_scalar(f"{name}/{k}", v, step)
            self.writer.flush()
        self.log(f"eval @ step {step} ({cfg.eval_split}, {metrics['num_images']} images): {format_metrics(metrics)}")
        ap50 = metrics["segm"]["AP50"]
        if ap50 == ap50 and (self.best is None or ap50 > self.best):
            self.checkpoints.save("best", step)
            self.best = ap50
            with writing("", self.paths.best_json, step, self.checkpoints.last):
                atomic_write_json(self.paths.best_json, {"step": step, "mask_AP50": ap50, "split": cfg.eval_split})
        return metrics


class _ProgressLog:
    """Progress lines (mean losses over the window, lr, img/s, ETA) and the train scalars."""

    def __init__(self, cfg: DetectionTrainConfig, log):
        self.cfg, self.log = cfg, log
        self.schedule = PolyWithWarmup(cfg.learning_rate, cfg.train_steps, cfg.warmup_steps, cfg.poly_power)
        self.train_dir = ModelDir(cfg.model_dir).train_dir
        self.writer = tf.summary.create_file_writer(self.train_dir)
        self.start, self.sums, self.steps = time.time(), {}, 0

    def add(self, losses: Dict[str, float]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def __call__(self, step: int, last_checkpoint: Optional[str]) -> Dict[str, float]:
        cfg, now = self.cfg, time.time()
        means = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        ips = self.steps * cfg.batch_size / max(now - self.start, 1e-9)
        eta = (cfg.train_steps - step) * cfg.batch_size / max(ips, 1e-9)
        lr = float(self.schedule(step - 1))  # the rate the last step used
        parts = "  ".join(f"{k} {means[k]:.4f}" for k in LOSS_NAMES)
        self.log(f"step {step}/{cfg.train_steps}  loss {means['total']:.4f}  ({parts})  lr {lr:.3g}  "
                 f"{ips:.1f} img/s  ETA {_fmt_time(eta)}")
        with writing("TensorBoard summaries to", self.train_dir, step, last_checkpoint):
            with self.writer.as_default(step=step):
                write_scalar("loss", means["total"], step)
                for k in LOSS_NAMES:
                    write_scalar(f"loss/{k}", means[k], step)
                write_scalar("learning_rate", lr, step)
                write_scalar("images_per_second", ips, step)
            self.writer.flush()
        self.start, self.sums, self.steps = now, {}, 0
        return means


def _start(cfg: DetectionTrainConfig, flags_text: Optional[str], strategy):
    """Checks the data, prepares the model_dir and makes the strategy: ``(model_config, strategy)``."""
    manifest = load_manifest(cfg.data_dir, task=F.TASK_INSTANCE)  # names the task of a semantic dataset
    need = int(manifest["splits"].get(cfg.train_split, {}).get("max_objects", 0))
    if need > cfg.max_instances:
        raise ValueError(f"an image of split {cfg.train_split!r} in {cfg.data_dir} has {need} objects, more than "
                         f"--max_instances={cfg.max_instances}. Received: max_instances={cfg.max_instances}")
    config = make_model_config(cfg, manifest)
    check_writable(cfg.model_dir)
    with writing("", ModelDir(cfg.model_dir).model_config, 0, None):
        check_model_dir(cfg.model_dir, config)
        if flags_text is not None:
            atomic_write_text(ModelDir(cfg.model_dir).flags_txt, flags_text)
    strategy = strategy or make_strategy(cfg.strategy, cfg.device or None)
    if cfg.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the "
                         f"{strategy.num_replicas_in_sync} replicas.")
    return config, strategy


def train_detector(cfg: DetectionTrainConfig, *, flags_text: Optional[str] = None, log: Callable[[str], None] = print,
                   strategy: Optional[tf.distribute.Strategy] = None) -> DetectionTrainResult:
    """Trains (or resumes) Mask R-CNN on ``cfg.data_dir``; writes everything to ``cfg.model_dir``.

    Args:
      cfg: a validated :class:`~keras_seg.detection.options.DetectionTrainConfig`.
      flags_text: the resolved flags, written to ``model_dir/flags.txt``.
      log: progress printer.
      strategy: default from ``cfg.strategy``.

    Returns:
      A :class:`DetectionTrainResult`.

    Raises:
      ValueError: a semantic dataset (``ManifestError``), too few ``max_instances``, a
        model_dir of another model, a batch that does not split over the replicas.
      NonFiniteLossError: a loss became NaN or Inf (names the step and the last checkpoint).
      ModelDirWriteError, CheckpointError: as in the semantic trainer.
    """
    config, strategy = _start(cfg, flags_text, strategy)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_train_model(config)
        optimizer = make_detection_optimizer(cfg)
        optimizer.build(model.trainable_variables)
    checkpoints = _Checkpoints(cfg, model, optimizer, log)
    if checkpoints.restore():
        log(f"Resumed from {checkpoints.last} at step {int(optimizer.iterations.numpy())}.")
    step = int(optimizer.iterations.numpy())
    evaluator = _Evaluator(cfg, config, model, checkpoints, log)
    if step >= cfg.train_steps:
        log(f"{checkpoints.latest_dir} is already at step {step} >= --train_steps={cfg.train_steps}; nothing to train.")
        return DetectionTrainResult(step, {}, 0.0, evaluator(step))
    weights = {name: float(getattr(cfg, field)) for name, field in zip(LOSS_NAMES, LOSS_WEIGHT_FIELDS)}
    train_step = make_detection_step(model, optimizer, strategy, weights, cfg.clip_norm)
    iterator = iter(strategy.experimental_distribute_dataset(_train_dataset(cfg, step)))
    logger = _ProgressLog(cfg, log)
    log(f"Training Mask R-CNN ({config['model_options']['backbone']}) on {strategy.num_replicas_in_sync} replica(s), "
        f"global batch {cfg.batch_size}, {cfg.image_size[0]}x{cfg.image_size[1]}, steps {step}->{cfg.train_steps}.")
    t0, first = time.time(), step
    stop_at = min(cfg.train_steps, step + cfg.steps_per_run) if cfg.steps_per_run else cfg.train_steps
    means: Dict[str, float] = {}
    metrics = None
    while step < stop_at:
        losses = {k: float(v) for k, v in train_step(iterator).items()}
        step += 1
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"loss {bad[0]} is {losses[bad[0]]} at step {step} (losses: {losses}). Last good checkpoint: "
                f"{checkpoints.last or 'none (no checkpoint was written yet)'}; it is kept. Lower --learning_rate, "
                "set --clip_norm or --warmup_steps, or check the data (python -m data_prep.verify).")
        logger.add(losses)
        if step % cfg.log_every == 0 or step == stop_at:
            means = logger(step, checkpoints.last)
        if step % cfg.checkpoint_every == 0 or step == stop_at:
            checkpoints.save("latest", step)
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.train_steps:
            metrics = evaluator(step)
    if step < cfg.train_steps:
        log(f"Stopped at step {step} after --steps_per_run={cfg.steps_per_run}; rerun the same command to continue.")
    ips = (step - first) * cfg.batch_size / max(time.time() - t0, 1e-9)
    log(f"Finished at step {step} in {_fmt_time(time.time() - t0)} ({ips:.1f} img/s overall).")
    return DetectionTrainResult(step, means, ips, metrics)
