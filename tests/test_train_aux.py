"""Training with auxiliary outputs (PSPNet's aux head, G-FRNet's deep supervision, BiSeNet V2's boosters)."""

import os

import numpy as np
import pytest

import keras_seg
from data_prep.folder import convert_folder
from keras_seg.checkpoints import load_trained_model
from keras_seg.options import TrainConfig
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



def test_unet_pp_deep_supervision_trains_then_evaluates_and_exports_a_pruned_head(data_dir, tmp_path):
    from keras_seg import evaluate
    from keras_seg.export import ExportConfig, export
    from keras_seg.litert import TFLiteSegmenter

    model_dir = str(tmp_path / "upp")
    options = {**keras_seg.tiny_options("unet_pp"), "filters": (4, 8, 8, 8), "depth": 3}
    cfg = TrainConfig(model="unet_pp", num_classes=3, data_dir=data_dir, model_dir=model_dir, model_options=options,
                      crop_size=(32, 32), batch_size=2, train_steps=2, log_every=1, strategy="one_device",
                      optimizer="adamw")
    cfg.validate()
    assert np.isfinite(train(cfg, log=lambda m: None).loss)  # the sum of heads L3 + L1 + L2

    x = np.random.default_rng(0).normal(size=(1, 37, 41, 3)).astype("float32")
    mean, _, _ = load_trained_model(model_dir)  # default head: the mean of the three
    pruned, config, _ = load_trained_model(model_dir, inference_options={"head": "L1"})
    assert config["model_options"]["head"] == "L1" and len(pruned.layers) < len(mean.layers)
    assert not np.allclose(mean.predict_on_batch(x), pruned.predict_on_batch(x))

    _, record = evaluate.run(model_dir, pictures=False, inference_options={"head": "L1"}, log=lambda m: None)
    assert record["inference_options"] == {"head": "L1"}
    assert os.path.exists(os.path.join(model_dir, "eval", "evaluate-val-00000002-head_L1.json"))

    res = export(ExportConfig(model_dir=model_dir, out=str(tmp_path / "out"), formats=("tflite_fp32",),
                              parity_images=0, tflite_size=(32, 32), inference_options={"head": "L1"}),
                 log=lambda m: None)
    lite = TFLiteSegmenter(res.paths["tflite_fp32"])
    assert lite.metadata["model_options"]["head"] == "L1"
    image = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    from keras_seg.data.preprocess import normalize_image  # the exported graph normalises inside
    want = pruned.predict_on_batch(normalize_image(image[None].astype("float32"), config["preprocessing"]).numpy())
    assert (lite.probabilities(image).argmax(-1) == want[0].argmax(-1)).mean() > 0.999
    with pytest.raises(ValueError, match=r"no inference option \['depth'\]"):
        load_trained_model(model_dir, inference_options={"depth": 2})


def test_eval_scales_makes_training_score_what_evaluate_scores_at_those_scales(data_dir, tmp_path):
    from keras_seg import evaluate
    from keras_seg.inference import InferenceConfig

    model_dir = str(tmp_path / "half")
    cfg = TrainConfig(model="unet", num_classes=3, data_dir=data_dir, model_dir=model_dir,
                      model_options=keras_seg.tiny_options("unet"), crop_size=(32, 32), batch_size=2, train_steps=2,
                      log_every=1, strategy="one_device", optimizer="adamw", eval_scales=(0.5,))
    cfg.validate()
    res = train(cfg, log=lambda m: None)
    _, half = evaluate.run(model_dir, pictures=False, inference=InferenceConfig(scales=(0.5,)), log=lambda m: None)
    assert half["mean_iu"] == pytest.approx(res.eval_scores["mean_iu"], abs=1e-6)
    assert list(half["inference"]["scales"]) == [0.5]
