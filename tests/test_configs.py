"""Every flagfile under configs/ uses only the trainer's flags and real builder options."""

import ast
import pathlib

import pytest

import keras_seg

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
TRAINER_FLAGS = {
    "flagfile", "model", "num_classes", "model_opt", "data_dir", "train_split", "eval_split",
    "crop_size", "batch_size", "train_steps", "optimizer", "learning_rate", "momentum",
    "weight_decay", "warmup_steps", "poly_power", "class_weights", "min_scale", "max_scale",
    "model_dir", "eval_every", "log_every", "seed",
}
MODEL_CONFIGS = sorted(p for p in CONFIGS.glob("*.cfg"))


def _flags(path):
    """[(flag, value)] of a flagfile, nested --flagfile entries expanded first (last wins)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert line.startswith("--") and "=" in line, f"{path.name}: not a --flag=value line: {line!r}"
        flag, value = line[2:].split("=", 1)
        if flag == "flagfile":
            nested = CONFIGS.parent / value
            assert nested.is_file(), f"{path.name}: nested flagfile {value} does not exist"
            out.extend(_flags(nested))
        out.append((flag, value))
    return out


def test_there_are_model_configs():
    assert len(MODEL_CONFIGS) >= 8


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_config_uses_trainer_flags_and_builder_options(path):
    flags = _flags(path)
    unknown = sorted({f for f, _ in flags} - TRAINER_FLAGS)
    assert not unknown, f"{path.name}: flags the trainer does not accept: {unknown}"
    values = dict(flags)
    assert values["model"] in keras_seg.list_models()
    assert int(values["num_classes"]) >= 1
    assert values["optimizer"] in ("sgd", "adamw")
    assert values.get("class_weights", "none") in ("none", "median_frequency", "enet")
    h, w = (int(v) for v in values["crop_size"].split(","))
    assert h > 0 and w > 0
    options = {}
    for flag, value in flags:
        if flag == "model_opt":
            key, raw = value.split("=", 1)
            try:
                options[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                options[key] = raw
    keras_seg.registry.check_options(values["model"], options)  # raises on an unknown key


# The context and real-time families (ResNet-family issue) each ship a CamVid config.
CAMVID_MODELS = [
    "deeplab_v1", "deeplab_v2", "deeplab_v3", "pspnet", "refinenet", "gfrnet", "fc_densenet56",
    "fc_densenet67", "fc_densenet103", "enet", "linknet",
]


@pytest.mark.parametrize("name", [m for m in CAMVID_MODELS if m in keras_seg.list_models()])
def test_model_has_a_camvid_config(name):
    assert (CONFIGS / f"{name}_camvid.cfg").is_file()


def test_deeplab_v3_has_a_cityscapes_config():
    assert dict(_flags(CONFIGS / "deeplab_v3_cityscapes.cfg"))["num_classes"] == "19"
