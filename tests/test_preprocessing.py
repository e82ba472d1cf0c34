"""The input-preprocessing contract: a model's preprocessing is chosen by its options, recorded in
model_config.json, and applied the same way by training, evaluation, prediction and export."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_seg.checkpoints import load_trained_model, model_preprocessing
from keras_seg.data import DataConfig, make_dataset
from keras_seg.data.preprocess import mean_pixel, normalize_image, preprocessing_for, preprocessing_record
from keras_seg.options import TrainConfig
from keras_seg.predict import predict_keras
from keras_seg.training import train
from tests.data.fixtures import make_converted_dataset, make_folder_dataset

TINY = {"base_width": 4, "depth": 2, "batch_norm": True, "dropout": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    data_dir = make_converted_dataset(str(root), n_train=4, n_val=2)
    pairs = make_folder_dataset(root / "check", n_train=4, n_val=2)  # the same seeds: the same pictures
    return data_dir, pairs


def test_caffe_mode_is_keras_applications_preprocess_input():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 7, 9, 3)).astype(np.float32)
    want = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(normalize_image(x, "caffe").numpy(), want, rtol=1e-6, atol=1e-4)
    want_resnet = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(normalize_image(x, "caffe").numpy(), want_resnet, rtol=1e-6, atol=1e-4)
    # The default stays ImageNet standardisation in RGB ("torch" mode of keras.applications).
    want_torch = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode="torch")
    np.testing.assert_allclose(normalize_image(x).numpy(), want_torch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["imagenet", "caffe"])
def test_mean_pixel_maps_to_zero(mode):
    np.testing.assert_allclose(normalize_image(np.array(mean_pixel(mode), np.float32), mode).numpy(), 0, atol=1e-5)


def test_preprocessing_follows_backbone_weights_and_can_be_overridden():
    assert preprocessing_for({}) == "imagenet"
    assert preprocessing_for({"backbone_weights": None}) == "imagenet"
    assert preprocessing_for({"backbone_weights": "imagenet"}) == "caffe"
    assert preprocessing_for({"backbone_weights": "/w/vgg16_notop.h5"}) == "caffe"
    assert preprocessing_for({"backbone_weights": "imagenet"}, "imagenet") == "imagenet"
    assert preprocessing_for({}, "auto") == "imagenet"
    with pytest.raises(ValueError, match="Received: 'rgb'"):
        preprocessing_for({}, "rgb")
    with pytest.raises(ValueError, match="preprocessing"):
        normalize_image(np.zeros((1, 3)), "bgr")
    assert preprocessing_record("caffe")["channel_order"] == "BGR"
    assert model_preprocessing({}) == "imagenet"  # model_config.json written before the key existed
    with pytest.raises(ValueError, match="model_config.json preprocessing"):
        model_preprocessing({"preprocessing": "x"})


def test_pipeline_tensor_of_a_vgg16_imagenet_model_is_vgg16_preprocess_input(data):
    data_dir, pairs = data
    mode = preprocessing_for({"backbone_weights": "imagenet"})  # what fcn8s / deeplab / segnet configs set
    ds = make_dataset(DataConfig(data_dir, "val", 1, False, preprocessing=mode))
    got = {float(img.numpy()[0].sum()): img.numpy()[0] for img, _, _ in ds}
    for rgb, _ in pairs["val"]:
        want = keras.applications.vgg16.preprocess_input(rgb[None].astype(np.float32))[0]
        match = [g for g in got.values() if g.shape == want.shape and np.allclose(g, want, atol=1e-3)]
        assert match, "no pipeline image equals vgg16.preprocess_input of a val image"


def test_training_records_preprocessing_and_every_path_applies_it(data, tmp_path):
    data_dir, pairs = data
    cfg = TrainConfig(model="unet", num_classes=3, data_dir=data_dir, model_dir=str(tmp_path / "m"),
                      model_options=TINY, crop_size=(16, 16), batch_size=2, train_steps=2, log_every=1,
                      checkpoint_every=2, strategy="one_device", preprocessing="caffe", eval_split="")
    cfg.validate()
    train(cfg, log=lambda m: None)
    config = json.loads((tmp_path / "m" / "model_config.json").read_text())
    assert config["preprocessing"] == "caffe"
    # A resume with other preprocessing would feed the weights other inputs: refused.
    with pytest.raises(ValueError, match="preprocessing='caffe'"):
        train(TrainConfig(**dict(cfg.__dict__, preprocessing="imagenet", train_steps=3)), log=lambda m: None)

    model, config, _ = load_trained_model(str(tmp_path / "m"))
    rgb = pairs["val"][0][0]
    want = np.argmax(model(keras.applications.vgg16.preprocess_input(rgb[None].astype(np.float32))), -1)[0]
    np.testing.assert_array_equal(predict_keras(model, rgb, model_preprocessing(config)), want)
    other = np.argmax(model(normalize_image(rgb[None], "imagenet")), -1)[0]
    assert not np.array_equal(want, other)  # the two modes really differ for this model

    from keras_seg.export import ExportConfig, export

    res = export(ExportConfig(model_dir=str(tmp_path / "m"), out=str(tmp_path / "exp"),
                              formats=("saved_model", "tflite_fp32"), parity_images=2, tflite_size=(20, 24)),
                 log=lambda m: None)
    fn = tf.saved_model.load(res.paths["saved_model"]).signatures["serving_default"]
    probs = fn(images=tf.constant(rgb[None]))["probabilities"].numpy()
    ref = tf.nn.softmax(model(keras.applications.vgg16.preprocess_input(rgb[None].astype(np.float32)))).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    from keras_seg.litert import TFLiteSegmenter, embedded_metadata, pad_color

    seg = TFLiteSegmenter(res.paths["tflite_fp32"])
    np.testing.assert_allclose(seg.probabilities(rgb), ref[0], atol=1e-4)
    with open(res.paths["tflite_fp32"], "rb") as f:
        meta = embedded_metadata(f.read())
    assert meta["preprocessing"]["mode"] == "caffe" and meta["preprocessing"]["channel_order"] == "BGR"
    assert seg.pad_color == pad_color(meta["preprocessing"]) == tuple(int(round(v)) for v in mean_pixel("caffe"))
