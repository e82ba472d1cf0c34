"""The distributed training loop: a controller that runs the step function in loops of
``steps_per_loop`` steps and, at step boundaries, its hooks (progress log and summaries,
checkpoint, evaluation), in the manner of TF Model Garden's orbit.

A custom loop rather than ``model.fit``: Keras 3's ``fit`` does not run under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), and the loss is normalised by the
*global* sum of the pixel weights, so N replicas compute exactly the single-device update.

Fault tolerance (see docs/distributed.md): checkpoints hold the model, the optimizer (its
step drives the learning-rate schedule) and the dropout RNG state, and the data position
is restored by skipping the batches already consumed, so a killed run loses only the steps
since its last checkpoint. Under ``MultiWorkerMirroredStrategy`` every wait on the other
workers is bounded by ``worker_timeout``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import keras
import tensorflow as tf

from keras_seg.checkpoints import build_full_model, error_line
from keras_seg.data.augment import AugmentConfig
from keras_seg.data.manifest import class_weights_from_manifest, load_manifest
from keras_seg.fileio import atomic_write_json
from keras_seg.data.pipeline import DataConfig, make_dataset
from keras_seg.data.preprocess import mean_pixel
from keras_seg.distribute import CLUSTER_ERRORS, Watchdog, WorkerLostError, is_chief, make_strategy, num_workers, worker_index
from keras_seg.inference import InferenceConfig
from keras_seg.layout import ModelDir
from keras_seg.options import TrainConfig
from keras_seg.registry import get_spec
from keras_seg.training.checkpointing import Progress, RunCheckpoints, check_same_step, init_model_from
from keras_seg.training.evaluation import evaluate, scores_to_json, write_eval_images
from keras_seg.training.model_dir import check_free_space, check_writable, make_model_config, prepare_model_dir, writing
from keras_seg.training.schedule import PolyWithWarmup, make_optimizer
from keras_seg.training.step import is_input_pipeline_error, make_train_loop, steps_until_boundary
from keras_seg.training.summaries import write_scalar


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    step: int
    loss: float
    images_per_second: float
    eval_scores: Optional[Dict[str, Any]]


@dataclasses.dataclass
class _Run:
    """What every part of one training invocation shares."""

    cfg: TrainConfig
    strategy: tf.distribute.Strategy
    chief: bool
    model_config: Dict[str, Any]
    class_names: List[str]
    ignore_label: int
    progress: Progress
    waiting: Callable[[str], None]  # restarts the multi-worker watchdog with what comes next
    log: Callable[[str], None]

    @property
    def workers(self) -> int:
        return num_workers(self.strategy)

    @property
    def index(self) -> int:
        return worker_index(self.strategy)


def train(cfg: TrainConfig, *, flags_text: Optional[str] = None, log: Callable[[str], None] = print,
          strategy: Optional[tf.distribute.Strategy] = None,
          on_progress: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Trains (or resumes) ``cfg.model`` on ``cfg.data_dir``; writes everything to ``cfg.model_dir``.

    Rerunning after a crash or kill resumes from the newest checkpoint that can be restored
    (model, optimizer step and slots, hence the learning rate, and the dropout RNG state) and
    skips the batches already consumed. With ``cfg.deterministic`` it then ends with the
    weights of an uninterrupted run. Under ``MultiWorkerMirroredStrategy`` every worker runs
    this function; the chief alone writes checkpoints, summaries and metrics.

    Args:
      cfg: validated :class:`TrainConfig`.
      flags_text: the resolved flags, written to ``model_dir/flags.txt``.
      log: progress printer.
      strategy: a ``tf.distribute.Strategy``; default from ``cfg.strategy`` and ``cfg.cluster``.
      on_progress: called with the step after each progress line (every ``cfg.log_every``
        steps), e.g. to sample time and CPU usage per window.

    Returns:
      A :class:`TrainResult` with the final step, loss, throughput and last eval scores.

    Raises:
      ValueError: inconsistent flags and data (num_classes vs manifest, a model_dir that
        holds a different model, workers that resumed from different steps, ...).
      NonFiniteLossError: the loss became NaN/Inf; the last good checkpoint is kept.
      ModelDirWriteError: ``model_dir`` is unwritable or too full (found before training),
        or a write failed (the message names the path and step).
      CheckpointError: checkpoints exist but none can be restored.
      WorkerLostError: another worker died, restarted or stopped answering.
    """
    run, class_weights, watchdog = _start(cfg, flags_text, log, strategy)
    try:
        return _train(run, class_weights, on_progress)
    except CLUSTER_ERRORS as e:
        if run.workers == 1:
            raise
        raise WorkerLostError(
            f"Lost contact with another worker ({error_line(e)}). {run.progress}Restart every worker with "
            "the same command; training resumes from the last checkpoint."
        ) from e
    finally:
        if watchdog:
            watchdog.close()


