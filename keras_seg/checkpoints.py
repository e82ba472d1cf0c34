"""Rebuilding a trained model from its ``model_dir`` (the layout: :mod:`keras_seg.layout`)."""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from keras_seg.fileio import atomic_write_json
from keras_seg.layout import ModelDir
from keras_seg.precision import precision_scope
from keras_seg.registry import get_spec


class CheckpointError(ValueError):
    """A model_dir has no usable checkpoint or config."""


def write_model_config(model_dir: str, config: Dict[str, Any]) -> None:
    """Writes ``model_config.json`` atomically."""
    atomic_write_json(ModelDir(model_dir).model_config, config)


def read_model_config(model_dir: str) -> Dict[str, Any]:
    """Reads ``model_config.json``, with a clear error when ``model_dir`` is not a training run."""
    path = ModelDir(model_dir).model_config
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{path} not found: --model_dir={model_dir!r} is not a keras_seg training directory. "
            "Train first with `python -m keras_seg.train --flagfile=...`."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_preprocessing(config: Dict[str, Any]) -> str:
    """The input preprocessing of a ``model_config.json`` dict, checked.

    Files written before the key existed trained with the default (``"imagenet"``).
    """
    from keras_seg.data.preprocess import DEFAULT, check_preprocessing  # pylint: disable=import-outside-toplevel

    return check_preprocessing(config.get("preprocessing", DEFAULT), "model_config.json preprocessing")


def find_checkpoint(model_dir: str, which: str = "latest") -> str:
    """Returns the checkpoint prefix for ``which`` = ``latest``, ``best`` or an explicit prefix.

    Raises:
      CheckpointError: when there is no such checkpoint, naming the directory.
    """
    if which in ("latest", "best"):
        d = ModelDir(model_dir).checkpoint_dir(which)
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


