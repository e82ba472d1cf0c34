"""The distributed training loop, evaluation and learning-rate schedule.

A custom loop rather than ``model.fit``: Keras 3's ``fit`` does not run under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), and the loss is normalised by the
*global* count of valid pixels, so N replicas compute exactly the single-device update.

Fault tolerance (see docs/distributed.md): checkpoints hold the model, the optimizer (its
step drives the learning-rate schedule) and the dropout RNG state, and the data position
is restored by skipping the batches already consumed, so a killed run loses only the steps
since its last checkpoint. Under ``MultiWorkerMirroredStrategy`` every wait on the other
workers is bounded by ``worker_timeout``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from keras_seg.checkpoints import (
    BEST_DIR,
    LATEST_DIR,
    build_full_model,
    error_line,
    read_model_config,
    remove_partial_writes,
    restore_newest,
    set_aside_checkpoints,
    write_model_config,
)
from keras_seg.data.augment import AugmentConfig
from keras_seg.data.manifest import atomic_write_json, class_weights_from_manifest, load_manifest
from keras_seg.data.pipeline import DataConfig, make_dataset
from keras_seg.data.preprocess import DEFAULT as DEFAULT_PREPROCESSING
from keras_seg.data.preprocess import mean_pixel, preprocessing_for
from keras_seg.distribute import (
    CLUSTER_ERRORS,
    Watchdog,
    WorkerLostError,
    is_chief,
    make_strategy,
    num_workers,
    sum_over_workers,
    worker_index,
)
from keras_seg.flags import TrainConfig
from keras_seg.inference import InferenceConfig, make_probabilities, predict_probabilities
from keras_seg.losses import pixel_ce_sums
from keras_seg.metrics import StreamingConfusionMatrixMetric, scores_from_confusion_matrix
from keras_seg.precision import inner_optimizer, loss_scale_state, wrap_optimizer
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


def evaluate(model: keras.Model, dataset: tf.data.Dataset, num_classes: int, ignore_label: int,
             log: Optional[Callable[[str], None]] = None,
             strategy: Optional[tf.distribute.Strategy] = None, jit_compile: bool = False,
             inference: Optional[InferenceConfig] = None) -> Dict[str, Any]:
    """Runs ``model`` over ``dataset`` and returns the FCN scores plus the confusion matrix.

    ``inference`` (:class:`keras_seg.inference.InferenceConfig`) chooses sliding windows,
    multi-scale and flip; ``None`` is one whole-image pass.

    The model runs on this process alone, outside ``strategy.run``, so no collective op is
    involved. With a multi-worker ``strategy`` each worker passes its own shard of the data,
    and the confusion matrices are summed over the workers at the end (one collective, so
    every worker must call this). ``jit_compile`` runs the forward pass under XLA, which
    compiles once per distinct batch shape: use it where the images share one size.
    """
    metric = StreamingConfusionMatrixMetric(num_classes, ignore_label)

    def forward(images):
        out = model(images, training=False)
        return out[0] if isinstance(out, (list, tuple)) else out

    if jit_compile:
        forward = tf.function(forward, jit_compile=True)

    # reduce_retracing: after two image sizes the graph takes any size, instead of one trace
    # per size (VOC's val split has hundreds of sizes).
    @tf.function(reduce_retracing=True)
    def step(images, labels):
        metric.update_state(labels, forward(images))

    if inference is not None and not inference.plain:
        probs = make_probabilities(model)

        def step(images, labels):  # noqa: F811  (Python loops over windows, scales and flips)
            metric.update_state(labels, predict_probabilities(model, images, inference, probs))

    n = 0
    start = time.time()
    for images, labels, _ in dataset:
        step(images, labels)
        n += int(images.shape[0])
    cm = metric.confusion_matrix()
    if strategy is not None and num_workers(strategy) > 1:
        total = sum_over_workers(strategy, np.append(np.asarray(cm, np.int64).ravel(), n))
        cm, n = total[:-1].reshape(np.shape(cm)), int(total[-1])
    scores = scores_from_confusion_matrix(cm)
    if log:
        log(f"evaluated {n} images in {time.time() - start:.1f}s")
    scores["num_images"] = n
    scores["confusion_matrix"] = cm
    scores["traces"] = int(step.experimental_get_tracing_count()) if hasattr(step, "experimental_get_tracing_count") else None
    return scores


def write_eval_images(model: keras.Model, model_config: Dict[str, Any], data_dir: str, split: str,
                      scores: Dict[str, Any], step: int, count: int, samples: List[Any],
                      log: Callable[[str], None]) -> None:
    """TensorBoard images of one evaluation, into the default summary writer: the image sheet
    of the split's first ``count`` images (image | truth | prediction | errors) and the
    confusion matrix (:mod:`keras_seg.plot`). Without matplotlib, says so once and writes none."""
    from keras_seg.plot import confusion_png, pyplot, sheet_png  # pylint: disable=import-outside-toplevel
    from keras_seg.parity import read_examples  # pylint: disable=import-outside-toplevel

    try:
        pyplot()
    except ValueError as e:
        if not samples:
            log(f"TensorBoard eval images skipped: {e}")
            samples.append(None)
        return
    if not samples:
        samples.extend(read_examples(data_dir, split, count))
    if samples[0] is None:
        return
    from keras_seg.inference import make_probabilities  # pylint: disable=import-outside-toplevel
    from keras_seg.predict import predict_keras  # pylint: disable=import-outside-toplevel

    probs = make_probabilities(model)  # the training model: its first output is the logits
    rows = [(image, label, predict_keras(model, image, model_config["preprocessing"], probs=probs))
            for image, label in samples]
    what = f"{model_config['model']} step {step}"
    for name, png in (("eval/sheet", sheet_png(rows, model_config["palette"], int(model_config["ignore_label"]),
                                              title=what)),
                      ("eval/confusion_matrix", confusion_png(scores["confusion_matrix"], model_config["class_names"],
                                                              title=f"{what}: % of each true class"))):
        write_png(name, png, step)


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


class ModelDirWriteError(OSError):
    """``model_dir`` cannot be written: read-only, missing permissions or a full disk."""


def _check_writable(model_dir: str) -> None:
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-probe-{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ModelDirWriteError(f"--model_dir {model_dir} is not writable ({e.strerror}). Choose another directory.") from e


def _check_free_space(model_dir: str, variables, copies: int) -> None:
    """Refuses to start when ``model_dir`` cannot hold ``copies`` checkpoints of ``variables``."""
    nbytes = int(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables))
    free = shutil.disk_usage(model_dir).free
    if free < nbytes * copies:
        raise ModelDirWriteError(
            f"--model_dir {model_dir} has {free / 2**20:.1f} MiB free but its checkpoints need about "
            f"{nbytes * copies / 2**20:.1f} MiB ({copies} copies of {nbytes / 2**20:.1f} MiB of model and "
            "optimizer state). Free some space, lower --keep_checkpoints or choose another directory."
        )


@contextlib.contextmanager
def _writing(what: str, path: str, step: int, last_checkpoint: Optional[str]) -> Iterator[None]:
    """Turns a failed write into a :class:`ModelDirWriteError` naming ``path`` and ``step``."""
    try:
        yield
    except (OSError, tf.errors.OpError) as e:
        if isinstance(e, ModelDirWriteError):
            raise
        raise ModelDirWriteError(
            f"Writing {what + ' ' if what else ''}{path} failed at step {step}: {error_line(e)}. Is the disk full or the "
            f"directory read-only? Last good checkpoint: {last_checkpoint or 'none'}. Fix it and rerun the "
            "same command to resume from it."
        ) from e


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


def write_png(name: str, png: bytes, step: int) -> None:
    """Writes a PNG as a TensorBoard image with core TF ops (the image plugin's
    ``[width, height, encoded]`` string tensor; no dependency on the tensorboard package)."""
    from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="images")).SerializeToString()
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"write_png({name!r}) needs PNG bytes. Received: {png[:8]!r}...")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the IHDR chunk
    tensor = tf.constant([str(width).encode(), str(height).encode(), png], tf.string)
    tf.summary.write(name, tensor, step=step, metadata=metadata)


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
class _Progress:
    """Where a run is, for error messages."""

    step: int = 0
    last_checkpoint: Optional[str] = None

    def __str__(self) -> str:
        return f"At step {self.step}; last checkpoint: {self.last_checkpoint or 'none'}. "


def _prepare_model_dir(cfg: TrainConfig, model_config: Dict[str, Any], flags_text: Optional[str]) -> None:
    """Chief: refuses a model_dir of another model; writes model_config.json and flags.txt."""
    existing = os.path.join(cfg.model_dir, "model_config.json")
    if os.path.isfile(existing):
        old = read_model_config(cfg.model_dir)
        old.setdefault("preprocessing", DEFAULT_PREPROCESSING)  # written before the key existed
        for key in ("model", "num_classes", "model_options", "preprocessing"):
            if old.get(key) != model_config[key]:
                raise ValueError(
                    f"--model_dir {cfg.model_dir} holds a run with {key}={old.get(key)!r}, not "
                    f"{model_config[key]!r}. Use a new --model_dir to train a different model."
                )
    with _writing("", existing, 0, None):
        write_model_config(cfg.model_dir, model_config)
    if flags_text is not None:
        path = os.path.join(cfg.model_dir, "flags.txt")
        with _writing("", path, 0, None):
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(flags_text)
            os.replace(tmp, path)


class _Checkpoints:
    """Restores and saves the run's latest and best checkpoints on every worker.

    Every worker takes part in every save, as ``MultiWorkerMirroredStrategy`` requires; the
    chief writes ``model_dir/ckpt`` and ``model_dir/best`` through
    ``tf.train.CheckpointManager`` (data files first, then the ``checkpoint`` state file,
    each through a temporary file and a rename), the other workers write to
    ``model_dir/.tmp-worker-<i>``, which is removed at once. Every worker restores from the
    chief's ``ckpt`` directory, so ``model_dir`` must be shared by all of them.
    """

    def __init__(self, cfg: TrainConfig, model: keras.Model, optimizer, chief: bool, index: int,
                 progress: _Progress, log: Callable[[str], None]):
        # The inner optimizer of a LossScaleOptimizer, and its loss scale apart, so that the
        # layout is the same under every --mixed_precision (keras_seg/precision.py).
        self._model, self._optimizer = model, inner_optimizer(optimizer)
        self._loss_scale = loss_scale_state(optimizer)
        self._rng = seed_generator_states(model)
        self.chief, self.progress, self.log = chief, progress, log
        self.latest_dir = os.path.join(cfg.model_dir, LATEST_DIR)
        self.best_dir = os.path.join(cfg.model_dir, BEST_DIR)
        self.tmp_dir = os.path.join(cfg.model_dir, f".tmp-worker-{index}")
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
                with _writing("", self.latest_dir, self.progress.step, path):
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
            with _writing("checkpoint", target, step, self.progress.last_checkpoint):
                return self._managers[kind].save(checkpoint_number=step)
        with _writing("temporary checkpoint", self.tmp_dir, step, self.progress.last_checkpoint):
            (self._ckpt if kind == "latest" else self._best).write(os.path.join(self.tmp_dir, f"ckpt-{step}"))
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        return target


def _check_same_step(strategy: tf.distribute.Strategy, step: int, ckpt_dir: str) -> None:
    """Multi-worker: every worker must have restored the same checkpoint."""
    workers = num_workers(strategy)
    steps = sum_over_workers(strategy, np.eye(workers, dtype=np.int64)[worker_index(strategy)] * step)
    if len(set(steps.tolist())) > 1:
        raise ValueError(
            f"The workers resumed from different steps {steps.tolist()}: every worker must read the "
            f"chief's checkpoints in {ckpt_dir}, so --model_dir must be one directory on a filesystem "
            "that all workers share."
        )


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
    model_config = {
        "model": cfg.model, "num_classes": cfg.num_classes,
        "model_options": {k: v for k, v in cfg.model_options.items() if k != "aux_outputs"},
        "class_names": class_names, "palette": manifest["palette"], "ignore_label": ignore_label,
        "dataset": manifest.get("dataset", ""), "data_dir": os.path.abspath(cfg.data_dir),
        "crop_size": list(cfg.crop_size), "train_split": cfg.train_split,
        "mixed_precision": cfg.mixed_precision,
        "preprocessing": preprocessing_for(cfg.model_options, cfg.preprocessing),
    }
    _check_writable(cfg.model_dir)  # every worker: the others write temporary checkpoints there
    strategy = strategy or make_strategy(cfg.strategy, cfg.device, cluster=cfg.cluster,
                                         port_base=cfg.cluster_port, worker_timeout=cfg.worker_timeout)
    chief = is_chief(strategy)
    if chief:
        _prepare_model_dir(cfg, model_config, flags_text)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the {replicas} replicas.")
    progress = _Progress()
    workers = num_workers(strategy)
    watchdog = Watchdog(cfg.worker_timeout, lambda: str(progress)) if workers > 1 else None
    try:
        return _train(cfg, strategy, chief, model_config, class_weights, ignore_label, class_names,
                      progress, watchdog.arm if watchdog else (lambda what: None), log, on_progress)
    except CLUSTER_ERRORS as e:
        if workers == 1:
            raise
        raise WorkerLostError(
            f"Lost contact with another worker ({error_line(e)}). {progress}Restart every worker with "
            "the same command; training resumes from the last checkpoint."
        ) from e
    finally:
        if watchdog:
            watchdog.close()


def _from_input_pipeline(error: tf.errors.OpError) -> bool:
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


def _train(cfg: TrainConfig, strategy: tf.distribute.Strategy, chief: bool, model_config: Dict[str, Any],
           class_weights, ignore_label: int, class_names: List[str], progress: _Progress,
           waiting: Callable[[str], None], log: Callable[[str], None],
           on_progress: Optional[Callable[[int], None]] = None) -> TrainResult:
    """The body of :func:`train` once the strategy exists; ``waiting(what)`` restarts the watchdog."""
    waiting("building the model and restoring the checkpoint")
    workers, index = num_workers(strategy), worker_index(strategy)
    if cfg.jit_compile and strategy.num_replicas_in_sync > 1:
        raise ValueError(
            f"--jit_compile runs the training step as one XLA program on one device, but the strategy has "
            f"{strategy.num_replicas_in_sync} replicas. Drop --jit_compile, or train on one device "
            "(--strategy=one_device)."
        )
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_full_model(model_config, mixed_precision=cfg.mixed_precision)
        optimizer = make_optimizer(cfg)
        optimizer.build(model.trainable_variables)
    aux_weights = get_spec(cfg.model).aux_weights_for(model.output_names)
    _check_free_space(cfg.model_dir, model.variables + optimizer.variables, cfg.keep_checkpoints + 2)

    checkpoints = _Checkpoints(cfg, model, optimizer, chief, index, progress, log)
    restored = checkpoints.restore()
    step = progress.step = int(optimizer.iterations.numpy())
    progress.last_checkpoint = restored
    if restored:
        log(f"Resumed from {restored} at step {step}.")
    if workers > 1:
        _check_same_step(strategy, step, checkpoints.latest_dir)

    # The input order is a pure function of the seed and --data_shards, so a resumed run skips
    # the batches already consumed and continues with exactly the data an uninterrupted run sees.
    data_cfg = DataConfig(
        data_dir=cfg.data_dir, split=cfg.train_split, batch_size=cfg.batch_size, training=True,
        augment=AugmentConfig(crop_size=tuple(cfg.crop_size), min_scale=cfg.min_scale,
                              max_scale=cfg.max_scale, flip=cfg.flip, photometric=cfg.photometric,
                              ignore_label=ignore_label, pad_value=mean_pixel(model_config["preprocessing"])),
        seed=cfg.seed, skip_batches=step, num_shards=cfg.data_shards, preprocessing=model_config["preprocessing"],
    )
    dist_ds = strategy.distribute_datasets_from_function(lambda ctx: make_dataset(data_cfg, ctx))
    iterator = iter(dist_ds)
    num_classes = cfg.num_classes

    schedule = PolyWithWarmup(cfg.learning_rate, cfg.train_steps, cfg.warmup_steps, cfg.poly_power)
    l2 = cfg.weight_decay if cfg.weight_decay_mode == "coupled" else 0.0
    train_loop = make_train_loop(model, optimizer, strategy, num_classes, ignore_label,
                                 class_weights, aux_weights, jit_compile=cfg.jit_compile, l2=l2)

    train_dir, eval_dir = os.path.join(cfg.model_dir, "train"), os.path.join(cfg.model_dir, "eval")
    with _writing("TensorBoard summaries to", train_dir, step, restored):
        train_writer = tf.summary.create_file_writer(train_dir) if chief else tf.summary.create_noop_writer()
        eval_writer = tf.summary.create_file_writer(eval_dir) if chief else tf.summary.create_noop_writer()
    best_json = os.path.join(cfg.model_dir, BEST_DIR, "best.json")
    best_iu = [json.load(open(best_json, encoding="utf-8"))["mean_iu"] if os.path.isfile(best_json) else None]

    eval_samples: List[Any] = []  # the first eval_images examples, read once

    def run_eval(step: int) -> Optional[Dict[str, Any]]:
        # Every worker evaluates its shard of the split; the confusion matrices are summed.
        if not cfg.eval_split:
            return None
        waiting(f"evaluating at step {step}")
        ctx = tf.distribute.InputContext(workers, index, workers) if workers > 1 else None
        eval_ds = make_dataset(DataConfig(data_dir=cfg.data_dir, split=cfg.eval_split,
                                          batch_size=cfg.eval_batch_size * workers, training=False,
                                          preprocessing=model_config["preprocessing"]), ctx)
        scores = evaluate(model, eval_ds, num_classes, ignore_label, strategy=strategy, jit_compile=cfg.jit_compile)
        record = scores_to_json(scores, class_names, step)
        if chief:
            path = os.path.join(eval_dir, f"metrics-{step:08d}.json")
            with _writing("metrics", path, step, progress.last_checkpoint):
                os.makedirs(eval_dir, exist_ok=True)
                atomic_write_json(path, record)
                with eval_writer.as_default(step=step):
                    for k in ("mean_iu", "acc", "acc_cls", "fwavacc"):
                        write_scalar(k, scores[k], step)
                    for name, iu in zip(class_names, scores["iu"]):
                        if iu == iu:  # NaN: class absent from truth and prediction
                            write_scalar(f"iou/{name}", float(iu), step)
                    if cfg.eval_images:
                        write_eval_images(model, model_config, cfg.data_dir, cfg.eval_split, scores, step,
                                          cfg.eval_images, eval_samples, log)
                eval_writer.flush()
        log(f"eval @ step {step}: mean_iu {scores['mean_iu']:.4f}  acc {scores['acc']:.4f}  "
            f"acc_cls {scores['acc_cls']:.4f}  fwavacc {scores['fwavacc']:.4f}")
        iu = scores["mean_iu"]
        if best_iu[0] is None or (iu == iu and iu > best_iu[0]):
            waiting(f"writing the best checkpoint of step {step}")
            checkpoints.save("best", step)
            best_iu[0] = record["mean_iu"]
            if chief:
                with _writing("", best_json, step, progress.last_checkpoint):
                    atomic_write_json(best_json, {"step": step, "mean_iu": record["mean_iu"], "split": cfg.eval_split})
        return scores

    if step >= cfg.train_steps:
        log(f"{checkpoints.latest_dir} is already at step {step} >= --train_steps={cfg.train_steps}; nothing to train.")
        return TrainResult(step, float("nan"), 0.0, run_eval(step))
    log(f"Training {cfg.model} on {strategy.num_replicas_in_sync} replica(s)"
        f"{f' of {workers} workers' if workers > 1 else ''}, global batch {cfg.batch_size}, "
        f"crop {cfg.crop_size[0]}x{cfg.crop_size[1]}, steps {step}->{cfg.train_steps}.")
    t0 = time.time()
    window_start, window_steps = t0, 0
    loss_value = float("nan")
    eval_scores = None
    first_step = step
    stop_at = min(cfg.train_steps, step + cfg.steps_per_run) if cfg.steps_per_run else cfg.train_steps
    try:
        while step < stop_at:
            n = steps_until_boundary(step, stop_at, cfg.steps_per_loop, cfg.log_every, cfg.checkpoint_every,
                                     cfg.eval_every)
            waiting(f"running steps {step + 1}-{step + n}")
            loss, done = train_loop(iterator, tf.constant(n, tf.int32))
            done = int(done)
            step += done
            progress.step = step
            window_steps += done
            loss_value = float(loss)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at step {step}. Last good checkpoint: "
                    f"{progress.last_checkpoint or 'none (no checkpoint was written yet)'}; it is kept. Lower "
                    "--learning_rate, check --class_weights and the data (python -m data_prep.verify)."
                )
            if step % cfg.log_every == 0 or step == cfg.train_steps:
                now = time.time()
                ips = window_steps * cfg.batch_size / max(now - window_start, 1e-9)
                eta = (cfg.train_steps - step) * cfg.batch_size / max(ips, 1e-9)
                # The rate the last step used (the schedule at its iteration, step - 1), not the
                # optimizer's current one, which is already the next step's.
                lr = float(schedule(step - 1))
                log(f"step {step}/{cfg.train_steps}  loss {loss_value:.4f}  lr {lr:.3g}  "
                    f"{ips:.1f} img/s  ETA {_fmt_time(eta)}")
                if chief:
                    with _writing("TensorBoard summaries to", train_dir, step, progress.last_checkpoint):
                        with train_writer.as_default(step=step):
                            write_scalar("loss", loss_value, step)
                            write_scalar("learning_rate", lr, step)
                            write_scalar("images_per_second", ips, step)
                        train_writer.flush()
                window_start, window_steps = now, 0
                if on_progress:
                    on_progress(step)
            if step % cfg.checkpoint_every == 0 or step == stop_at:
                waiting(f"writing the checkpoint of step {step}")
                progress.last_checkpoint = checkpoints.save("latest", step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.train_steps:
                eval_scores = run_eval(step)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        if not _from_input_pipeline(e):
            raise
        raise ValueError(
            f"Reading {cfg.data_dir} split {cfg.train_split!r} failed at step {step}: {error_line(e)[:500]}\n"
            f"A record is corrupt or inconsistent. Find it with `python -m data_prep.verify {cfg.data_dir}`."
        ) from e
    if step < cfg.train_steps:
        log(f"Stopped at step {step} after --steps_per_run={cfg.steps_per_run}; rerun the same command to continue.")
    else:
        eval_scores = run_eval(step)
    total_time = time.time() - t0
    overall_ips = (step - first_step) * cfg.batch_size / max(total_time, 1e-9)
    log(f"Finished at step {step} in {_fmt_time(total_time)} ({overall_ips:.1f} img/s overall).")
    return TrainResult(step, loss_value, overall_ips, eval_scores)
