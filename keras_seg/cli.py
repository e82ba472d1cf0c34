"""``keras-seg``: one command for every job, each subcommand the module it names.

::

    keras-seg prepare camvid --src=CamVid --out=data/camvid   # data_prep.camvid
    keras-seg verify --data_dir=data/camvid                    # data_prep.verify
    keras-seg train --flagfile=configs/zoo/enet_camvid.cfg      # keras_seg.train
    keras-seg evaluate --model_dir=runs/x --split=test          # keras_seg.evaluate
    keras-seg predict --pretrained=enet_camvid --out=p a.png    # keras_seg.predict
    keras-seg export --model_dir=runs/x --out=export            # keras_seg.export
    keras-seg benchmark --help                                  # benchmarks (checkout only)
    keras-seg models [NAME]                                     # models, options, weights
    keras-seg prepare shapes_instances --out_dir=data/shapes_instances   # data_prep.shapes_instances
    keras-seg detect-train --flagfile=configs/detection/shapes_maskrcnn.cfg  # keras_seg.detection.train
    keras-seg detect-evaluate --model_dir=runs/shapes_maskrcnn  # keras_seg.detection.evaluate
    keras-seg detect-predict --model_dir=runs/x --out_dir=p a.png  # keras_seg.detection.predict
    keras-seg detect-export --model_dir=runs/x --out_dir=e      # keras_seg.detection.export

A subcommand runs its module exactly as ``python -m <module>`` does, with the same flags
(``keras-seg <command> --help`` lists them), so both spellings stay equivalent. ``benchmark``
runs the repository's ``benchmarks/`` suite (``python -m benchmarks``) through the forwarder
:mod:`keras_seg.benchmark`; the benchmarks ship with the source repository, not the package.

Flagfiles: a relative ``--flagfile`` path inside a flagfile is looked up next to the file
that names it first, then in the working directory (where this repository's configs keep
their ``configs/base/...`` paths). Every command expands flagfiles this way before absl
reads the flags, ``python -m keras_seg.train`` included; a missing flagfile is an error
naming the file that referred to it.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
from typing import Dict, List, Optional, Sequence, Tuple

#: subcommand -> (module run as ``__main__``, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "train": ("keras_seg.train", "train a model from flags or a --flagfile (configs/*.cfg)"),
    "evaluate": ("keras_seg.evaluate", "score a trained model_dir on a split: IoU table, JSON, pictures"),
    "predict": ("keras_seg.predict", "label images with a model_dir, shipped weights or a .tflite file"),
    "export": ("keras_seg.export", "write a SavedModel and TFLite models with a parity report"),
    "verify": ("data_prep.verify", "check a converted dataset: every record decodes, labels in range"),
    "benchmark": ("keras_seg.benchmark", "time models and the input pipeline (a source checkout's benchmarks/)"),
    "plot": ("keras_seg.plot", "draw learning curves (loss, learning rate, val mIoU) of training runs"),
    "package": ("keras_seg.pretrained", "package a trained run as shipped weights (the model zoo's last step)"),
    "detect-train": ("keras_seg.detection.train", "train Mask R-CNN on an instance dataset (configs/detection/*.cfg)"),
    "detect-evaluate": ("keras_seg.detection.evaluate", "box and mask AP (pycocotools) of a Mask R-CNN model_dir"),
    "detect-predict": ("keras_seg.detection.predict", "draw the instances Mask R-CNN finds in images, plus JSON"),
    "detect-export": ("keras_seg.detection.export", "Mask R-CNN SavedModel, builtin-ops TFLite and a parity report"),
}
#: ``prepare <dataset>`` -> converter module.
DATASETS: Dict[str, str] = {
    "camvid": "data_prep.camvid",
    "voc": "data_prep.voc",
    "cityscapes": "data_prep.cityscapes",
    "isbi": "data_prep.isbi",
    "folder": "data_prep.folder",
    "shapes": "data_prep.shapes",
    # Instance segmentation (keras_seg.detection.data reads these):
    "coco": "data_prep.coco",
    "cityscapes_instances": "data_prep.cityscapes_instances",
    "voc_instances": "data_prep.voc_instances",
    "shapes_instances": "data_prep.shapes_instances",
}
_FLAGFILE = "--flagfile="


class FlagfileError(ValueError):
    """A ``--flagfile`` that cannot be found or read."""


def _read_lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as e:
        raise FlagfileError(f"cannot read flagfile {path}: {e.strerror}") from e


def _resolve(path: str, referrer: Optional[str]) -> str:
    """The file a ``--flagfile`` value names: next to ``referrer`` first, then from the cwd."""
    path = os.path.expanduser(path)
    candidates = [path] if os.path.isabs(path) or referrer is None else [
        os.path.join(os.path.dirname(referrer), path), path]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    where = f" (named in {referrer})" if referrer else ""
    raise FlagfileError(f"flagfile {path!r}{where} not found; looked at {candidates}. "
                        "Give a path relative to the flagfile that names it, or to the working directory.")


def expand_flagfiles(argv: Sequence[str], referrer: Optional[str] = None, _seen: Tuple[str, ...] = ()) -> List[str]:
    """``argv`` with every ``--flagfile=F`` replaced by F's flags, recursively.

    Lines are flags, one per line; blank lines and lines starting with ``#`` or ``//`` are
    skipped, as absl does. Nested relative paths resolve next to the naming file first.

    Raises:
      FlagfileError: a missing or unreadable flagfile, or one that includes itself.
    """
    out: List[str] = []
    for arg in argv:
        if not arg.startswith(_FLAGFILE):
            out.append(arg)
            continue
        for name in filter(None, arg[len(_FLAGFILE):].split(",")):
            path = _resolve(name, referrer)
            key = os.path.realpath(path)
            if key in _seen:
                raise FlagfileError(f"flagfile {path} includes itself (through {' -> '.join(_seen)}).")
            lines = [line.strip() for line in _read_lines(path)]
            flags = [line for line in lines if line and not line.startswith(("#", "//"))]
            out.extend(expand_flagfiles(flags, path, _seen + (key,)))
    return out


@contextlib.contextmanager
def user_errors(*errors: type):
    """Turns the ``errors`` raised inside into one ``error: ...`` line on stderr and exit status 1.

    The commands' ``main`` functions run their work under it, so a user's mistake (a bad flag
    value, a missing file, a diverged run) reads as a message naming the value and the fix, not
    a traceback. ``keras_seg.train`` keeps its own handler: a lost worker exits with the
    restart code instead of 1.
    """
    try:
        yield
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def flagfile_argv(argv: Optional[Sequence[str]] = None) -> List[str]:
    """``argv`` (default ``sys.argv``) with flagfiles expanded, for ``app.run(main, argv=...)``;
    a bad flagfile prints ``error: ...`` and exits with status 1."""
    with user_errors(FlagfileError):
        return expand_flagfiles(sys.argv if argv is None else argv)


def run_module(module: str, prog: str, argv: Sequence[str]) -> None:
    """Runs ``module`` as ``__main__`` with ``sys.argv = [prog, *argv]``; the module's own
    ``app.run`` expands the flagfiles (:func:`flagfile_argv`)."""
    sys.argv = [prog] + list(argv)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def describe_models(names: Sequence[str] = ()) -> str:
    """The text of ``keras-seg models``: each model, its paper, options and shipped weights."""
    from keras_seg.pretrained import available, read_info  # pylint: disable=import-outside-toplevel
    from keras_seg.registry import get_spec, list_models  # pylint: disable=import-outside-toplevel

    shipped: Dict[str, List[str]] = {}
    for weights in available():
        shipped.setdefault(read_info(weights)["model"], []).append(weights)
    lines: List[str] = []
    for name in names or list_models():
        spec = get_spec(name)
        lines.append(f"{name}: {spec.paper}")
        defaults = spec.defaults()
        options = ", ".join(f"{k}={defaults[k]!r}" for k in spec.option_names()
                            if k in defaults and k not in ("weights", "name", "aux_outputs"))
        lines.append(f"  options: {options}")
        if "backbone" in defaults:
            from keras_seg.models.backbones import get_backbone, list_backbones  # pylint: disable=import-outside-toplevel

            family = get_backbone(defaults["backbone"]).family
            lines.append(f"  backbone: one of {', '.join(list_backbones(family))}")
        if spec.aux_weights:
            lines.append(f"  auxiliary outputs (loss weight): {dict(spec.aux_weights)}")
        if spec.inference_options:
            lines.append(f"  inference options (change after training): {', '.join(spec.inference_options)}")
        if name in shipped:
            lines.append(f"  shipped weights: {', '.join(shipped[name])}")
    return "\n".join(lines)


def usage() -> str:
    width = max(map(len, list(COMMANDS) + ["prepare", "models"]))
    rows = [f"  {'prepare':<{width}}  convert a dataset to TFRecords: prepare {{{','.join(DATASETS)}}} --help"]
    rows += [f"  {cmd:<{width}}  {help_}" for cmd, (_, help_) in COMMANDS.items()]
    rows.append(f"  {'models':<{width}}  list the models, their options and the shipped weights: models [NAME ...]")
    return "usage: keras-seg <command> [flags]\n\ncommands:\n" + "\n".join(rows) + \
        "\n\n`keras-seg <command> --help` lists a command's flags."


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``keras-seg`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "models":
        from keras_seg.registry import list_models  # pylint: disable=import-outside-toplevel

        unknown = [n for n in rest if n not in list_models()]
        if unknown:
            print(f"error: unknown model(s) {unknown}; known: {', '.join(list_models())}", file=sys.stderr)
            sys.exit(1)
        print(describe_models(rest))
        return
    if command == "prepare":
        if not rest or rest[0] not in DATASETS:
            got = f" Received: {rest[0]!r}." if rest else ""
            print(f"error: keras-seg prepare needs a dataset, one of {', '.join(DATASETS)}.{got}", file=sys.stderr)
            sys.exit(2)
        run_module(DATASETS[rest[0]], f"keras-seg prepare {rest[0]}", rest[1:])
        return
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}.\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    run_module(COMMANDS[command][0], f"keras-seg {command}", rest)


if __name__ == "__main__":
    main()
