"""Command-line flags of ``python -m keras_seg.train`` and the frozen config they become.

Only ``train.py``'s ``__main__`` calls :func:`define_flags`; :func:`config_from_flags`
turns the parsed flags into a :class:`TrainConfig`, and nothing below reads ``FLAGS``.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from absl import flags

from keras_seg.precision import HELP as MIXED_PRECISION_HELP
from keras_seg.data.preprocess import PREPROCESSING
from keras_seg.precision import PRECISIONS
from keras_seg.registry import get_spec

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
CLUSTERS = ("tf_config", "slurm")
OPTIMIZERS = ("sgd", "adamw")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")
PREPROCESSING_CHOICES = ("auto",) + PREPROCESSING


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; see ``define_flags`` for each field's meaning."""

    model: str
    num_classes: int
    data_dir: str
    model_dir: str
    model_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "val"
    crop_size: Tuple[int, int] = (256, 256)
    batch_size: int = 8
    eval_batch_size: int = 1
    train_steps: int = 1000
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_mode: str = "decoupled"
    preprocessing: str = "auto"
    warmup_steps: int = 0
    poly_power: float = 0.9
    class_weights: Union[str, Tuple[float, ...]] = "none"
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True
    photometric: bool = True
    eval_every: int = 0
    eval_images: int = 4
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    steps_per_run: int = 0
    steps_per_loop: int = 10
    seed: int = 0
    deterministic: bool = False
    jit_compile: bool = False
    mixed_precision: str = "float32"
    data_shards: int = 0
    strategy: str = "auto"
    device: Optional[str] = None
    cluster: str = "tf_config"
    cluster_port: int = 8888
    worker_timeout: float = 600.0

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        spec = get_spec(self.model)  # unknown model -> ValueError listing valid names
        accepted = spec.option_names()
        unknown = sorted(set(self.model_options) - set(accepted))
        if unknown:
            raise ValueError(
                f"--model_opt keys {unknown} are not options of model {self.model!r}. "
                f"Accepted: {accepted}"
            )
        if self.model == "unet" and self.model_options.get("padding") == "valid":
            raise ValueError(
                "--model_opt=padding=valid builds the paper's unpadded U-Net, whose logits are a "
                "centre crop of the input (572 -> 388); the trainer needs logits at the input size. "
                "Train with padding=same (the default). Received: model_opt padding='valid'"
            )
        checks = [
            (self.num_classes >= 1, "num_classes", "an int >= 1"),
            (len(self.crop_size) == 2 and min(self.crop_size) >= 1, "crop_size", "H,W with H, W >= 1"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.eval_batch_size >= 1, "eval_batch_size", ">= 1"),
            (self.train_steps >= 1, "train_steps", ">= 1"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}"),
            (self.learning_rate > 0, "learning_rate", "> 0"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.weight_decay_mode in WEIGHT_DECAY_MODES, "weight_decay_mode", f"one of {WEIGHT_DECAY_MODES}"),
            (self.preprocessing in PREPROCESSING_CHOICES, "preprocessing", f"one of {PREPROCESSING_CHOICES}"),
            (0 <= self.warmup_steps < self.train_steps, "warmup_steps", "in [0, train_steps)"),
            (self.poly_power >= 0, "poly_power", ">= 0"),
            (0 < self.min_scale <= self.max_scale, "min_scale/max_scale", "0 < min_scale <= max_scale"),
            (self.eval_every >= 0, "eval_every", ">= 0 (0: only at the end)"),
            (self.eval_images >= 0, "eval_images", ">= 0 (0: no images)"),
            (self.log_every >= 1, "log_every", ">= 1"),
            (self.checkpoint_every >= 1, "checkpoint_every", ">= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", ">= 1"),
            (self.steps_per_run >= 0, "steps_per_run", ">= 0 (0: no limit)"),
            (self.steps_per_loop >= 1, "steps_per_loop", ">= 1"),
            (self.mixed_precision in PRECISIONS, "mixed_precision", f"one of {PRECISIONS}"),
            (self.data_shards >= 0, "data_shards", ">= 0 (0: one per worker)"),
            (self.data_shards == 0 or self.batch_size % self.data_shards == 0, "data_shards",
             f"a divisor of --batch_size={self.batch_size}"),
            (self.strategy in STRATEGIES, "strategy", f"one of {STRATEGIES}"),
            (self.cluster in CLUSTERS, "cluster", f"one of {CLUSTERS}"),
            (0 < self.cluster_port < 65536, "cluster_port", "a port number"),
            (self.worker_timeout > 0, "worker_timeout", "> 0 seconds"),
        ]
        for ok, name, want in checks:
            if not ok:
                raise ValueError(f"--{name} must be {want}. Received: {name}={getattr(self, name.split('/')[0])!r}")
        if not isinstance(self.class_weights, str) and len(self.class_weights) != self.num_classes:
            raise ValueError(
                f"--class_weights lists {len(self.class_weights)} weights for num_classes="
                f"{self.num_classes}. Received: class_weights={self.class_weights!r}"
            )


