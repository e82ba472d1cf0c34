"""The training ``model_dir``: the run's ``model_config.json``, checks before training, and
writes that report their failure.

Every write into ``model_dir`` goes through :func:`writing`, so a full disk or a lost
permission ends the run with a :class:`ModelDirWriteError` naming the path, the step and
the last good checkpoint, instead of a bare ``OSError``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Dict, Iterator, Optional

import numpy as np
import tensorflow as tf

from keras_seg.checkpoints import error_line, read_model_config, write_model_config
from keras_seg.data.preprocess import DEFAULT as DEFAULT_PREPROCESSING
from keras_seg.data.preprocess import preprocessing_for
from keras_seg.fileio import atomic_write_text
from keras_seg.layout import ModelDir
from keras_seg.options import TrainConfig


class ModelDirWriteError(OSError):
    """``model_dir`` cannot be written: read-only, missing permissions or a full disk."""


def make_model_config(cfg: TrainConfig, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """The ``model_config.json`` of a run: what evaluate, predict and export rebuild from."""
    return {
        "model": cfg.model, "num_classes": cfg.num_classes,
        "model_options": {k: v for k, v in cfg.model_options.items() if k != "aux_outputs"},
        "class_names": manifest["class_names"], "palette": manifest["palette"],
        "ignore_label": int(manifest["ignore_label"]),
        "dataset": manifest.get("dataset", ""), "data_dir": os.path.abspath(cfg.data_dir),
        "crop_size": list(cfg.crop_size), "train_split": cfg.train_split,
        "mixed_precision": cfg.mixed_precision,
        "preprocessing": preprocessing_for(cfg.model_options, cfg.preprocessing),
        "eval_scales": [float(v) for v in cfg.eval_scales],
        **({"init_from": os.path.abspath(cfg.init_from), "init_checkpoint": cfg.init_checkpoint} if cfg.init_from else {}),
    }


def check_writable(model_dir: str) -> None:
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-probe-{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ModelDirWriteError(f"--model_dir {model_dir} is not writable ({e.strerror}). Choose another directory.") from e


def check_free_space(model_dir: str, variables, copies: int) -> None:
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
def writing(what: str, path: str, step: int, last_checkpoint: Optional[str]) -> Iterator[None]:
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


def prepare_model_dir(cfg: TrainConfig, model_config: Dict[str, Any], flags_text: Optional[str]) -> None:
    """Chief: refuses a model_dir of another model; writes model_config.json and flags.txt."""
    existing = ModelDir(cfg.model_dir).model_config
    if os.path.isfile(existing):
        old = read_model_config(cfg.model_dir)
        old.setdefault("preprocessing", DEFAULT_PREPROCESSING)  # written before the key existed
        for key in ("model", "num_classes", "model_options", "preprocessing"):
            if old.get(key) != model_config[key]:
                raise ValueError(
                    f"--model_dir {cfg.model_dir} holds a run with {key}={old.get(key)!r}, not "
                    f"{model_config[key]!r}. Use a new --model_dir to train a different model."
                )
    with writing("", existing, 0, None):
        write_model_config(cfg.model_dir, model_config)
    if flags_text is not None:
        path = ModelDir(cfg.model_dir).flags_txt
        with writing("", path, 0, None):
            atomic_write_text(path, flags_text)
