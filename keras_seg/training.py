"""The distributed training loop, evaluation and learning-rate schedule.

A custom loop rather than ``model.fit``: Keras 3's ``fit`` does not run under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), and the loss is normalised by the
*global* count of valid pixels, so N replicas compute exactly the single-device update.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from keras_seg.checkpoints import BEST_DIR, LATEST_DIR, build_full_model, write_model_config, read_model_config
from keras_seg.data.augment import AugmentConfig
from keras_seg.data.manifest import atomic_write_json, class_weights_from_manifest, load_manifest
from keras_seg.data.pipeline import DataConfig, make_dataset
from keras_seg.flags import TrainConfig
from keras_seg.losses import pixel_ce_sums
from keras_seg.metrics import StreamingConfusionMatrixMetric, scores_from_confusion_matrix
from keras_seg.registry import get_spec


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


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    """SGD with momentum or AdamW, poly schedule with warm-up, decoupled weight decay."""
    lr = PolyWithWarmup(cfg.learning_rate, cfg.train_steps, cfg.warmup_steps, cfg.poly_power)
    wd = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=wd)
    else:
        opt = keras.optimizers.AdamW(lr, beta_1=cfg.momentum, weight_decay=cfg.weight_decay)
    if wd:
        opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


def make_strategy(name: str = "auto", device: Optional[str] = None) -> tf.distribute.Strategy:
    """``mirrored`` (all local devices), ``one_device``, ``multi_worker`` or ``auto``.

    ``auto`` picks ``multi_worker`` when ``TF_CONFIG`` names a cluster of more than one
    task, else ``mirrored``.
    """
    if name == "auto":
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
        tasks = sum(len(v) for v in tf_config.get("cluster", {}).values())
        name = "multi_worker" if tasks > 1 else "mirrored"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(device or "/cpu:0")
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy. Received: strategy={name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one task that writes checkpoints, summaries and metrics."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def evaluate(model: keras.Model, dataset: tf.data.Dataset, num_classes: int, ignore_label: int,
             log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Runs ``model`` over ``dataset`` and returns the FCN scores plus the confusion matrix."""
    metric = StreamingConfusionMatrixMetric(num_classes, ignore_label)

    @tf.function
    def step(images, labels):
        out = model(images, training=False)
        if isinstance(out, (list, tuple)):
            out = out[0]
        metric.update_state(labels, out)

    n = 0
    start = time.time()
    for images, labels, _ in dataset:
        step(images, labels)
        n += int(images.shape[0])
    cm = metric.confusion_matrix()
    scores = scores_from_confusion_matrix(cm)
    if log:
        log(f"evaluated {n} images in {time.time() - start:.1f}s")
    scores["num_images"] = n
    scores["confusion_matrix"] = cm
    return scores


def format_iou_table(scores: Dict[str, Any], class_names: List[str]) -> str:
    """A per-class IoU table followed by the four FCN scores."""
    width = max([len(c) for c in class_names] + [8])
    lines = [f"{'class':<{width}}  IoU", f"{'-' * width}  ------"]
    for name, iu in zip(class_names, scores["iu"]):
        lines.append(f"{name:<{width}}  {'   n/a' if np.isnan(iu) else f'{iu:6.4f}'}")
    lines.append(f"{'-' * width}  ------")
    for k in ("mean_iu", "acc", "acc_cls", "fwavacc"):
        lines.append(f"{k:<{width}}  {scores[k]:6.4f}")
    return "\n".join(lines)


def scores_to_json(scores: Dict[str, Any], class_names: List[str], step: int) -> Dict[str, Any]:
    """A JSON-safe record of an evaluation (NaN IoUs become null)."""
    def f(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return {
        "step": int(step),
        "num_images": int(scores.get("num_images", 0)),
        **{k: f(scores[k]) for k in ("acc", "acc_cls", "mean_iu", "fwavacc")},
        "iu": {name: f(float(v)) for name, v in zip(class_names, scores["iu"])},
        "confusion_matrix": np.asarray(scores["confusion_matrix"]).astype(np.int64).tolist(),
    }


def _check_writable(model_dir: str) -> None:
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-probe-{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"--model_dir {model_dir} is not writable ({e.strerror}). Choose another directory.") from e


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


_SCALAR_METADATA = None


def write_scalar(name: str, value: float, step: int) -> None:
    """Writes a TensorBoard scalar with core TF ops (no dependency on the tensorboard package)."""
    global _SCALAR_METADATA  # pylint: disable=global-statement
    if _SCALAR_METADATA is None:
        from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel

        _SCALAR_METADATA = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        ).SerializeToString()
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=_SCALAR_METADATA)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    step: int
    loss: float
    images_per_second: float
    eval_scores: Optional[Dict[str, Any]]