def _start(cfg: TrainConfig, flags_text: Optional[str], log: Callable[[str], None],
           strategy: Optional[tf.distribute.Strategy]):
    """Checks the data, makes the strategy and (chief) the model_dir: ``(run, class_weights, watchdog)``."""
    manifest = load_manifest(cfg.data_dir)
    if manifest["num_classes"] != cfg.num_classes:
        raise ValueError(
            f"--num_classes={cfg.num_classes} but {cfg.data_dir}/manifest.json has num_classes="
            f"{manifest['num_classes']}. Use --num_classes={manifest['num_classes']}."
        )
    class_weights = (class_weights_from_manifest(manifest, cfg.class_weights) if isinstance(cfg.class_weights, str)
                     else list(cfg.class_weights))
    model_config = make_model_config(cfg, manifest)
    check_writable(cfg.model_dir)  # every worker: the others write temporary checkpoints there
    strategy = strategy or make_strategy(cfg.strategy, cfg.device, cluster=cfg.cluster,
                                         port_base=cfg.cluster_port, worker_timeout=cfg.worker_timeout)
    chief = is_chief(strategy)
    if chief:
        prepare_model_dir(cfg, model_config, flags_text)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the {replicas} replicas.")
    progress = Progress()
    watchdog = Watchdog(cfg.worker_timeout, lambda: str(progress)) if num_workers(strategy) > 1 else None
    run = _Run(cfg, strategy, chief, model_config, manifest["class_names"], int(manifest["ignore_label"]),
               progress, watchdog.arm if watchdog else (lambda what: None), log)
    return run, class_weights, watchdog


def _build(run: _Run):
    """Model, optimizer and checkpoints, restored to the newest checkpoint: ``(model, optimizer, checkpoints)``."""
    cfg = run.cfg
    run.waiting("building the model and restoring the checkpoint")
    if cfg.jit_compile and run.strategy.num_replicas_in_sync > 1:
        raise ValueError(
            f"--jit_compile runs the training step as one XLA program on one device, but the strategy has "
            f"{run.strategy.num_replicas_in_sync} replicas. Drop --jit_compile, or train on one device "
            "(--strategy=one_device)."
        )
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    with run.strategy.scope():
        model = build_full_model(run.model_config, mixed_precision=cfg.mixed_precision)
        optimizer = make_optimizer(cfg)
        optimizer.build(model.trainable_variables)
    check_free_space(cfg.model_dir, model.variables + optimizer.variables, cfg.keep_checkpoints + 2)
    checkpoints = RunCheckpoints(cfg, model, optimizer, run.chief, run.index, run.progress, run.log)
    restored = checkpoints.restore()
    run.progress.step = int(optimizer.iterations.numpy())
    run.progress.last_checkpoint = restored
    if restored:
        run.log(f"Resumed from {restored} at step {run.progress.step}.")
    elif cfg.init_from:
        init_model_from(cfg, model, run.model_config, run.log)
    if run.workers > 1:
        check_same_step(run.strategy, run.progress.step, checkpoints.latest_dir)
    return model, optimizer, checkpoints


def _train_iterator(run: _Run, step: int):
    """The distributed training batches from ``step`` on.

    The input order is a pure function of the seed and ``--data_shards``, so a resumed run skips
    the batches already consumed and continues with exactly the data an uninterrupted run sees.
    """
    cfg, preprocessing = run.cfg, run.model_config["preprocessing"]
    data_cfg = DataConfig(
        data_dir=cfg.data_dir, split=cfg.train_split, batch_size=cfg.batch_size, training=True,
        augment=AugmentConfig(crop_size=tuple(cfg.crop_size), min_scale=cfg.min_scale,
                              max_scale=cfg.max_scale, flip=cfg.flip, photometric=cfg.photometric,
                              jitter_strength=cfg.jitter_strength, hue_delta=cfg.hue_delta,
                              ignore_label=run.ignore_label, pad_value=mean_pixel(preprocessing)),
        seed=cfg.seed, skip_batches=step, num_shards=cfg.data_shards, preprocessing=preprocessing,
    )
    return iter(run.strategy.distribute_datasets_from_function(lambda ctx: make_dataset(data_cfg, ctx)))


def _summary_writer(run: _Run, path: str, step: int):
    with writing("TensorBoard summaries to", path, step, run.progress.last_checkpoint):
        return tf.summary.create_file_writer(path) if run.chief else tf.summary.create_noop_writer()


