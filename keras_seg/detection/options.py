"""Options of the Mask R-CNN commands, declared once (:func:`keras_seg.options.option`).

One frozen dataclass per command: :class:`DetectionTrainConfig` (``python -m
keras_seg.detection.train``), :class:`DetectionEvalConfig` (``...detection.evaluate``),
:class:`DetectionPredictConfig` (``...detection.predict``) and :class:`DetectionExportConfig`
(``...detection.export``). Their fields generate the absl flags
(:func:`keras_seg.flags.define_flags`), the validated config
(:func:`keras_seg.flags.config_from_flags`) and ``model_dir/flags.txt``, exactly as for the
semantic ``TrainConfig``. Library code takes these objects and never reads ``FLAGS``.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

from keras_seg.options import OPTIMIZERS, STRATEGIES, option
from keras_seg.options import validate as validate_options

__all__ = ["DetectionEvalConfig", "DetectionExportConfig", "DetectionPredictConfig", "DetectionTrainConfig",
           "LOSS_WEIGHT_FIELDS"]

#: The loss-weight option of each of :data:`keras_seg.detection.model.LOSS_NAMES`, in that order.
LOSS_WEIGHT_FIELDS = ("rpn_objectness_weight", "rpn_box_weight", "classification_weight", "box_weight", "mask_weight")


def _ints(flag: str, count: int = 0):
    """Parser of a comma-separated int list flag (``count`` of them when non-zero)."""

    def parse(values) -> Tuple[int, ...]:
        try:
            out = tuple(int(v) for v in values)
        except ValueError as e:
            raise ValueError(f"--{flag} must be comma-separated integers. Received: {flag}={list(values)!r}") from e
        if count and len(out) != count:
            raise ValueError(f"--{flag} needs {count} integers. Received: {flag}={list(values)!r}")
        return out

    return parse


def _floats(flag: str):
    """Parser of a comma-separated float list flag."""

    def parse(values) -> Tuple[float, ...]:
        try:
            return tuple(float(v) for v in values)
        except ValueError as e:
            raise ValueError(f"--{flag} must be comma-separated numbers. Received: {flag}={list(values)!r}") from e

    return parse


def _positive(v, c) -> bool:
    return v >= 1


def _weight(help_: str, default: float = 1.0):
    return option(default, help_, check=lambda v, c: v >= 0, want=">= 0")


@dataclasses.dataclass(frozen=True)
class DetectionTrainConfig:
    """Everything a Mask R-CNN training run needs; each field is also the flag of its name."""

    data_dir: str = option(help="Instance dataset (manifest.json with task 'instance', from data_prep).",
                           kind="string")
    model_dir: str = option(help="Checkpoints, flags, model_config.json, summaries and metrics; rerun to resume.",
                            kind="string")
    train_split: str = option("train", "Split to train on.")
    eval_split: str = option("val", "Split to evaluate on ('' for none).")
    image_size: Tuple[int, int] = option(
        (64, 64), "Static model input H,W: every image is resized keeping its aspect ratio and padded to it "
        "(keras_seg.detection.data).", parse=_ints("image_size", 2), flag_default=["64", "64"],
        check=lambda v, c: min(v) >= 32, want="H,W with H, W >= 32")
    max_instances: int = option(16, "Ground-truth slots per image (at least the most objects of any image).",
                                check=lambda v, c: v >= 1, want=">= 1")
    # --- the model (keras_seg.detection.model.build_mask_rcnn)
    backbone: str = option("resnet18", "A ResNet of the backbone registry (resnet18, resnet50, ...).")
    backbone_blocks: Tuple[int, ...] = option(
        (), "Residual blocks per stage, e.g. 1,1,1,1 (empty: the backbone's own).", kind="list",
        parse=_ints("backbone_blocks"), flag_default=[], check=lambda v, c: not v or (len(v) == 4 and min(v) >= 1),
        want="empty or 4 ints >= 1")
    backbone_width: int = option(0, "Channels of the first stage (0: the backbone's own, 64).",
                                 check=lambda v, c: v >= 0, want=">= 0")
    fpn_width: int = option(256, "Channels of the pyramid and of the RPN convolution.", check=_positive, want=">= 1")
    anchor_sizes: Tuple[float, ...] = option(
        (32.0, 64.0, 128.0, 256.0, 512.0), "Anchor size of P2..P6 (five numbers).", parse=_floats("anchor_sizes"),
        flag_default=["32", "64", "128", "256", "512"], check=lambda v, c: len(v) == 5 and min(v) > 0,
        want="five positive sizes")
    rpn_batch_per_image: int = option(256, "Anchors sampled per image for the RPN losses.", check=_positive,
                                      want=">= 1")
    rpn_pre_nms_topk: Tuple[int, int] = option(
        (2000, 1000), "Train,inference candidates per level before the proposal NMS.",
        parse=_ints("rpn_pre_nms_topk", 2), flag_default=["2000", "1000"], check=lambda v, c: min(v) >= 1,
        want="two ints >= 1")
    rpn_post_nms_topk: Tuple[int, int] = option(
        (2000, 1000), "Train,inference proposals per image after NMS.", parse=_ints("rpn_post_nms_topk", 2),
        flag_default=["2000", "1000"], check=lambda v, c: min(v) >= 1, want="two ints >= 1")
    roi_batch_per_image: int = option(512, "RoIs sampled per image for the box and mask heads.", check=_positive,
                                      want=">= 1")
    roi_fg_fraction: float = option(0.25, "Largest foreground fraction of the sampled RoIs.",
                                    check=lambda v, c: 0 < v <= 1, want="in (0, 1]")
    box_fc_width: int = option(1024, "Width of the box head's two hidden layers.", check=_positive, want=">= 1")
    mask_width: int = option(256, "Channels of the mask head.", check=_positive, want=">= 1")
    mask_num_convs: int = option(4, "3x3 convolutions of the mask head.", check=_positive, want=">= 1")
    score_threshold: float = option(0.05, "Smallest detection score kept at inference.",
                                    check=lambda v, c: 0 <= v < 1, want="in [0, 1)")
    detection_nms_iou: float = option(0.5, "Per-class NMS IoU of the detections.", check=lambda v, c: 0 < v <= 1,
                                      want="in (0, 1]")
    max_detections: int = option(100, "Detections per image at inference.", check=_positive, want=">= 1")
    # --- the loss
    rpn_objectness_weight: float = _weight("Weight of the RPN objectness loss.")
    rpn_box_weight: float = _weight("Weight of the RPN box loss.")
    classification_weight: float = _weight("Weight of the box-head classification loss.")
    box_weight: float = _weight("Weight of the box-head box loss.")
    mask_weight: float = _weight("Weight of the mask loss.")
    # --- the optimizer
    batch_size: int = option(8, "Global batch size, split across replicas.", check=_positive, want=">= 1")
    train_steps: int = option(1000, "Total optimizer steps.", check=_positive, want=">= 1")
    optimizer: str = option("sgd", "SGD with momentum, or AdamW.", choices=OPTIMIZERS)
    learning_rate: float = option(0.02, "Peak learning rate.", check=lambda v, c: v > 0, want="> 0")
    momentum: float = option(0.9, "SGD momentum (AdamW: beta_1).", check=lambda v, c: 0 <= v < 1, want="in [0, 1)")
    weight_decay: float = option(1e-4, "Decoupled weight decay; biases and norm parameters are excluded.",
                                 check=lambda v, c: v >= 0, want=">= 0")
    warmup_steps: int = option(0, "Linear warm-up steps before the poly decay.",
                               check=lambda v, c: 0 <= v < c.train_steps, want="in [0, train_steps)")
    poly_power: float = option(0.9, "Power of the poly learning-rate decay.", check=lambda v, c: v >= 0, want=">= 0")
    clip_norm: float = option(0.0, "Clip the global gradient norm (after the replicas' gradients are summed) to "
                              "this value; 0: no clipping.", check=lambda v, c: v >= 0, want=">= 0")
    # --- the loop
    eval_every: int = option(0, "Evaluate every N steps (0: at the end only); keeps best/ by mask AP50.",
                             check=lambda v, c: v >= 0, want=">= 0")
    eval_images: int = option(0, "Images evaluated each time (0: the whole split).", check=lambda v, c: v >= 0,
                              want=">= 0")
    eval_batch_size: int = option(8, "Evaluation batch size.", check=_positive, want=">= 1")
    log_every: int = option(20, "Print progress every N steps.", check=_positive, want=">= 1")
    checkpoint_every: int = option(200, "Checkpoint every N steps.", check=_positive, want=">= 1")
    keep_checkpoints: int = option(3, "Checkpoints kept.", check=_positive, want=">= 1")
    steps_per_run: int = option(0, "Stop this invocation after N steps (checkpointed); rerun to continue. "
                                "0: no limit.", check=lambda v, c: v >= 0, want=">= 0 (0: no limit)")
    seed: int = option(0, "Seed of initialisation, shuffling, flips and the target sampling.")
    deterministic: bool = option(False, "Deterministic ops (tf.config.experimental.enable_op_determinism).")
    strategy: str = option("mirrored", "mirrored: all local devices; one_device: --device.",
                           choices=tuple(s for s in STRATEGIES if s in ("mirrored", "one_device")))
    device: str = option("", "With --strategy=one_device: the device, e.g. /cpu:0 or /gpu:1.")

    def validate(self) -> None:
        """Raises ValueError naming the first bad option."""
        validate_options(self)
        if int(self.roi_batch_per_image * self.roi_fg_fraction) < 1:
            raise ValueError("--roi_batch_per_image * --roi_fg_fraction must allow one foreground RoI. "
                             f"Received: roi_batch_per_image={self.roi_batch_per_image}, "
                             f"roi_fg_fraction={self.roi_fg_fraction}")


@dataclasses.dataclass(frozen=True)
class DetectionEvalConfig:
    """``python -m keras_seg.detection.evaluate``: box and mask AP of a trained run."""

    model_dir: str = option(help="Training directory (model_config.json, ckpt/, best/).", kind="string")
    split: str = option("val", "Split to evaluate.")
    data_dir: str = option("", "Dataset (default: the one the run trained on).")
    checkpoint: str = option("latest", "latest, best, or a checkpoint path prefix.")
    batch_size: int = option(8, "Images per forward pass.", check=_positive, want=">= 1")
    max_images: int = option(0, "Evaluate the first N images only (0: all).", check=lambda v, c: v >= 0, want=">= 0")
    score_threshold: float = option(-1.0, "Override the run's detection score threshold (< 0: keep it).")

    def validate(self) -> None:
        """Raises ValueError naming the first bad option."""
        validate_options(self)


@dataclasses.dataclass(frozen=True)
class DetectionPredictConfig:
    """``python -m keras_seg.detection.predict``: drawn instances and a JSON per image."""

    model_dir: str = option(help="Training directory.", kind="string")
    out_dir: str = option("predictions", "Output folder: <stem>_instances.png and <stem>.json per image.")
    checkpoint: str = option("latest", "latest, best, or a checkpoint path prefix.")
    min_score: float = option(0.5, "Draw and list detections with at least this score.",
                              check=lambda v, c: 0 <= v <= 1, want="in [0, 1]")
    alpha: float = option(0.45, "Opacity of the filled masks.", check=lambda v, c: 0 <= v <= 1, want="in [0, 1]")

    def validate(self) -> None:
        """Raises ValueError naming the first bad option."""
        validate_options(self)


@dataclasses.dataclass(frozen=True)
class DetectionExportConfig:
    """``python -m keras_seg.detection.export``: SavedModel, TFLite attempt and parity report."""

    model_dir: str = option(help="Training directory.", kind="string")
    out_dir: str = option(help="Output folder: saved_model/, model.tflite, parity.json.", kind="string")
    checkpoint: str = option("latest", "latest, best, or a checkpoint path prefix.")
    tflite: bool = option(True, "Also try a builtin-ops TFLite conversion (its failure is reported, not fatal).")
    data_dir: str = option("", "Dataset of the parity images (default: the one the run trained on).")
    parity_split: str = option("val", "Split the parity images come from.")
    parity_images: int = option(4, "Images compared (0: skip the parity report).", check=lambda v, c: v >= 0,
                                want=">= 0")

    def validate(self) -> None:
        """Raises ValueError naming the first bad option."""
        validate_options(self)
