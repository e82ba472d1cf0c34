"""Every flagfile under configs/ parses with the trainer's flags and names real builder options."""

import pathlib

import pytest

import keras_seg

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
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


def _parse(path, monkeypatch):
    """Parses a flagfile with the trainer's own absl flags and returns its TrainConfig."""
    from absl import flags as absl_flags

    from keras_seg import flags as ks_flags

    monkeypatch.chdir(CONFIGS.parent)  # nested --flagfile paths are relative to the repo root
    fv = absl_flags.FLAGS
    if "model_opt" not in fv:
        ks_flags.define_flags()
    fv.unparse_flags()
    fv(["keras_seg.train", f"--flagfile={path}"])
    try:
        return ks_flags.config_from_flags(fv)  # validates values and --model_opt keys
    finally:
        fv.unparse_flags()


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_config_parses_with_the_trainer_flags(path, monkeypatch):
    flat = _flags(path)  # every line is a --flag=value, nested files exist
    cfg = _parse(path, monkeypatch)
    values = dict(flat)
    assert cfg.model == values["model"] and cfg.num_classes == int(values["num_classes"])
    keras_seg.registry.check_options(cfg.model, cfg.model_options)


# The context and real-time families (ResNet-family issue) each ship a CamVid config.
CAMVID_MODELS = [
    "deeplab_v1", "deeplab_v2", "deeplab_v3", "deeplab_v3plus", "pspnet", "refinenet", "gfrnet",
    "fc_densenet56", "fc_densenet67", "fc_densenet103", "enet", "linknet", "bisenet_v2", "unet_pp",
]


@pytest.mark.parametrize("name", [m for m in CAMVID_MODELS if m in keras_seg.list_models()])
def test_model_has_a_camvid_config(name):
    assert (CONFIGS / f"{name}_camvid.cfg").is_file()


def test_deeplab_v3_has_a_cityscapes_config():
    assert dict(_flags(CONFIGS / "deeplab_v3_cityscapes.cfg"))["num_classes"] == "19"