def define_flags() -> None:
    """Defines the training flags on absl's global FLAGS (call once, from ``__main__``)."""
    d = TrainConfig.__dataclass_fields__
    flags.DEFINE_string("model", None, "Registered model name (keras_seg.list_models()).")
    flags.DEFINE_integer("num_classes", None, "Number of classes; must match the dataset manifest.")
    flags.DEFINE_multi_string("model_opt", [], "Builder option key=value (repeatable); value is a Python literal or a string.")
    flags.DEFINE_string("data_dir", None, "Directory with manifest.json and TFRecord shards (from data_prep).")
    flags.DEFINE_string("model_dir", None, "Where checkpoints, flags, summaries and metrics go; rerun to resume.")
    flags.DEFINE_string("train_split", d["train_split"].default, "Split to train on.")
    flags.DEFINE_string("eval_split", d["eval_split"].default, "Split to evaluate on ('' for none).")
    flags.DEFINE_list("crop_size", ["256", "256"], "Training crop H,W.")
    flags.DEFINE_integer("batch_size", d["batch_size"].default, "Global batch size, split across replicas.")
    flags.DEFINE_integer("eval_batch_size", d["eval_batch_size"].default, "Evaluation batch size; a batch only ever holds images of one size (never padded), so every batch size gives the scores of batch 1.")
    flags.DEFINE_integer("train_steps", d["train_steps"].default, "Total optimizer steps.")
    flags.DEFINE_enum("optimizer", d["optimizer"].default, OPTIMIZERS, "SGD with momentum, or AdamW.")
    flags.DEFINE_float("learning_rate", d["learning_rate"].default, "Peak learning rate.")
    flags.DEFINE_float("momentum", d["momentum"].default, "SGD momentum (AdamW: beta_1).")
    flags.DEFINE_float("weight_decay", d["weight_decay"].default, "Weight decay (see --weight_decay_mode); biases and norm parameters are excluded.")
    flags.DEFINE_enum("weight_decay_mode", d["weight_decay_mode"].default, WEIGHT_DECAY_MODES,
                      "decoupled: the optimizer's own decay, w -= lr * wd * w (Keras SGD/AdamW, AdamW paper). "
                      "coupled: L2, wd * w added to the gradient before momentum, as Caffe's and PyTorch's "
                      "SGD weight_decay: the solver the SegNet, PSPNet and DeepLab papers used.")
    flags.DEFINE_enum("preprocessing", d["preprocessing"].default, PREPROCESSING_CHOICES,
                      "Input preprocessing, recorded in model_config.json and applied by evaluate, predict and "
                      "export: imagenet (RGB, (x/255 - mean)/std) or caffe (BGR, x - mean: what the "
                      "keras.applications VGG16/ResNet ImageNet weights expect). auto: caffe when "
                      "--model_opt=backbone_weights is set, else imagenet.")
    flags.DEFINE_integer("warmup_steps", d["warmup_steps"].default, "Linear warm-up steps before the poly decay.")
    flags.DEFINE_float("poly_power", d["poly_power"].default, "Power of the poly learning-rate decay.")
    flags.DEFINE_string("class_weights", "none", "none | median_frequency | enet (from the manifest) | comma-separated floats.")
    flags.DEFINE_float("min_scale", d["min_scale"].default, "Smallest random rescale factor.")
    flags.DEFINE_float("max_scale", d["max_scale"].default, "Largest random rescale factor.")
    flags.DEFINE_bool("flip", True, "Random horizontal flips.")
    flags.DEFINE_bool("photometric", True, "Random brightness/contrast/saturation jitter.")
    flags.DEFINE_integer("eval_every", d["eval_every"].default, "Evaluate every N steps (0: at the end only).")
    flags.DEFINE_integer("eval_images", d["eval_images"].default, "Each evaluation writes to TensorBoard an image "
                         "sheet of this many eval images (image | truth | prediction | errors), the confusion matrix "
                         "and per-class IoU (images need matplotlib; 0: scalars only).")
    flags.DEFINE_integer("log_every", d["log_every"].default, "Print progress every N steps.")
    flags.DEFINE_integer("checkpoint_every", d["checkpoint_every"].default, "Checkpoint every N steps.")
    flags.DEFINE_integer("keep_checkpoints", d["keep_checkpoints"].default, "Checkpoints kept.")
    flags.DEFINE_integer("steps_per_run", 0, "Stop this invocation after N steps (checkpointed); rerun to continue. For time-limited jobs. 0: no limit.")
    flags.DEFINE_integer("steps_per_loop", d["steps_per_loop"].default, "Training steps run inside one tf.function call "
                         "between returns to Python; the loss is checked for NaN/Inf after every step inside the loop, "
                         "and logging, checkpoints and evaluation still happen at their exact steps (a loop ends there). "
                         "Larger values remove per-step Python and dispatch costs, which matter for small models.")
    flags.DEFINE_integer("seed", d["seed"].default, "Seed of initialisation, shuffling and augmentation.")
    flags.DEFINE_bool("deterministic", False, "Deterministic ops (tf.config.experimental.enable_op_determinism): a resumed run ends with the weights of an uninterrupted one. Slower on GPUs.")
    flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA (one replica only: refused under a multi-device strategy). benchmarks/RESULTS.md measures when it helps.")
    flags.DEFINE_enum("mixed_precision", d["mixed_precision"].default, PRECISIONS, MIXED_PRECISION_HELP + (
        " float16 trains with dynamic loss scaling. Checkpoints do not depend on it: a run can be resumed or "
        "evaluated under another precision, and export always writes float32 models."))
    flags.DEFINE_integer("data_shards", d["data_shards"].default, "Input shards of the training data (0: one per worker). A multiple of the worker count; fixing it makes the batches independent of the number of workers.")
    flags.DEFINE_enum("strategy", "auto", STRATEGIES, "auto: multi_worker if the cluster (--cluster) has several tasks, else mirrored over all local devices.")
    flags.DEFINE_string("device", None, "With --strategy=one_device: the device, e.g. /cpu:0 or /gpu:1.")
    flags.DEFINE_enum("cluster", d["cluster"].default, CLUSTERS, "Where the multi-worker cluster comes from: the TF_CONFIG environment variable, or Slurm's (run under srun).")
    flags.DEFINE_integer("cluster_port", d["cluster_port"].default, "With --cluster=slurm: port of the first task on each node; the node's next tasks take the next ports.")
    flags.DEFINE_float("worker_timeout", d["worker_timeout"].default, "Multi-worker: seconds a worker waits for the others (start-up, each step, checkpoint and evaluation) before it exits with an error; rerun every worker to resume.")