class _Evaluator:
    """The evaluation hook: scores the eval split, writes metrics and summaries, keeps the best checkpoint.

    Every worker evaluates its shard of the split; the confusion matrices are summed.
    """

    def __init__(self, run: _Run, model: keras.Model, checkpoints: RunCheckpoints):
        self.run, self.model, self.checkpoints = run, model, checkpoints
        self.paths = ModelDir(run.cfg.model_dir)
        self.eval_dir = self.paths.eval_dir
        self.writer = _summary_writer(run, self.eval_dir, run.progress.step)
        self.best_json = self.paths.best_json
        self.best_iu = (json.load(open(self.best_json, encoding="utf-8"))["mean_iu"]
                        if os.path.isfile(self.best_json) else None)
        self.samples: List[Any] = []  # the first eval_images examples, read once

    def __call__(self, step: int) -> Optional[Dict[str, Any]]:
        run, cfg = self.run, self.run.cfg
        if not cfg.eval_split:
            return None
        run.waiting(f"evaluating at step {step}")
        ctx = tf.distribute.InputContext(run.workers, run.index, run.workers) if run.workers > 1 else None
        eval_ds = make_dataset(DataConfig(data_dir=cfg.data_dir, split=cfg.eval_split,
                                          batch_size=cfg.eval_batch_size * run.workers, training=False,
                                          preprocessing=run.model_config["preprocessing"]), ctx)
        scores = evaluate(self.model, eval_ds, cfg.num_classes, run.ignore_label, strategy=run.strategy,
                          jit_compile=cfg.jit_compile, inference=InferenceConfig(scales=tuple(cfg.eval_scales)))
        record = scores_to_json(scores, run.class_names, step)
        if run.chief:
            self._write(step, scores, record)
        run.log(f"eval @ step {step}: mean_iu {scores['mean_iu']:.4f}  acc {scores['acc']:.4f}  "
                f"acc_cls {scores['acc_cls']:.4f}  fwavacc {scores['fwavacc']:.4f}")
        self._keep_best(step, record)
        return scores

    def _write(self, step: int, scores: Dict[str, Any], record: Dict[str, Any]) -> None:
        """Chief: ``eval/metrics-<step>.json``, the scalars, per-class IoU and the eval pictures."""
        run, cfg = self.run, self.run.cfg
        path = self.paths.metrics_json(step)
        with writing("metrics", path, step, run.progress.last_checkpoint):
            os.makedirs(self.eval_dir, exist_ok=True)
            atomic_write_json(path, record)
            with self.writer.as_default(step=step):
                for k in ("mean_iu", "acc", "acc_cls", "fwavacc"):
                    write_scalar(k, scores[k], step)
                for name, iu in zip(run.class_names, scores["iu"]):
                    if iu == iu:  # NaN: class absent from truth and prediction
                        write_scalar(f"iou/{name}", float(iu), step)
                if cfg.eval_images:
                    write_eval_images(self.model, run.model_config, cfg.data_dir, cfg.eval_split, scores, step,
                                      cfg.eval_images, self.samples, run.log)
            self.writer.flush()

    def _keep_best(self, step: int, record: Dict[str, Any]) -> None:
        iu = record["mean_iu"]
        if self.best_iu is not None and not (iu == iu and iu > self.best_iu):
            return
        self.run.waiting(f"writing the best checkpoint of step {step}")
        self.checkpoints.save("best", step)
        self.best_iu = iu
        if self.run.chief:
            with writing("", self.best_json, step, self.run.progress.last_checkpoint):
                atomic_write_json(self.best_json, {"step": step, "mean_iu": iu, "split": self.run.cfg.eval_split})


class _ProgressLog:
    """The logging hook: a progress line and the train scalars, every ``log_every`` steps."""

    def __init__(self, run: _Run, on_progress: Optional[Callable[[int], None]]):
        cfg = run.cfg
        self.run, self.on_progress = run, on_progress
        self.schedule = PolyWithWarmup(cfg.learning_rate, cfg.train_steps, cfg.warmup_steps, cfg.poly_power)
        self.train_dir = ModelDir(cfg.model_dir).train_dir
        self.writer = _summary_writer(run, self.train_dir, run.progress.step)
        self.window_start, self.window_steps = time.time(), 0

    def __call__(self, step: int, loss: float) -> None:
        cfg, run = self.run.cfg, self.run
        now = time.time()
        ips = self.window_steps * cfg.batch_size / max(now - self.window_start, 1e-9)
        eta = (cfg.train_steps - step) * cfg.batch_size / max(ips, 1e-9)
        # The rate the last step used (the schedule at its iteration, step - 1), not the
        # optimizer's current one, which is already the next step's.
        lr = float(self.schedule(step - 1))
        run.log(f"step {step}/{cfg.train_steps}  loss {loss:.4f}  lr {lr:.3g}  {ips:.1f} img/s  ETA {_fmt_time(eta)}")
        if run.chief:
            with writing("TensorBoard summaries to", self.train_dir, step, run.progress.last_checkpoint):
                with self.writer.as_default(step=step):
                    write_scalar("loss", loss, step)
                    write_scalar("learning_rate", lr, step)
                    write_scalar("images_per_second", ips, step)
                self.writer.flush()
        self.window_start, self.window_steps = now, 0
        if self.on_progress:
            self.on_progress(step)