def train(cfg: TrainConfig, *, flags_text: Optional[str] = None, log: Callable[[str], None] = print,
          strategy: Optional[tf.distribute.Strategy] = None) -> TrainResult:
    """Trains (or resumes) ``cfg.model`` on ``cfg.data_dir``; writes everything to ``cfg.model_dir``.

    Args:
      cfg: validated :class:`TrainConfig`.
      flags_text: the resolved flags, written to ``model_dir/flags.txt``.
      log: progress printer.
      strategy: a ``tf.distribute.Strategy``; default from ``cfg.strategy``.

    Returns:
      A :class:`TrainResult` with the final step, loss, throughput and last eval scores.

    Raises:
      ValueError: inconsistent flags and data (num_classes vs manifest, a model_dir that
        holds a different model, ...).
      NonFiniteLossError: the loss became NaN/Inf; the last good checkpoint is kept.
    """
    manifest = load_manifest(cfg.data_dir)
    if manifest["num_classes"] != cfg.num_classes:
        raise ValueError(
            f"--num_classes={cfg.num_classes} but {cfg.data_dir}/manifest.json has num_classes="
            f"{manifest['num_classes']}. Use --num_classes={manifest['num_classes']}."
        )
    ignore_label = int(manifest["ignore_label"])
    class_names = manifest["class_names"]
    if isinstance(cfg.class_weights, str):
        class_weights = class_weights_from_manifest(manifest, cfg.class_weights)
    else:
        class_weights = list(cfg.class_weights)
    strategy = strategy or make_strategy(cfg.strategy, cfg.device)
    chief = is_chief(strategy)
    spec = get_spec(cfg.model)
    model_config = {
        "model": cfg.model, "num_classes": cfg.num_classes,
        "model_options": {k: v for k, v in cfg.model_options.items() if k != "aux_outputs"},
        "class_names": class_names, "palette": manifest["palette"], "ignore_label": ignore_label,
        "dataset": manifest.get("dataset", ""), "data_dir": os.path.abspath(cfg.data_dir),
        "crop_size": list(cfg.crop_size), "train_split": cfg.train_split,
    }
    if chief:
        _check_writable(cfg.model_dir)
        existing = os.path.join(cfg.model_dir, "model_config.json")
        if os.path.isfile(existing):
            old = read_model_config(cfg.model_dir)
            for key in ("model", "num_classes", "model_options"):
                if old.get(key) != model_config[key]:
                    raise ValueError(
                        f"--model_dir {cfg.model_dir} holds a run with {key}={old.get(key)!r}, not "
                        f"{model_config[key]!r}. Use a new --model_dir to train a different model."
                    )
        write_model_config(cfg.model_dir, model_config)
        if flags_text is not None:
            tmp = os.path.join(cfg.model_dir, f"flags.txt.tmp-{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(flags_text)
            os.replace(tmp, os.path.join(cfg.model_dir, "flags.txt"))

    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the {replicas} replicas.")
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_full_model(model_config)
        optimizer = make_optimizer(cfg)
        optimizer.build(model.trainable_variables)
    aux_weights = list(spec.aux_weights.values())
    outputs_n = len(model.outputs)
    if outputs_n != 1 + len(aux_weights):
        raise ValueError(f"model {cfg.model} has {outputs_n} outputs but the registry declares {len(aux_weights)} aux weights")

    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    ckpt_dir = os.path.join(cfg.model_dir, LATEST_DIR)
    if not chief:  # MultiWorkerMirroredStrategy: every task saves, only the chief's copy is kept
        ckpt_dir = os.path.join(cfg.model_dir, ".workers", f"task-{strategy.cluster_resolver.task_id}")
    manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=cfg.keep_checkpoints)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"Resumed from {manager.latest_checkpoint} at step {int(optimizer.iterations.numpy())}.")

    # The input order is a pure function of the seed, so a resumed run skips the batches
    # already consumed and continues with exactly the data an uninterrupted run would see.
    data_cfg = DataConfig(
        data_dir=cfg.data_dir, split=cfg.train_split, batch_size=cfg.batch_size, training=True,
        augment=AugmentConfig(crop_size=tuple(cfg.crop_size), min_scale=cfg.min_scale,
                              max_scale=cfg.max_scale, flip=cfg.flip, photometric=cfg.photometric,
                              ignore_label=ignore_label),
        seed=cfg.seed, skip_batches=int(optimizer.iterations.numpy()),
    )
    dist_ds = strategy.distribute_datasets_from_function(lambda ctx: make_dataset(data_cfg, ctx))
    iterator = iter(dist_ds)
    best_manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), os.path.join(cfg.model_dir, BEST_DIR), max_to_keep=1) if chief else None

    num_classes = cfg.num_classes

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
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(it):
        images, labels, weights = next(it)
        per_replica = strategy.run(replica_step, args=(images, labels, weights))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    train_writer = tf.summary.create_file_writer(os.path.join(cfg.model_dir, "train")) if chief else tf.summary.create_noop_writer()
    eval_writer = tf.summary.create_file_writer(os.path.join(cfg.model_dir, "eval")) if chief else tf.summary.create_noop_writer()

    def run_eval(step: int) -> Optional[Dict[str, Any]]:
        if not cfg.eval_split or not chief:
            return None
        eval_ds = make_dataset(DataConfig(data_dir=cfg.data_dir, split=cfg.eval_split,
                                          batch_size=cfg.eval_batch_size, training=False))
        scores = evaluate(model, eval_ds, num_classes, ignore_label)
        record = scores_to_json(scores, class_names, step)
        os.makedirs(os.path.join(cfg.model_dir, "eval"), exist_ok=True)
        atomic_write_json(os.path.join(cfg.model_dir, "eval", f"metrics-{step:08d}.json"), record)
        with eval_writer.as_default(step=step):
            for k in ("mean_iu", "acc", "acc_cls", "fwavacc"):
                write_scalar(k, scores[k], step)
        log(f"eval @ step {step}: mean_iu {scores['mean_iu']:.4f}  acc {scores['acc']:.4f}  "
            f"acc_cls {scores['acc_cls']:.4f}  fwavacc {scores['fwavacc']:.4f}")
        best = os.path.join(cfg.model_dir, BEST_DIR, "best.json")
        prev = json.load(open(best, encoding="utf-8"))["mean_iu"] if os.path.isfile(best) else None
        if prev is None or (scores["mean_iu"] == scores["mean_iu"] and scores["mean_iu"] > prev):
            best_manager.save(checkpoint_number=step)
            atomic_write_json(best, {"step": step, "mean_iu": record["mean_iu"], "split": cfg.eval_split})
        return scores

    step = int(optimizer.iterations.numpy())
    if step >= cfg.train_steps:
        log(f"{ckpt_dir} is already at step {step} >= --train_steps={cfg.train_steps}; nothing to train.")
        return TrainResult(step, float("nan"), 0.0, run_eval(step))
    log(f"Training {cfg.model} on {replicas} replica(s), global batch {cfg.batch_size}, "
        f"crop {cfg.crop_size[0]}x{cfg.crop_size[1]}, steps {step}->{cfg.train_steps}.")
    last_saved = manager.latest_checkpoint
    t0 = time.time()
    window_start, window_steps = t0, 0
    loss_value = float("nan")
    ips = 0.0
    eval_scores = None
    first_step = step
    stop_at = min(cfg.train_steps, step + cfg.steps_per_run) if cfg.steps_per_run else cfg.train_steps
    try:
        while step < stop_at:
            loss = train_step(iterator)
            step += 1
            window_steps += 1
            loss_value = float(loss)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at step {step}. Last good checkpoint: "
                    f"{last_saved or 'none (no checkpoint was written yet)'}; it is kept. Lower "
                    "--learning_rate, check --class_weights and the data (python -m data_prep.verify)."
                )
            if step % cfg.log_every == 0 or step == cfg.train_steps:
                now = time.time()
                ips = window_steps * cfg.batch_size / max(now - window_start, 1e-9)
                eta = (cfg.train_steps - step) * cfg.batch_size / max(ips, 1e-9)
                lr = float(optimizer.learning_rate.numpy()) if hasattr(optimizer.learning_rate, "numpy") else float(optimizer.learning_rate)
                log(f"step {step}/{cfg.train_steps}  loss {loss_value:.4f}  lr {lr:.3g}  "
                    f"{ips:.1f} img/s  ETA {_fmt_time(eta)}")
                with train_writer.as_default(step=step):
                    write_scalar("loss", loss_value, step)
                    write_scalar("learning_rate", lr, step)
                    write_scalar("images_per_second", ips, step)
                window_start, window_steps = now, 0
            if step % cfg.checkpoint_every == 0 or step == stop_at:
                last_saved = manager.save(checkpoint_number=step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.train_steps:
                eval_scores = run_eval(step)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        first = str(e).strip().splitlines()[0][:500]
        raise ValueError(
            f"Reading {cfg.data_dir} split {cfg.train_split!r} failed at step {step}: {first}\n"
            f"A record is corrupt or inconsistent. Find it with `python -m data_prep.verify {cfg.data_dir}`."
        ) from e
    if step < cfg.train_steps:
        log(f"Stopped at step {step} after --steps_per_run={cfg.steps_per_run}; rerun the same command to continue.")
    else:
        eval_scores = run_eval(step)
    total_time = time.time() - t0
    overall_ips = (step - first_step) * cfg.batch_size / max(total_time, 1e-9)
    log(f"Finished at step {step} in {_fmt_time(total_time)} ({overall_ips:.1f} img/s overall).")
    train_writer.flush()
    eval_writer.flush()
    return TrainResult(step, loss_value, overall_ips, eval_scores)
