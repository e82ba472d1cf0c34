"""A Mask R-CNN run's ``model_dir``: its ``model_config.json``, and the models rebuilt from it.

The layout is the semantic one (:class:`keras_seg.layout.ModelDir`): ``flags.txt``,
``model_config.json``, ``ckpt/`` (latest checkpoints), ``best/`` (best mask AP50, with
``best.json``), ``eval/`` (``metrics-<step>.json`` and TensorBoard events) and ``train/``.
``model_config.json`` holds ``"task": "instance"``, the class names and palette of the
dataset, the input ``image_size`` and preprocessing, and the keyword arguments of
:func:`~keras_seg.detection.model.build_mask_rcnn`; evaluation, prediction and export
rebuild the train model from it, restore a checkpoint into it and take the inference model
with :func:`~keras_seg.detection.model.inference_model_from`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

from keras_seg.checkpoints import CheckpointError, find_checkpoint, read_model_config, write_model_config
from keras_seg.layout import ModelDir

__all__ = ["MODEL_NAME", "build_train_model", "check_model_dir", "load_detector", "make_model_config",
           "model_options", "restore_train_model"]

MODEL_NAME = "mask_rcnn"
#: Keys whose change makes a model_dir another model: training there again is refused.
_IDENTITY = ("task", "model", "num_classes", "image_size", "preprocessing", "model_options")


def model_options(cfg) -> Dict[str, Any]:
    """The :func:`build_mask_rcnn` keyword arguments of a :class:`DetectionTrainConfig` (JSON-ready)."""
    backbone_options: Dict[str, Any] = {}
    if cfg.backbone_blocks:
        backbone_options["blocks"] = list(cfg.backbone_blocks)
    if cfg.backbone_width:
        backbone_options["width"] = int(cfg.backbone_width)
    return {
        "backbone": cfg.backbone, "backbone_options": backbone_options, "fpn_width": cfg.fpn_width,
        "anchor_sizes": list(cfg.anchor_sizes), "rpn_batch_per_image": cfg.rpn_batch_per_image,
        "rpn_pre_nms_topk": list(cfg.rpn_pre_nms_topk), "rpn_post_nms_topk": list(cfg.rpn_post_nms_topk),
        "roi_batch_per_image": cfg.roi_batch_per_image, "roi_fg_fraction": cfg.roi_fg_fraction,
        "box_fc_width": cfg.box_fc_width, "mask_width": cfg.mask_width, "mask_num_convs": cfg.mask_num_convs,
        "max_instances": cfg.max_instances, "score_threshold": cfg.score_threshold,
        "detection_nms_iou": cfg.detection_nms_iou, "max_detections": cfg.max_detections, "seed": cfg.seed,
    }


def make_model_config(cfg, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """The ``model_config.json`` of a run: everything evaluate, predict and export rebuild from."""
    return {
        "task": "instance", "model": MODEL_NAME, "num_classes": int(manifest["num_classes"]),
        "class_names": list(manifest["class_names"]), "palette": [list(map(int, c)) for c in manifest["palette"]],
        "dataset": manifest.get("dataset", ""), "data_dir": os.path.abspath(cfg.data_dir),
        "train_split": cfg.train_split, "eval_split": cfg.eval_split, "image_size": list(cfg.image_size),
        "preprocessing": "imagenet", "model_options": model_options(cfg),
    }


def check_model_dir(model_dir: str, config: Dict[str, Any]) -> None:
    """Refuses a ``model_dir`` that holds a run of another model; writes ``model_config.json`` atomically.

    Raises:
      ValueError: the existing ``model_config.json`` differs in a key of :data:`_IDENTITY`.
    """
    if os.path.isfile(ModelDir(model_dir).model_config):
        old = read_model_config(model_dir)
        for key in _IDENTITY:
            if old.get(key) != config[key]:
                raise ValueError(f"--model_dir {model_dir} holds a run with {key}={old.get(key)!r}, not "
                                 f"{config[key]!r}. Use a new --model_dir to train a different model.")
    write_model_config(model_dir, config)


def _checked(config: Dict[str, Any], model_dir: str) -> Dict[str, Any]:
    if config.get("task") != "instance":
        raise CheckpointError(f"{ModelDir(model_dir).model_config} is a {config.get('task', 'semantic')!r} run, "
                              "not a Mask R-CNN one: use keras_seg.evaluate / predict / export for it.")
    return config


def build_train_model(config: Dict[str, Any]):
    """The train-mode Mask R-CNN of a ``model_config.json`` dict (fresh weights)."""
    from keras_seg.detection.model import build_mask_rcnn  # pylint: disable=import-outside-toplevel

    options = dict(config["model_options"])
    for key in ("rpn_pre_nms_topk", "rpn_post_nms_topk", "anchor_sizes"):
        options[key] = tuple(options[key])
    return build_mask_rcnn(int(config["num_classes"]), (*config["image_size"], 3), mode="train", **options)


def restore_train_model(model_dir: str, checkpoint: str = "latest") -> Tuple[Any, Dict[str, Any], str]:
    """Rebuilds the train model of ``model_dir`` and reads a checkpoint's model weights into it.

    Returns:
      ``(train_model, model_config, checkpoint_path)``.

    Raises:
      CheckpointError: not a Mask R-CNN run, no such checkpoint, or one that does not fit.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    config = _checked(read_model_config(model_dir), model_dir)
    path = find_checkpoint(model_dir, checkpoint)
    model = build_train_model(config)
    try:
        status = tf.train.Checkpoint(model=model).read(path)
        status.expect_partial()  # the optimizer and the sampling state are not wanted here
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read into the model of {model_dir}: {e}") from e
    return model, config, path


def load_detector(model_dir: str, checkpoint: str = "latest", **overrides) -> Tuple[Any, Dict[str, Any], str]:
    """The inference model of a trained run: ``(model, model_config, checkpoint_path)``.

    ``overrides`` go to :func:`~keras_seg.detection.model.inference_model_from` (e.g.
    ``score_threshold``, ``image_masks``).
    """
    from keras_seg.detection.model import inference_model_from  # pylint: disable=import-outside-toplevel

    train_model, config, path = restore_train_model(model_dir, checkpoint)
    return inference_model_from(train_model, **overrides), config, path
