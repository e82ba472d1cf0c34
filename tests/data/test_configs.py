"""The dataset flagfiles written with the converters use only trainer flags and nest correctly."""

from __future__ import annotations

import pathlib

import pytest

from keras_seg.flags import TRAIN_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[2]
# The trainer's flags, from the trainer itself (a hard-coded copy went stale).
TRAINER_FLAGS = set(TRAIN_FLAGS) | {"flagfile"}
UNET_OPTS = {"base_width", "depth", "batch_norm", "dropout", "padding"}


def resolve(path: pathlib.Path) -> dict:
    """Flag values after nesting (last one wins; --model_opt accumulates)."""
    out: dict = {"model_opt": []}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert line.startswith("--") and "=" in line, f"{path}: bad line {line!r}"
        name, value = line[2:].split("=", 1)
        assert name in TRAINER_FLAGS, f"{path}: unknown flag --{name}"
        if name == "flagfile":
            nested = resolve(REPO / value)
            out["model_opt"] += nested.pop("model_opt")
            out.update(nested)
        elif name == "model_opt":
            out["model_opt"].append(value)
        else:
            out[name] = value
    return out


@pytest.mark.parametrize("name, expect", [
    ("unet_isbi.cfg", {"data_dir": "data/isbi", "num_classes": "2", "model": "unet", "momentum": "0.99",
                       "batch_size": "1", "crop_size": "512,512"}),
    ("unet_camvid.cfg", {"data_dir": "data/camvid", "num_classes": "11", "model": "unet",
                         "class_weights": "median_frequency", "crop_size": "352,480"}),
])
def test_dataset_configs(name, expect):
    flags = resolve(REPO / "configs" / name)
    assert {k: flags[k] for k in expect} == expect
    opts = dict(o.split("=", 1) for o in flags["model_opt"])
    assert set(opts) <= UNET_OPTS
    h, w = (int(v) for v in flags["crop_size"].split(","))
    depth = int(opts.get("depth", 4))
    assert h % 2**depth == 0 and w % 2**depth == 0
