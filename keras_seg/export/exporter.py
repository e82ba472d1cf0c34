"""The export itself: resolve and check everything, write each format under a temporary name,
add the parity report, then rename the whole version into place (:func:`export`)."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Dict, List

from keras_seg.export.config import (
    _NAME_RE,
    SAVED_MODEL,
    ExportConfig,
    ExportPlan,
    ExportResult,
)
from keras_seg.export.report import write_parity_report
from keras_seg.export.saved_model import model_metadata, write_saved_model
from keras_seg.export.tflite import convert_tflite, representative_tiles, write_tflite_source

def existing_versions(out: str, model_name: str) -> List[int]:
    """Versions already in ``out``: numeric ``NAME/N`` directories and ``NAME_vN`` directories."""
    found = set()
    serving = os.path.join(out, model_name)
    if os.path.isdir(serving):
        found.update(int(d) for d in os.listdir(serving) if d.isdigit())
    if os.path.isdir(out):
        prefix = f"{model_name}_v"
        found.update(int(d[len(prefix):]) for d in os.listdir(out) if d.startswith(prefix) and d[len(prefix):].isdigit())
    return sorted(found)


def dir_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def _check_dataset(cfg: ExportConfig, config: Dict[str, Any], data_dir, tflite_kinds: List[str]) -> None:
    """Refuses a missing dataset, or one of other classes or without the splits, where parity or int8 needs one."""
    from keras_seg.data.manifest import load_manifest  # pylint: disable=import-outside-toplevel

    if not (cfg.parity_images > 0 or "int8" in tflite_kinds):
        return
    if not data_dir:
        raise ValueError("no dataset for the parity report / int8 calibration: pass --data_dir "
                         "(or --parity_images=0 without tflite_int8).")
    manifest = load_manifest(data_dir)
    if manifest["num_classes"] != config["num_classes"]:
        raise ValueError(f"{data_dir} has num_classes={manifest['num_classes']} but the model was trained "
                         f"with {config['num_classes']}; pass the --data_dir it was trained on.")
    wanted = {"--parity_split": cfg.parity_split if cfg.parity_images > 0 else None,
              "--int8_split": (cfg.int8_split or config.get("train_split", "train")) if "int8" in tflite_kinds else None}
    for flag, split in wanted.items():
        if split is not None and split not in manifest["splits"]:
            raise ValueError(f"{flag}={split!r} is not a split of {data_dir}; it has "
                             f"{sorted(manifest['splits'])}.")


def _plan(cfg: ExportConfig, config: Dict[str, Any]) -> ExportPlan:
    """Resolves the name, version, places, TFLite size and dataset; refuses what would fail later."""
    name = cfg.model_name or os.path.basename(os.path.normpath(os.path.abspath(cfg.model_dir)))
    if not _NAME_RE.match(name):
        raise ValueError(f"the model_dir name {name!r} is not a usable model name; pass --model_name.")
    versions = existing_versions(cfg.out, name)
    version = cfg.version if cfg.version is not None else (versions[-1] + 1 if versions else 1)
    serving_dir = os.path.join(cfg.out, name, str(version))
    extras_dir = os.path.join(cfg.out, f"{name}_v{version}")
    for path in (serving_dir, extras_dir):
        if os.path.exists(path):
            raise ValueError(f"{path} already exists: version {version} of {name!r} was exported before. "
                             f"Pass a new --version (next free: {versions[-1] + 1}) or delete it.")
    tflite_kinds = [f[len("tflite_"):] for f in cfg.formats if f.startswith("tflite_")]
    size = tuple(cfg.tflite_size or config.get("crop_size") or ())
    if tflite_kinds and len(size) != 2:
        raise ValueError(f"{cfg.model_dir}/model_config.json has no crop_size; pass --tflite_size=H,W.")
    data_dir = cfg.data_dir or config.get("data_dir")
    _check_dataset(cfg, config, data_dir, tflite_kinds)
    return ExportPlan(name, version, serving_dir, extras_dir, tflite_kinds, size, data_dir)


def _tflite_sidecar(metadata: Dict[str, Any], kind: str, size) -> Dict[str, Any]:
    """The ``.json`` sidecar of a ``.tflite`` model, also embedded in its flatbuffer."""
    return dict(metadata, format=f"tflite_{kind}", input_size=list(size),
                inputs={"image": {"dtype": "uint8", "shape": [1, size[0], size[1], 3]}},
                outputs={"probabilities": {"dtype": "float32", "shape": [1, size[0], size[1], metadata["num_classes"]]},
                         "class_ids": {"dtype": "int32", "shape": [1, size[0], size[1]]}})


def _stage_tflite(model, metadata: Dict[str, Any], config: Dict[str, Any], cfg: ExportConfig, plan: ExportPlan,
                  staging: str, log: Callable[[str], None], t0: float) -> Dict[str, str]:
    """Writes each TFLite kind and its sidecar to ``staging/extras``: format -> staged ``.tflite``."""
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel
    from keras_seg.litert import embed_metadata, pad_color  # pylint: disable=import-outside-toplevel

    size = plan.size
    source = os.path.join(staging, "tflite_source")
    write_tflite_source(model, size, source, metadata["preprocessing"]["mode"])
    tiles = []
    if "int8" in plan.tflite_kinds:
        split = cfg.int8_split or config.get("train_split", "train")
        tiles = representative_tiles(plan.data_dir, split, size, cfg.int8_samples,
                                     color=pad_color(metadata["preprocessing"]))
        log(f"  int8 calibration: {len(tiles)} tiles {size[0]}x{size[1]} from {plan.data_dir} split {split!r}")

    def representative():
        for tile in tiles:
            yield {"image": tile[None]}

    staged = {}
    for kind in plan.tflite_kinds:
        sidecar = _tflite_sidecar(metadata, kind, size)
        # The sidecar's record also travels inside the flatbuffer (keras_seg.litert.embedded_metadata).
        blob = embed_metadata(convert_tflite(source, kind, representative), sidecar)
        path = os.path.join(staging, "extras", f"{plan.name}_{kind}.tflite")
        with open(path, "wb") as f:
            f.write(blob)
        atomic_write_json(os.path.join(staging, "extras", f"{plan.name}_{kind}.json"), sidecar)
        staged[f"tflite_{kind}"] = path
        log(f"  tflite_{kind:<8}{len(blob) / 1e6:8.3f} MB  ({time.time() - t0:.1f}s)")
    shutil.rmtree(source)
    return staged


def _stage_formats(model, metadata: Dict[str, Any], config: Dict[str, Any], cfg: ExportConfig, plan: ExportPlan,
                   staging: str, log: Callable[[str], None], t0: float) -> Dict[str, str]:
    """Writes every format asked for under ``staging``: format -> staged path, the SavedModel first."""
    staged: Dict[str, str] = {}
    if SAVED_MODEL in cfg.formats:
        stage_serving = os.path.join(staging, "serving")
        write_saved_model(model, metadata, stage_serving)
        staged[SAVED_MODEL] = stage_serving
        log(f"  saved_model   {dir_size(stage_serving) / 1e6:8.3f} MB  ({time.time() - t0:.1f}s)")
    if plan.tflite_kinds:
        staged.update(_stage_tflite(model, metadata, config, cfg, plan, staging, log, t0))
    return staged


def _publish(staged: Dict[str, str], plan: ExportPlan, staging: str) -> Dict[str, str]:
    """Renames the staged version into place: format -> final path."""
    paths = {}
    if SAVED_MODEL in staged:
        os.makedirs(os.path.dirname(plan.serving_dir), exist_ok=True)
        os.replace(staged[SAVED_MODEL], plan.serving_dir)
        paths[SAVED_MODEL] = plan.serving_dir
    os.replace(os.path.join(staging, "extras"), plan.extras_dir)
    for fmt, path in staged.items():
        if fmt != SAVED_MODEL:
            paths[fmt] = os.path.join(plan.extras_dir, os.path.basename(path))
    return paths


def export(cfg: ExportConfig, log: Callable[[str], None] = print) -> ExportResult:
    """Exports ``cfg.model_dir`` to ``cfg.out`` and writes the parity report.

    Args:
      cfg: a validated :class:`ExportConfig`.
      log: progress printer.

    Returns:
      An :class:`ExportResult`.

    Raises:
      CheckpointError: the model_dir has no config or no such checkpoint.
      ValueError: bad settings, an existing version, a missing dataset, a failed conversion.
    """
    from keras_seg.checkpoints import load_trained_model  # pylint: disable=import-outside-toplevel

    cfg.validate()
    t0 = time.time()
    # float32 whatever --mixed_precision the run was trained with: the checkpoint holds
    # float32 variables, and the exported signatures and TFLite models are float32 (uint8 in).
    model, config, ckpt = load_trained_model(cfg.model_dir, cfg.checkpoint, mixed_precision="float32",
                                             inference_options=cfg.inference_options)
    plan = _plan(cfg, config)
    metadata = model_metadata(config, os.path.abspath(ckpt))
    log(f"Exporting {ckpt} as {plan.name!r} version {plan.version} to {cfg.out}: {', '.join(cfg.formats)}")

    os.makedirs(cfg.out, exist_ok=True)
    staging = os.path.join(cfg.out, f".{plan.name}_v{plan.version}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, "extras"))
    try:
        staged = _stage_formats(model, metadata, config, cfg, plan, staging, log, t0)
        report, report_path, warnings = None, None, []
        if cfg.parity_images > 0:
            sizes = {fmt: dir_size(p) / 1e6 for fmt, p in staged.items()}
            report, report_path, warnings = write_parity_report(
                model, metadata, config, cfg, plan, ckpt, staged, sizes, os.path.join(staging, "extras"), log)
        paths = _publish(staged, plan, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"Wrote {', '.join(paths.values())} in {time.time() - t0:.1f}s.")
    return ExportResult(plan.version, paths, report_path, report, warnings)
