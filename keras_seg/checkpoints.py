"""The ``model_dir`` layout, and rebuilding a trained model from it.

``model_dir/``::

    flags.txt            resolved training flags (replay with --flagfile)
    model_config.json    model name, num_classes, options, class names, palette, ignore label
    ckpt/                latest checkpoints (tf.train.CheckpointManager)
    best/                checkpoint with the best eval mean IoU, and best.json
    eval/                metrics-<step>.json per evaluation
    train/, eval/        TensorBoard event files
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import keras
import tensorflow as tf

from keras_seg.data.manifest import atomic_write_json
from keras_seg.registry import get_spec

MODEL_CONFIG = "model_config.json"
LATEST_DIR = "ckpt"
BEST_DIR = "best"


class CheckpointError(ValueError):
    """A model_dir has no usable checkpoint or config."""


def write_model_config(model_dir: str, config: Dict[str, Any]) -> None:
    """Writes ``model_config.json`` atomically."""
    atomic_write_json(os.path.join(model_dir, MODEL_CONFIG), config)


def read_model_config(model_dir: str) -> Dict[str, Any]:
    """Reads ``model_config.json``, with a clear error when ``model_dir`` is not a training run."""
    path = os.path.join(model_dir, MODEL_CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{path} not found: --model_dir={model_dir!r} is not a keras_seg training directory. "
            "Train first with `python -m keras_seg.train --flagfile=...`."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def find_checkpoint(model_dir: str, which: str = "latest") -> str:
    """Returns the checkpoint prefix for ``which`` = ``latest``, ``best`` or an explicit prefix.

    Raises:
      CheckpointError: when there is no such checkpoint, naming the directory.
    """
    if which in ("latest", "best"):
        d = os.path.join(model_dir, LATEST_DIR if which == "latest" else BEST_DIR)
        path = tf.train.latest_checkpoint(d) if os.path.isdir(d) else None
        if path is None:
            raise CheckpointError(
                f"No {which} checkpoint in {d}: --model_dir={model_dir!r} has not been trained "
                f"{'(or has not been evaluated yet)' if which == 'best' else ''}. Train first, "
                "or pass --checkpoint=latest|best|PATH."
            )
        return path
    if not tf.io.gfile.exists(which + ".index"):
        raise CheckpointError(f"Checkpoint {which!r} not found (no {which}.index).")
    return which


def build_full_model(model_config: Dict[str, Any], input_shape=(None, None, 3)) -> keras.Model:
    """Builds the model of a ``model_config.json`` dict with every training output."""
    spec = get_spec(model_config["model"])
    options = dict(model_config.get("model_options", {}))
    if spec.aux_weights:
        options["aux_outputs"] = True  # the training graph: same variables, outputs[0] = logits
    return spec.builder(model_config["num_classes"], input_shape=tuple(input_shape), **options)


def logits_only(model: keras.Model) -> keras.Model:
    """The single-output (logits) view of a model with auxiliary outputs; else ``model``."""
    if isinstance(model.output, (list, tuple)):
        return keras.Model(model.input, model.outputs[0], name=model.name)
    return model


def load_trained_model(model_dir: str, checkpoint: str = "latest",
                       input_shape=(None, None, 3)) -> Tuple[keras.Model, Dict[str, Any], str]:
    """Rebuilds the model of ``model_dir`` and restores a checkpoint's weights.

    Returns:
      ``(model, model_config, checkpoint_path)``; ``model`` has one output, the logits.
    """
    config = read_model_config(model_dir)
    path = find_checkpoint(model_dir, checkpoint)
    full = build_full_model(config, input_shape)
    status = tf.train.Checkpoint(model=full).read(path)
    status.expect_partial()  # the optimizer state is not needed for inference
    status.assert_existing_objects_matched()
    return logits_only(full), config, path


def optional_best_metrics(model_dir: str) -> Optional[Dict[str, Any]]:
    """The ``best/best.json`` record, if any."""
    path = os.path.join(model_dir, BEST_DIR, "best.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None