TRAIN_FLAGS = (
    "model", "num_classes", "model_opt", "data_dir", "model_dir", "train_split", "eval_split",
    "crop_size", "batch_size", "eval_batch_size", "train_steps", "optimizer", "learning_rate",
    "momentum", "weight_decay", "weight_decay_mode", "preprocessing", "warmup_steps", "poly_power", "class_weights", "min_scale",
    "max_scale", "flip", "photometric", "eval_every", "eval_images", "log_every", "checkpoint_every",
    "keep_checkpoints", "steps_per_run", "steps_per_loop", "seed", "deterministic", "jit_compile", "data_shards", "strategy", "device",
    "cluster", "cluster_port", "worker_timeout",
    "mixed_precision",
)


def parse_model_opts(items: Sequence[str]) -> Dict[str, Any]:
    """Parses ``key=value`` strings; values are Python literals where they parse, else strings."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--model_opt must be key=value. Received: model_opt={item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        lowered = raw.strip().lower()
        if lowered in ("true", "false"):
            value: Any = lowered == "true"
        else:
            try:
                value = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError):
                value = raw.strip()
        out[key] = value
    return out


def _parse_class_weights(raw: str):
    raw = raw.strip()
    if raw in ("none", "median_frequency", "enet"):
        return raw
    try:
        return tuple(float(v) for v in raw.split(","))
    except ValueError as e:
        raise ValueError(
            "--class_weights must be none, median_frequency, enet or comma-separated floats. "
            f"Received: class_weights={raw!r}"
        ) from e


def config_from_flags(f) -> TrainConfig:
    """Builds and validates the :class:`TrainConfig` from parsed absl flags."""
    missing = [n for n in ("model", "num_classes", "data_dir", "model_dir") if getattr(f, n) is None]
    if missing:
        raise ValueError(f"Missing required flags: {['--' + m for m in missing]} (set them in a --flagfile or on the command line).")
    try:
        crop = tuple(int(v) for v in f.crop_size)
    except ValueError as e:
        raise ValueError(f"--crop_size must be H,W integers. Received: crop_size={f.crop_size!r}") from e
    cfg = TrainConfig(
        model=f.model, num_classes=f.num_classes, data_dir=f.data_dir, model_dir=f.model_dir,
        model_options=parse_model_opts(f.model_opt), train_split=f.train_split,
        eval_split=f.eval_split, crop_size=crop, batch_size=f.batch_size,
        eval_batch_size=f.eval_batch_size, train_steps=f.train_steps, optimizer=f.optimizer,
        learning_rate=f.learning_rate, momentum=f.momentum, weight_decay=f.weight_decay,
        weight_decay_mode=f.weight_decay_mode, preprocessing=f.preprocessing,
        warmup_steps=f.warmup_steps, poly_power=f.poly_power,
        class_weights=_parse_class_weights(f.class_weights), min_scale=f.min_scale,
        max_scale=f.max_scale, flip=f.flip, photometric=f.photometric, eval_every=f.eval_every,
        eval_images=f.eval_images,
        log_every=f.log_every, checkpoint_every=f.checkpoint_every,
        keep_checkpoints=f.keep_checkpoints, steps_per_run=f.steps_per_run, steps_per_loop=f.steps_per_loop, seed=f.seed,
        deterministic=f.deterministic, jit_compile=f.jit_compile, data_shards=f.data_shards, strategy=f.strategy, device=f.device,
        cluster=f.cluster, cluster_port=f.cluster_port, worker_timeout=f.worker_timeout,
        mixed_precision=f.mixed_precision,
    )
    cfg.validate()
    return cfg


def flags_to_text(f) -> str:
    """The resolved training flags as a flagfile, for ``model_dir/flags.txt``."""
    lines = []
    for name in TRAIN_FLAGS:
        value = getattr(f, name)
        if value is None:
            continue
        if name == "model_opt":
            lines += [f"--model_opt={v}" for v in value]
        elif isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, list):
            lines.append(f"--{name}={','.join(map(str, value))}")
        else:
            lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"
