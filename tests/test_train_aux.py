"""Training with auxiliary outputs (PSPNet's aux head, G-FRNet's deep supervision, BiSeNet V2's boosters)."""

import numpy as np
import pytest

import keras_seg
from data_prep.folder import convert_folder
from keras_seg.checkpoints import load_trained_model
from keras_seg.flags import TrainConfig
from keras_seg.training import train
from tests.data.fixtures import make_folder_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("aux")
    make_folder_dataset(root / "src", n_train=4, n_val=1)
    convert_folder(str(root / "src/images"), str(root / "src/masks"), str(root / "tfr"), ["a", "b", "c"],
                   workers=1, log=lambda m: None)
    return str(root / "tfr")


@pytest.mark.parametrize("name", ["pspnet", "gfrnet", "bisenet_v2"])
def test_aux_outputs_train_and_export_view_has_one_output(name, data_dir, tmp_path):
    spec = keras_seg.get_spec(name)
    assert spec.aux_weights
    cfg = TrainConfig(model=name, num_classes=3, data_dir=data_dir, model_dir=str(tmp_path / name),
                      model_options=keras_seg.tiny_options(name), crop_size=(32, 32), batch_size=2,
                      train_steps=2, log_every=1, strategy="one_device", optimizer="adamw")
    cfg.validate()
    res = train(cfg, log=lambda m: None)
    assert np.isfinite(res.loss)
    model, config, _ = load_trained_model(str(tmp_path / name))
    assert "aux_outputs" not in config["model_options"]
    assert not isinstance(model.output, (list, tuple))
    assert model.predict_on_batch(np.zeros((1, 37, 41, 3), "float32")).shape == (1, 37, 41, 3)

