"""Shipped weights: packaging a run, loading by name, clear errors, and the zoo's numbers."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_seg
from keras_seg import pretrained
from keras_seg.checkpoints import load_trained_model
from keras_seg.options import TrainConfig
from keras_seg.training import train
from tests.data.fixtures import make_converted_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"base_width": 4, "depth": 2, "batch_norm": True, "dropout": 0.0}
SHIPPED = ("enet_camvid", "segnet_basic_camvid")  # every entry docs/model_zoo.md lists as shipped


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """A tiny U-Net run packaged as entry unet_toy in a temporary weights folder."""
    root = tmp_path_factory.mktemp("pre")
    data_dir = make_converted_dataset(str(root), n_train=4, n_val=2)
    cfg = TrainConfig(model="unet", num_classes=3, data_dir=data_dir, model_dir=str(root / "run"),
                      model_options=TINY, crop_size=(16, 16), batch_size=2, train_steps=2, log_every=1,
                      checkpoint_every=2, eval_every=2, strategy="one_device")
    cfg.validate()
    train(cfg, log=lambda m: None)
    folder = root / "weights"
    folder.mkdir()
    metrics = root / "run" / "eval" / "metrics-00000002.json"
    rec = json.loads(metrics.read_text())
    rec["checkpoint"] = None  # training's metrics files do not name the checkpoint
    metrics.write_text(json.dumps(rec))
    pretrained.package(str(root / "run"), "unet_toy", "best", {"val": str(metrics)}, {"config": "x.cfg"},
                       directory=str(folder))
    return root, str(folder)


def test_package_writes_weights_and_a_complete_record(packaged):
    root, folder = packaged
    assert pretrained.available(folder) == ["unet_toy"]
    info = pretrained.read_info("unet_toy", folder)
    assert info["model"] == "unet" and info["model_options"] == TINY and info["class_names"] == ["a", "b", "c"]
    assert info["preprocessing"] == "imagenet" and info["trained"] == {"config": "x.cfg"}
    assert info["scales"] == [1.0]  # the run's --eval_scales (default 1), from model_config.json
    assert info["metrics"]["val"]["mean_iu"] == json.loads((root / "run/best/best.json").read_text())["mean_iu"]
    model, got = pretrained.load_pretrained("unet_toy", directory=folder)
    trained, _, _ = load_trained_model(str(root / "run"), "best")
    assert info["parameters"] == model.count_params() == trained.count_params()
    x = np.random.default_rng(0).normal(size=(1, 20, 24, 3)).astype("float32")
    np.testing.assert_allclose(model(x).numpy(), trained(x).numpy(), atol=1e-6)
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


def test_a_half_resolution_entry_records_its_inference_scales(packaged, tmp_path):
    """A model trained at half resolution is scored at scale 0.5; its record says so, and the
    scales prediction uses by default come from it."""
    root, _ = packaged
    config = json.loads((root / "run" / "model_config.json").read_text())
    assert config["eval_scales"] == [1.0]
    pretrained.package(str(root / "run"), "unet_half", "best", directory=str(tmp_path), scales=(0.5,))
    info = pretrained.read_info("unet_half", str(tmp_path))
    assert info["scales"] == [0.5] and pretrained.recorded_scales(info) == (0.5,)
    assert pretrained.recorded_scales({}) == (1.0,)  # records written before scales existed


def test_unknown_or_mismatched_weights_are_refused_with_the_choices(packaged):
    _, folder = packaged
    with pytest.raises(ValueError, match=r"no shipped weights 'voc' for model 'unet'.*\['toy'\]"):
        pretrained.resolve("unet", "voc", folder)
    with pytest.raises(ValueError, match=r"Nothing is shipped for fcn8s.*\['unet_toy'\]"):
        pretrained.resolve("fcn8s", "toy", folder)
    with pytest.raises(ValueError, match=r"unknown shipped weights 'nope'. Available: \['unet_toy'\]"):
        pretrained.read_info("nope", folder)
    with pytest.raises(ValueError, match="no shipped weights 'pascal' for model 'enet'"):
        keras_seg.build_model("enet", 11, weights="pascal")
    with pytest.raises(ValueError, match="Pass num_classes=11"):
        keras_seg.build_model("enet", 12, weights="camvid")
    with pytest.raises(ValueError, match="these differ"):
        keras_seg.build_model("enet", 11, weights="camvid", stage23_blocks=8)


def test_a_corrupt_weights_file_is_named(packaged, tmp_path):
    _, folder = packaged
    copy = tmp_path / "w"
    shutil.copytree(folder, copy)
    path = copy / "unet_toy.weights.h5"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"unet_toy.weights.h5 is corrupt: SHA-256"):
        pretrained.load_pretrained("unet_toy", directory=str(copy))
    (copy / "unet_toy.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read the weights record"):
        pretrained.read_info("unet_toy", str(copy))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_without_shared_data(name):
    info = pretrained.read_info(name)
    assert name in pretrained.available()
    assert "CC BY-NC" in info["licence"] and "research" in info["licence"]
    size = os.path.getsize(pretrained.weights_path(name))
    assert size <= 10.5e6, size  # the zoo ships models of at most about 10 MB of weights
    model_name, dataset = info["model"], info["dataset"]  # the model may hold "_" (segnet_basic)
    assert name == f"{model_name}_{dataset}"  # what build_model(weights=dataset) resolves
    model = keras_seg.build_model(model_name, info["num_classes"], weights=dataset)
    same, _ = pretrained.load_pretrained(name)
    assert model.count_params() == info["parameters"]
    x = np.random.default_rng(1).normal(size=(1, 64, 96, 3)).astype("float32")
    out = model(x).numpy()
    assert out.shape == (1, 64, 96, info["num_classes"])
    np.testing.assert_array_equal(out, same(x).numpy())
    fresh = keras_seg.build_model(model_name, info["num_classes"])  # random weights differ
    assert not np.allclose(fresh(x).numpy(), out)


def test_predict_with_pretrained_weights(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "street.png")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "keras_seg.predict", "--pretrained=enet_camvid",
                        f"--out={tmp_path / 'out'}", str(tmp_path / "street.png")],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "CC BY-NC" in r.stdout
    labels = np.asarray(Image.open(tmp_path / "out" / "street_label.png"))
    assert labels.shape == (45, 61) and labels.max() < 11
    # ENet needs sides that are multiples of 8: a 45x61 image is refused by the model, or
    # predicted at its size; either way the label map is at the image's size (checked above).
    r = subprocess.run([sys.executable, "-m", "keras_seg.predict", "--pretrained=enet_voc", f"--out={tmp_path}",
                        str(tmp_path / "street.png")], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 1 and "Available: ['enet_camvid'" in r.stderr


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_reach_their_recorded_val_miou_on_real_camvid(name, shared_data, tmp_path):
    src = shared_data / "camvid"
    if not src.is_dir():
        pytest.skip(f"CamVid not found at {src}")
    from data_prep.camvid import convert_camvid
    from keras_seg.data import DataConfig, make_dataset
    from keras_seg.training import evaluate

    info = pretrained.read_info(name)
    convert_camvid(str(src), str(tmp_path / "camvid"), splits=("val",), log=lambda m: None)
    model, _ = pretrained.load_pretrained(name)
    ds = make_dataset(DataConfig(str(tmp_path / "camvid"), "val", 1, False, preprocessing=info["preprocessing"]))
    from keras_seg.inference import InferenceConfig

    scores = evaluate(model, ds, info["num_classes"], info["ignore_label"],
                      inference=InferenceConfig(scales=pretrained.recorded_scales(info)))
    assert abs(100 * scores["mean_iu"] - 100 * info["metrics"]["val"]["mean_iu"]) <= 0.5, scores["mean_iu"]