def error_line(e: BaseException) -> str:
    """The first informative line of an exception's message (TF errors start with op traces)."""
    text = (getattr(e, "message", None) or str(e) or "").strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Graph execution error", "Detected at node", "File ")) \
                and not line.startswith("[[") and line != "Traceback (most recent call last):":
            return line[:300]
    return type(e).__name__


def restore_newest(make_checkpoint: Callable[[str], tf.train.Checkpoint], directory: str,
                   log: Callable[[str], None] = print) -> Tuple[Optional[str], List[str]]:
    """Restores the newest checkpoint of ``directory`` that reads back whole.

    The candidates are those of the ``checkpoint`` state file, newest first. One that cannot
    be restored (a truncated or corrupt ``.index`` or ``.data`` file, a missing file) is
    skipped, and a warning names it and the checkpoint restored instead. Each attempt uses a
    fresh ``tf.train.Checkpoint`` from ``make_checkpoint``, and a successful restore assigns
    every variable, so nothing of a failed attempt survives.

    Args:
      make_checkpoint: given a checkpoint path, returns a new ``tf.train.Checkpoint`` over
        the objects to restore from it.
      directory: a ``tf.train.CheckpointManager`` directory.
      log: where the warning goes.

    Returns:
      ``(restored path or None when the directory holds no checkpoint, skipped paths)``.

    Raises:
      CheckpointError: checkpoints are listed but none can be restored.
    """
    state = tf.train.get_checkpoint_state(directory) if tf.io.gfile.isdir(directory) else None
    if state is None or not state.model_checkpoint_path:
        return None, []
    latest = state.model_checkpoint_path
    candidates = [latest] + [p for p in reversed(state.all_model_checkpoint_paths) if p != latest]
    bad: List[Tuple[str, str]] = []
    for path in candidates:
        try:
            status = make_checkpoint(path).read(path)
            status.assert_existing_objects_matched()
            status.expect_partial()  # values without a Python object yet (save_counter) are fine
        # TF reports damage as OpError (DataLoss, NotFound, ...) or, from its reader, IndexError.
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, OSError) as e:
            bad.append((path, error_line(e)))
            continue
        if bad:
            log(f"warning: checkpoint {bad[0][0]} cannot be restored ({bad[0][1]}); resuming from the "
                f"previous one, {path}" + (f" (also skipped: {[b[0] for b in bad[1:]]})" if bad[1:] else "") + ".")
        return path, [b[0] for b in bad]
    raise CheckpointError(
        f"None of the checkpoints in {directory} can be restored: "
        + "; ".join(f"{p}: {why}" for p, why in bad)
        + ". Move the directory away to train from scratch."
    )


def set_aside_checkpoints(directory: str, bad: List[str], keep: str) -> None:
    """Renames the files of the ``bad`` checkpoints to ``*.corrupt`` and makes ``keep`` the latest.

    The ``checkpoint`` state file is rewritten (atomically) without them, so that a later
    save, ``find_checkpoint`` and ``evaluate`` never pick them up.
    """
    for prefix in bad:
        for f in glob.glob(glob.escape(prefix) + ".index") + glob.glob(glob.escape(prefix) + ".data-*"):
            os.replace(f, f + ".corrupt")
    state = tf.train.get_checkpoint_state(directory)
    stamps = list(state.all_model_checkpoint_timestamps) or [state.last_preserved_timestamp + 1.0] * len(
        state.all_model_checkpoint_paths)
    kept = [(p, t) for p, t in zip(state.all_model_checkpoint_paths, stamps) if p not in bad]
    tf.compat.v1.train.update_checkpoint_state(  # written atomically (temp file + rename)
        directory, os.path.basename(keep),
        all_model_checkpoint_paths=[os.path.basename(p) for p, _ in kept],
        all_model_checkpoint_timestamps=[t for _, t in kept],
        last_preserved_timestamp=state.last_preserved_timestamp,
    )


def remove_partial_writes(directory: str) -> List[str]:
    """Deletes what a checkpoint write killed half-way leaves behind; returns the paths.

    TF writes ``<prefix>_temp/`` shards and ``*.tempstate*`` files, then renames them into
    place, and ``CheckpointManager`` updates the ``checkpoint`` state file (through a
    ``checkpoint.tmp*`` file and a rename) only after that; so these leftovers are never
    referenced, only wasted space. Call it while no other process writes to ``directory``.
    """
    pattern = [os.path.join(glob.escape(directory), p) for p in ("*_temp", "*.tempstate*", "checkpoint.tmp*")]
    found = sorted(set(sum((glob.glob(p) for p in pattern), [])))
    for path in found:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return found


def build_full_model(model_config: Dict[str, Any], input_shape=(None, None, 3),
                     mixed_precision: str = "float32") -> keras.Model:
    """Builds the model of a ``model_config.json`` dict with every training output.

    ``mixed_precision`` (``float32``, ``bfloat16`` or ``float16``) is the compute precision
    (:func:`keras_seg.precision.precision_scope`); the variables, hence the checkpoint
    layout, are float32 under all three.
    """
    spec = get_spec(model_config["model"])
    options = dict(model_config.get("model_options", {}))
    if spec.aux_weights:
        options["aux_outputs"] = True  # the training graph: same variables, outputs[0] = logits
    with precision_scope(mixed_precision):
        return spec.build(model_config["num_classes"], input_shape, **options)


def logits_only(model: keras.Model) -> keras.Model:
    """The single-output (logits) view of a model with auxiliary outputs; else ``model``."""
    if isinstance(model.output, (list, tuple)):
        return keras.Model(model.input, model.outputs[0], name=model.name)
    return model


def inference_model(full: keras.Model, model_config: Dict[str, Any], input_shape=(None, None, 3),
                    mixed_precision: str = "float32",
                    inference_options: Optional[Dict[str, Any]] = None) -> keras.Model:
    """The inference (logits) model of a restored training graph ``full``.

    Models whose registry spec declares ``inference_options`` (U-Net++'s ``head``) are rebuilt
    without auxiliary outputs, with ``inference_options`` over the trained options, and take
    their weights from ``full`` layer by layer, by name: every weighted layer of the rebuilt
    model must exist in ``full`` with the same shapes. Other models are ``full``'s first output.

    Raises:
      ValueError: an option the model does not declare as an inference option, or a value
        its builder refuses.
    """
    spec = get_spec(model_config["model"])
    inference_options = dict(inference_options or {})
    bad = sorted(set(inference_options) - set(spec.inference_options))
    if bad:
        allowed = list(spec.inference_options) or "none"
        raise ValueError(f"model {spec.name!r} has no inference option {bad}: its inference options are "
                         f"{allowed} (other options change the trained variables). Received: {inference_options!r}")
    if not spec.inference_options:
        return logits_only(full)
    options = {**dict(model_config.get("model_options", {})), **inference_options}
    if "aux_outputs" in spec.option_names():
        options["aux_outputs"] = False
    with precision_scope(mixed_precision):
        model = spec.build(model_config["num_classes"], input_shape, **options)
    for layer in model.layers:
        values = layer.get_weights()
        if not values:
            continue
        source = full.get_layer(layer.name)  # the same builder names every layer alike
        if [tuple(v.shape) for v in source.get_weights()] != [tuple(v.shape) for v in values]:
            raise ValueError(f"layer {layer.name!r} of the inference graph does not match the trained one")
        layer.set_weights(source.get_weights())
    return model


def load_trained_model(model_dir: str, checkpoint: str = "latest", input_shape=(None, None, 3),
                       mixed_precision: str = "float32",
                       inference_options: Optional[Dict[str, Any]] = None,
                       ) -> Tuple[keras.Model, Dict[str, Any], str]:
    """Rebuilds the model of ``model_dir`` and restores a checkpoint's weights.

    Args:
      model_dir: a training directory.
      checkpoint: ``latest``, ``best`` or a checkpoint path prefix.
      input_shape: ``(H, W, C)`` of the rebuilt model.
      mixed_precision: compute precision of the rebuilt model (``float32``, ``bfloat16`` or
        ``float16``), whatever the run was trained under: checkpoints hold float32 variables.
      inference_options: values of the model's inference options (:func:`inference_model`),
        e.g. ``{"head": "L2"}`` for a pruned U-Net++; the returned config records them.

    Returns:
      ``(model, model_config, checkpoint_path)``; ``model`` has one output, the logits.
    """
    config = read_model_config(model_dir)
    path = find_checkpoint(model_dir, checkpoint)
    full = build_full_model(config, input_shape, mixed_precision)
    status = tf.train.Checkpoint(model=full).read(path)
    status.expect_partial()  # the optimizer state is not needed for inference
    status.assert_existing_objects_matched()
    model = inference_model(full, config, input_shape, mixed_precision, inference_options)
    if inference_options:
        config = {**config, "model_options": {**config.get("model_options", {}), **inference_options}}
    return model, config, path


def optional_best_metrics(model_dir: str) -> Optional[Dict[str, Any]]:
    """The ``best/best.json`` record, if any."""
    path = ModelDir(model_dir).best_json
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None
