r"""Trained weights shipped with the package (the CamVid model zoo, ``docs/model_zoo.md``).

Each entry ``<model>_<dataset>`` is two files in this folder: ``<name>.weights.h5`` (Keras
weights of the inference model) and ``<name>.json``, which carries everything needed to use
them: the builder options, the class names and palette, the input preprocessing, the
measured val and test scores, how they were trained and the licence. ::

    model = keras_seg.build_model("enet", num_classes=11, weights="camvid")
    model, info = keras_seg.pretrained.load_pretrained("enet_camvid")
    python -m keras_seg.predict --pretrained=enet_camvid --out=preds IMAGE ...

The CamVid weights are trained on CamVid, whose licence is CC BY-NC: they are for
non-commercial research use.

Packaging a trained run (the zoo's last step)::

    python -m keras_seg.pretrained --model_dir=runs/zoo/enet_camvid --name=enet_camvid \
        --checkpoint=best --metrics=val:VAL.json,test:TEST.json --trained=KEY=VALUE ...
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

PRETRAINED_DIR = os.path.dirname(os.path.abspath(__file__))
INFO_KEYS = ("name", "model", "num_classes", "model_options", "preprocessing", "dataset", "class_names",
             "palette", "ignore_label", "weights_file", "sha256", "parameters", "metrics", "licence")
CAMVID_LICENCE = ("Trained on CamVid (Brostow et al.), licensed CC BY-NC: these weights are for "
                  "non-commercial research use.")


def available(directory: str = PRETRAINED_DIR) -> List[str]:
    """Names of the shipped weights, e.g. ``["enet_camvid"]``."""
    return sorted(f[: -len(".json")] for f in os.listdir(directory) if f.endswith(".json"))


def resolve(model: str, weights: str, directory: str = PRETRAINED_DIR) -> str:
    """The entry name of ``build_model(model, weights=weights)``: ``weights`` may be a dataset
    (``"camvid"`` -> ``"enet_camvid"``) or a full entry name. Raises ValueError listing them."""
    names = available(directory)
    for name in (f"{model}_{weights}", weights):
        if name in names and read_info(name, directory)["model"] == model:
            return name
    own = [n for n in names if read_info(n, directory)["model"] == model]
    raise ValueError(
        f"no shipped weights {weights!r} for model {model!r}. "
        + (f"Shipped for {model}: {[n[len(model) + 1:] if n.startswith(model + '_') else n for n in own]}. "
           if own else f"Nothing is shipped for {model}. ")
        + f"All shipped weights: {names}. Received: weights={weights!r}"
    )


def read_info(name: str, directory: str = PRETRAINED_DIR) -> Dict[str, Any]:
    """The ``<name>.json`` record, checked; ValueError naming the file and what is wrong."""
    names = available(directory)
    if name not in names:
        raise ValueError(f"unknown shipped weights {name!r}. Available: {names}. Received: {name!r}")
    path = os.path.join(directory, f"{name}.json")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the weights record ({e}); reinstall keras_seg.") from e
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise ValueError(f"{path} lacks {missing}; reinstall keras_seg.")
    if len(info["class_names"]) != info["num_classes"] or len(info["palette"]) != info["num_classes"]:
        raise ValueError(f"{path}: class_names and palette must list num_classes={info['num_classes']} entries.")
    return info


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_path(name: str, directory: str = PRETRAINED_DIR) -> str:
    """The checked ``.weights.h5`` file of entry ``name`` (its SHA-256 must match the record)."""
    info = read_info(name, directory)
    path = os.path.join(directory, info["weights_file"])
    if not os.path.isfile(path):
        raise ValueError(f"{path} is missing: the package install is incomplete; reinstall keras_seg.")
    got = _sha256(path)
    if got != info["sha256"]:
        raise ValueError(f"{path} is corrupt: SHA-256 {got}, but {name}.json records {info['sha256']}. "
                         "Reinstall keras_seg (a Git LFS pointer or a truncated download gives this).")
    return path


def recorded_scales(info: Dict[str, Any]) -> Tuple[float, ...]:
    """The input scales entry ``info`` was selected and scored at (``(1.0,)``: the image as it is).

    A model trained on half-resolution crops records ``(0.5,)``: prediction and evaluation then
    resize each image by 0.5 and the logits back to full size (:mod:`keras_seg.inference`).
    """
    return tuple(float(v) for v in info.get("scales", (1.0,)))


def load_weights_into(model, name: str, directory: str = PRETRAINED_DIR) -> None:
    """Loads entry ``name``'s weights into ``model`` (built with the entry's model and options)."""
    model.load_weights(weights_path(name, directory))


def load_pretrained(name: str, input_shape=(None, None, 3), directory: str = PRETRAINED_DIR):
    """``(model, info)``: the inference model of entry ``name`` with its weights, and its record.

    ``info`` has the keys of a ``model_config.json`` that prediction and export read
    (``model``, ``num_classes``, ``model_options``, ``class_names``, ``palette``,
    ``ignore_label``, ``preprocessing``, ``dataset``) plus ``metrics`` and ``licence``.
    """
    from keras_seg.registry import get_spec  # pylint: disable=import-outside-toplevel

    info = read_info(name, directory)
    spec = get_spec(info["model"])
    model = spec.build(info["num_classes"], input_shape, **info["model_options"])
    load_weights_into(model, name, directory)
    return model, info


def _step_of(checkpoint_path: str) -> Optional[int]:
    tail = checkpoint_path.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def package(model_dir: str, name: str, checkpoint: str = "best", metrics: Optional[Dict[str, str]] = None,
            trained: Optional[Dict[str, Any]] = None, licence: str = CAMVID_LICENCE,
            directory: str = PRETRAINED_DIR, scales: Optional[Tuple[float, ...]] = None) -> Tuple[str, str]:
    """Writes ``<name>.weights.h5`` and ``<name>.json`` from a training run; returns both paths.

    Args:
      model_dir: the training directory.
      name: entry name, ``<model>_<dataset>``.
      checkpoint: ``best``, ``latest`` or a prefix.
      metrics: split -> path of an ``evaluate`` JSON of this checkpoint; their ``mean_iu``,
        ``acc`` and per-class ``iu`` go into the record.
      trained: how it was trained (config, wall hours, machine), copied into the record.
      licence: the weights' licence line.
      directory: where to write (the package folder by default).
      scales: the inference scales the metrics were measured at (default: the run's
        ``eval_scales`` from ``model_config.json``, else 1); prediction with the entry uses them.
    """
    from keras_seg.checkpoints import find_checkpoint, load_trained_model, model_preprocessing  # pylint: disable=import-outside-toplevel
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel
    from keras_seg.registry import get_spec  # pylint: disable=import-outside-toplevel

    trained_model, config, path = load_trained_model(model_dir, checkpoint)
    if not name.startswith(config["model"] + "_"):
        raise ValueError(f"an entry name is <model>_<dataset>, and {model_dir} holds {config['model']}. "
                         f"Received: name={name!r}")
    inference = get_spec(config["model"]).build(config["num_classes"], (None, None, 3),
                                                  **config.get("model_options", {}))
    by_path = {v.path: v for v in trained_model.weights}
    missing = [v.path for v in inference.weights if v.path not in by_path]
    if missing:
        raise ValueError(f"the inference model of {config['model']} has weights the checkpoint lacks: {missing[:5]}")
    for v in inference.weights:
        v.assign(by_path[v.path])
    record_metrics = {}
    for split, metrics_path in (metrics or {}).items():
        with open(metrics_path, encoding="utf-8") as f:
            m = json.load(f)
        if m.get("checkpoint") not in (None, path):
            raise ValueError(f"{metrics_path} scores {m.get('checkpoint')}, not the packaged {path}.")
        record_metrics[split] = {k: m[k] for k in ("mean_iu", "acc", "acc_cls", "fwavacc", "iu") if k in m}
    weights_file = f"{name}.weights.h5"
    dest = os.path.join(directory, weights_file)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{weights_file}")
    inference.save_weights(tmp)
    os.replace(tmp, dest)
    info = {
        "name": name, "model": config["model"], "num_classes": int(config["num_classes"]),
        "model_options": config.get("model_options", {}), "preprocessing": model_preprocessing(config),
        "dataset": config.get("dataset", ""), "class_names": config["class_names"], "palette": config["palette"],
        "ignore_label": int(config["ignore_label"]), "weights_file": weights_file, "sha256": _sha256(dest),
        "parameters": int(inference.count_params()), "checkpoint": os.path.relpath(path, model_dir),
        "checkpoint_step": _step_of(find_checkpoint(model_dir, checkpoint)),
        "metrics": record_metrics, "trained": dict(trained or {}), "licence": licence,
        "scales": [float(v) for v in (scales or config.get("eval_scales") or (1.0,))],
    }
    info_path = os.path.join(directory, f"{name}.json")
    atomic_write_json(info_path, info)
    return dest, info_path
