"""Options declared once: dataclass fields that carry their flag, help, parser and bounds.

A config class (:class:`TrainConfig`) declares each option with :func:`option`; from those
declarations alone come the command-line flags (:mod:`keras_seg.flags`), the config built
from parsed flags, ``model_dir/flags.txt`` and the validation with its error messages.
Library code takes the config objects; only the flag layer (:mod:`keras_seg.flags`, the
commands' entry points) reads flags.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

from keras_seg.data.augment import HUE_DELTA_MAX, JITTER_STRENGTH_MAX
from keras_seg.data.preprocess import PREPROCESSING
from keras_seg.precision import HELP as PRECISION_HELP
from keras_seg.precision import PRECISIONS
from keras_seg.registry import get_spec

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
CLUSTERS = ("tf_config", "slurm")
OPTIMIZERS = ("sgd", "adamw")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")
PREPROCESSING_CHOICES = ("auto",) + PREPROCESSING
#: Flag kinds: how the value is spelled on the command line.
KINDS = ("string", "integer", "float", "bool", "enum", "list", "multi_string")


def option(default: Any = dataclasses.MISSING, help: str = "", *, kind: Optional[str] = None,  # noqa: A002
           choices: Sequence[str] = (), check: Optional[Callable[[Any, Any], bool]] = None,
           want: Union[str, Callable[[Any], str]] = "",
           flag: Optional[str] = None, parse: Optional[Callable[[Any], Any]] = None,
           flag_default: Any = dataclasses.MISSING, aliases: Sequence[str] = ()) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
      default: the config's default; omitted for a required option.
      help: the flag's help text.
      kind: one of :data:`KINDS`; by default from ``default``'s type (enum when ``choices``).
      choices: the values an ``enum`` option takes (also checked by :func:`validate`).
      check: ``check(value, config) -> bool``; :func:`validate` raises
        ``--name must be <want>. Received: name=value`` when it is false.
      want: what ``check`` wants, for that message (or ``want(config) -> str``).
      flag: the flag's name when it is not the field's (``model_opt`` for ``model_options``).
      parse: turns the parsed flag value into the field's value (may raise ValueError).
      flag_default: the flag's default when it differs from the field's (a list for a tuple).
      aliases: older names of the flag that keep working (``--out`` for ``--out_dir``).
    """
    if kind is None:
        kind = "enum" if choices else _kind_of(default)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}. Received: kind={kind!r}")
    metadata = dict(help=help, kind=kind, choices=tuple(choices), check=check, want=want, flag=flag, parse=parse,
                    aliases=tuple(aliases),
                    flag_default=default if flag_default is dataclasses.MISSING else flag_default)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _kind_of(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "integer"
    if isinstance(default, float):
        return "float"
    if isinstance(default, (tuple, list)):
        return "list"
    return "string"


def options_of(cls) -> Iterator[Tuple[dataclasses.Field, str]]:
    """``(field, flag name)`` of every option of a config class, in declaration order."""
    for f in dataclasses.fields(cls):
        if "kind" in f.metadata:
            yield f, f.metadata["flag"] or f.name


def from_values(cls, values: Dict[str, Any]):
    """The config of ``values`` (flag name -> parsed flag value), each through its ``parse``.

    Raises:
      ValueError: a required option is missing, or a ``parse`` refuses its value.
    """
    missing = [flag for f, flag in options_of(cls) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and values.get(flag) is None]
    if missing:
        raise ValueError(f"Missing required flags: {['--' + m for m in missing]} "
                         "(set them in a --flagfile or on the command line).")
    kwargs = {}
    for f, flag in options_of(cls):
        value = values[flag]
        parse = f.metadata["parse"]
        kwargs[f.name] = parse(value) if parse else value
    return cls(**kwargs)


def validate(config) -> None:
    """Raises ValueError naming the first option whose ``choices`` or ``check`` refuses its value."""
    for f, flag in options_of(type(config)):
        value = getattr(config, f.name)
        choices = f.metadata["choices"]
        if choices and value not in choices:
            raise ValueError(f"--{flag} must be one of {choices}. Received: {f.name}={value!r}")
        check = f.metadata["check"]
        if check and not check(value, config):
            want = f.metadata["want"]
            raise ValueError(f"--{flag} must be {want(config) if callable(want) else want}. "
                             f"Received: {f.name}={value!r}")


def to_flag_lines(cls, values: Dict[str, Any]) -> str:
    """The flagfile text of parsed flag ``values`` (``model_dir/flags.txt``): replays the run."""
    lines = []
    for f, flag in options_of(cls):
        value = values.get(flag)
        if value is None:
            continue
        kind = f.metadata["kind"]
        if kind == "multi_string":
            lines += [f"--{flag}={v}" for v in value]
        elif kind == "bool":
            lines.append(f"--{flag}" if value else f"--no{flag}")
        elif kind == "list":
            lines.append(f"--{flag}={','.join(map(str, value))}")
        else:
            lines.append(f"--{flag}={value}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ parsers of the training flags


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


def parse_class_weights(raw: str) -> Union[str, Tuple[float, ...]]:
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


def parse_crop_size(values: Sequence[str]) -> Tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError as e:
        raise ValueError(f"--crop_size must be H,W integers. Received: crop_size={list(values)!r}") from e


def parse_scales(values: Sequence[str]) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except ValueError as e:
        raise ValueError(f"--eval_scales must be comma-separated numbers, e.g. 0.5 or 0.75,1,1.25. "
                         f"Received: eval_scales={list(values)!r}") from e


def _model_options_ok(options: Dict[str, Any], cfg: "TrainConfig") -> bool:
    """Unknown keys and the valid-padding U-Net raise their own, more specific, messages."""
    accepted = get_spec(cfg.model).option_names()  # unknown model -> ValueError listing valid names
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"--model_opt keys {unknown} are not options of model {cfg.model!r}. Accepted: {accepted}")
    if cfg.model == "unet" and options.get("padding") == "valid":
        raise ValueError(
            "--model_opt=padding=valid builds the paper's unpadded U-Net, whose logits are a "
            "centre crop of the input (572 -> 388); the trainer needs logits at the input size. "
            "Train with padding=same (the default). Received: model_opt padding='valid'"
        )
    return True


def _class_weights_ok(value, cfg: "TrainConfig") -> bool:
    if not isinstance(value, str) and len(value) != cfg.num_classes:
        raise ValueError(f"--class_weights lists {len(value)} weights for num_classes={cfg.num_classes}. "
                         f"Received: class_weights={value!r}")
    return True


MIXED_PRECISION_HELP = PRECISION_HELP + (
    " float16 trains with dynamic loss scaling. Checkpoints do not depend on it: a run can be resumed or "
    "evaluated under another precision, and export always writes float32 models.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Each field is also the training flag of its name
    (``model_options`` is ``--model_opt``); its help says what it means."""

    model: str = option(help="Registered model name (keras_seg.list_models()).", kind="string",
                        check=lambda v, c: bool(get_spec(v)), want="a registered model")
    num_classes: int = option(help="Number of classes; must match the dataset manifest.", kind="integer",
                              check=lambda v, c: v >= 1, want="an int >= 1")
    data_dir: str = option(help="Directory with manifest.json and TFRecord shards (from data_prep).", kind="string")
    model_dir: str = option(help="Where checkpoints, flags, summaries and metrics go; rerun to resume.", kind="string")
    model_options: Dict[str, Any] = option(
        {}, "Builder option key=value (repeatable); value is a Python literal or a string.", kind="multi_string",
        flag="model_opt", parse=parse_model_opts, flag_default=[], check=_model_options_ok)
    init_from: str = option(
        "", "Start this run from the model weights of another run: its model_dir (same --model, --num_classes and "
        "--model_opt). Only the weights are read; the optimizer, the step and the learning-rate schedule start "
        "afresh, e.g. to fine-tune at full resolution after training on half-resolution crops. Ignored once "
        "--model_dir has a checkpoint of its own (the run then resumes from it).", kind="string")
    init_checkpoint: str = option("latest", "With --init_from: latest, best or a checkpoint path prefix.",
                                  kind="string")
    train_split: str = option("train", "Split to train on.")
    eval_split: str = option("val", "Split to evaluate on ('' for none).")
    crop_size: Tuple[int, int] = option((256, 256), "Training crop H,W.", parse=parse_crop_size, flag_default=["256", "256"],
                                        check=lambda v, c: len(v) == 2 and min(v) >= 1, want="H,W with H, W >= 1")
    batch_size: int = option(8, "Global batch size, split across replicas.", check=lambda v, c: v >= 1, want=">= 1")
    eval_batch_size: int = option(1, "Evaluation batch size; a batch only ever holds images of one size (never "
                                  "padded), so every batch size gives the scores of batch 1.",
                                  check=lambda v, c: v >= 1, want=">= 1")
    train_steps: int = option(1000, "Total optimizer steps.", check=lambda v, c: v >= 1, want=">= 1")
    optimizer: str = option("sgd", "SGD with momentum, or AdamW.", choices=OPTIMIZERS)
    learning_rate: float = option(0.01, "Peak learning rate.", check=lambda v, c: v > 0, want="> 0")
    momentum: float = option(0.9, "SGD momentum (AdamW: beta_1).", check=lambda v, c: 0 <= v < 1, want="in [0, 1)")
    weight_decay: float = option(1e-4, "Weight decay (see --weight_decay_mode); biases and norm parameters are excluded.",
                                 check=lambda v, c: v >= 0, want=">= 0")
    weight_decay_mode: str = option(
        "decoupled", "decoupled: the optimizer's own decay, w -= lr * wd * w (Keras SGD/AdamW, AdamW paper). "
        "coupled: L2, wd * w added to the gradient before momentum, as Caffe's and PyTorch's "
        "SGD weight_decay: the solver the SegNet, PSPNet and DeepLab papers used.", choices=WEIGHT_DECAY_MODES)
    preprocessing: str = option(
        "auto", "Input preprocessing, recorded in model_config.json and applied by evaluate, predict and "
        "export: imagenet (RGB, (x/255 - mean)/std) or caffe (BGR, x - mean: what the "
        "keras.applications VGG16/ResNet ImageNet weights expect). auto: caffe when "
        "--model_opt=backbone_weights is set, else imagenet.", choices=PREPROCESSING_CHOICES)
    warmup_steps: int = option(0, "Linear warm-up steps before the poly decay.",
                               check=lambda v, c: 0 <= v < c.train_steps, want="in [0, train_steps)")
    poly_power: float = option(0.9, "Power of the poly learning-rate decay.", check=lambda v, c: v >= 0, want=">= 0")
    class_weights: Union[str, Tuple[float, ...]] = option(
        "none", "none | median_frequency | enet (from the manifest) | comma-separated floats.",
        parse=parse_class_weights, check=_class_weights_ok)
    min_scale: float = option(0.5, "Smallest random rescale factor.",
                              check=lambda v, c: 0 < v <= c.max_scale, want="0 < min_scale <= max_scale")
    max_scale: float = option(2.0, "Largest random rescale factor.")
    flip: bool = option(True, "Random horizontal flips.")
    photometric: bool = option(True, "Random brightness/contrast/saturation jitter.")
    jitter_strength: float = option(
        1.0, "With --photometric: scales the jitter's ranges, brightness +-0.125*s and contrast/saturation "
        "1 +- 0.25*s (1: the default jitter, 2: twice as wide).", check=lambda v, c: 0 <= v < JITTER_STRENGTH_MAX,
        want=f"in [0, {JITTER_STRENGTH_MAX:g})")
    hue_delta: float = option(0.0, "With --photometric: random hue shift of at most this many turns of the colour "
                              "wheel (0: none; e.g. 0.05).", check=lambda v, c: 0 <= v <= HUE_DELTA_MAX,
                              want=f"in [0, {HUE_DELTA_MAX:g}]")
    eval_every: int = option(0, "Evaluate every N steps (0: at the end only).", check=lambda v, c: v >= 0,
                             want=">= 0 (0: only at the end)")
    eval_scales: Tuple[float, ...] = option(
        (1.0,), "Evaluation during training (and so the best checkpoint) averages the probabilities over the frame "
        "resized by these factors (keras_seg.inference; 1: the frame as is). 0.5 scores a model trained on "
        "half-resolution crops (--min_scale/--max_scale around 0.5) at the frame's full size; evaluate and "
        "predict take the same --scales.", parse=parse_scales, flag_default=["1"],
        check=lambda v, c: len(v) >= 1 and min(v) > 0, want="positive factors")
    eval_images: int = option(4, "Each evaluation writes to TensorBoard an image sheet of this many eval images "
                              "(image | truth | prediction | errors), the confusion matrix and per-class IoU (images "
                              "need matplotlib; 0: scalars only).", check=lambda v, c: v >= 0, want=">= 0 (0: no images)")
    log_every: int = option(50, "Print progress every N steps.", check=lambda v, c: v >= 1, want=">= 1")
    checkpoint_every: int = option(500, "Checkpoint every N steps.", check=lambda v, c: v >= 1, want=">= 1")
    keep_checkpoints: int = option(3, "Checkpoints kept.", check=lambda v, c: v >= 1, want=">= 1")
    steps_per_run: int = option(0, "Stop this invocation after N steps (checkpointed); rerun to continue. For "
                                "time-limited jobs. 0: no limit.", check=lambda v, c: v >= 0, want=">= 0 (0: no limit)")
    steps_per_loop: int = option(
        10, "Training steps run inside one tf.function call between returns to Python; the loss is checked for "
        "NaN/Inf after every step inside the loop, and logging, checkpoints and evaluation still happen at their "
        "exact steps (a loop ends there). Larger values remove per-step Python and dispatch costs, which matter "
        "for small models.", check=lambda v, c: v >= 1, want=">= 1")
    seed: int = option(0, "Seed of initialisation, shuffling and augmentation.")
    deterministic: bool = option(False, "Deterministic ops (tf.config.experimental.enable_op_determinism): a resumed "
                                 "run ends with the weights of an uninterrupted one. Slower on GPUs.")
    jit_compile: bool = option(False, "Compile the training step with XLA (one replica only: refused under a "
                               "multi-device strategy). benchmarks/RESULTS.md measures when it helps.")
    data_shards: int = option(
        0, "Input shards of the training data (0: one per worker). A multiple of the worker count; fixing it makes "
        "the batches independent of the number of workers.",
        check=lambda v, c: v >= 0 and (v == 0 or c.batch_size % v == 0),
        want=lambda c: f"0 (one per worker) or a divisor of --batch_size={c.batch_size}")
    strategy: str = option("auto", "auto: multi_worker if the cluster (--cluster) has several tasks, else mirrored "
                           "over all local devices.", choices=STRATEGIES)
    device: Optional[str] = option(None, "With --strategy=one_device: the device, e.g. /cpu:0 or /gpu:1.", kind="string")
    cluster: str = option("tf_config", "Where the multi-worker cluster comes from: the TF_CONFIG environment "
                          "variable, or Slurm's (run under srun).", choices=CLUSTERS)
    cluster_port: int = option(8888, "With --cluster=slurm: port of the first task on each node; the node's next "
                               "tasks take the next ports.", check=lambda v, c: 0 < v < 65536, want="a port number")
    worker_timeout: float = option(600.0, "Multi-worker: seconds a worker waits for the others (start-up, each step, "
                                   "checkpoint and evaluation) before it exits with an error; rerun every worker to "
                                   "resume.", check=lambda v, c: v > 0, want="> 0 seconds")
    mixed_precision: str = option("float32", MIXED_PRECISION_HELP, choices=PRECISIONS)

    def validate(self) -> None:
        """Raises ValueError naming the first bad option."""
        validate(self)