def _checked_loss(loss: float, step: int, progress: Progress) -> float:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}. Last good checkpoint: "
            f"{progress.last_checkpoint or 'none (no checkpoint was written yet)'}; it is kept. Lower "
            "--learning_rate, check --class_weights and the data (python -m data_prep.verify)."
        )
    return loss


def _train(run: _Run, class_weights, on_progress: Optional[Callable[[int], None]]) -> TrainResult:
    """The body of :func:`train` once the strategy exists."""
    cfg = run.cfg
    model, optimizer, checkpoints = _build(run)
    step = run.progress.step
    iterator = _train_iterator(run, step)
    aux_weights = get_spec(cfg.model).aux_weights_for(model.output_names)
    l2 = cfg.weight_decay if cfg.weight_decay_mode == "coupled" else 0.0
    train_loop = make_train_loop(model, optimizer, run.strategy, cfg.num_classes, run.ignore_label,
                                 class_weights, aux_weights, jit_compile=cfg.jit_compile, l2=l2)
    logger = _ProgressLog(run, on_progress)
    evaluator = _Evaluator(run, model, checkpoints)
    if step >= cfg.train_steps:
        run.log(f"{checkpoints.latest_dir} is already at step {step} >= --train_steps={cfg.train_steps}; nothing to train.")
        return TrainResult(step, float("nan"), 0.0, evaluator(step))
    run.log(f"Training {cfg.model} on {run.strategy.num_replicas_in_sync} replica(s)"
            f"{f' of {run.workers} workers' if run.workers > 1 else ''}, global batch {cfg.batch_size}, "
            f"crop {cfg.crop_size[0]}x{cfg.crop_size[1]}, steps {step}->{cfg.train_steps}.")
    t0, first_step = time.time(), step
    logger.window_start = t0
    stop_at = min(cfg.train_steps, step + cfg.steps_per_run) if cfg.steps_per_run else cfg.train_steps
    try:
        step, loss, eval_scores = _controller(run, train_loop, iterator, step, stop_at, logger, checkpoints, evaluator)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        if not is_input_pipeline_error(e):
            raise
        raise ValueError(
            f"Reading {cfg.data_dir} split {cfg.train_split!r} failed at step {run.progress.step}: {error_line(e)[:500]}\n"
            f"A record is corrupt or inconsistent. Find it with `python -m data_prep.verify {cfg.data_dir}`."
        ) from e
    if step < cfg.train_steps:
        run.log(f"Stopped at step {step} after --steps_per_run={cfg.steps_per_run}; rerun the same command to continue.")
    else:
        eval_scores = evaluator(step)
    total_time = time.time() - t0
    overall_ips = (step - first_step) * cfg.batch_size / max(total_time, 1e-9)
    run.log(f"Finished at step {step} in {_fmt_time(total_time)} ({overall_ips:.1f} img/s overall).")
    return TrainResult(step, loss, overall_ips, eval_scores)


def _controller(run: _Run, train_loop, iterator, step: int, stop_at: int, logger: _ProgressLog,
                checkpoints: RunCheckpoints, evaluator: _Evaluator):
    """Runs ``train_loop`` up to ``stop_at`` in loops that end on every hook's boundary, then the
    hooks due there: log (every ``log_every`` and at the last step), checkpoint (every
    ``checkpoint_every`` and where this invocation stops), evaluation (every ``eval_every``
    before the last step, which :func:`_train` evaluates). Returns ``(step, loss, last scores)``."""
    cfg = run.cfg
    loss, eval_scores = float("nan"), None
    while step < stop_at:
        n = steps_until_boundary(step, stop_at, cfg.steps_per_loop, cfg.log_every, cfg.checkpoint_every,
                                 cfg.eval_every)
        run.waiting(f"running steps {step + 1}-{step + n}")
        loss_t, done = train_loop(iterator, tf.constant(n, tf.int32))
        step += int(done)
        run.progress.step = step
        logger.window_steps += int(done)
        loss = _checked_loss(float(loss_t), step, run.progress)
        if step % cfg.log_every == 0 or step == cfg.train_steps:
            logger(step, loss)
        if step % cfg.checkpoint_every == 0 or step == stop_at:
            run.waiting(f"writing the checkpoint of step {step}")
            run.progress.last_checkpoint = checkpoints.save("latest", step)
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.train_steps:
            eval_scores = evaluator(step)
    return step, loss, eval_scores
