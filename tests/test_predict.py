"""predict over folders, globs and broken files: relative paths, palette PNGs, probabilities, failures."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_seg.checkpoints import load_trained_model
from keras_seg.options import TrainConfig
from keras_seg.predict import expand_inputs, predict_keras
from keras_seg.training import train
from tests.data.fixtures import make_converted_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    data_dir = make_converted_dataset(str(root), n_train=4, n_val=2)
    cfg = TrainConfig(model="unet", num_classes=3, data_dir=data_dir, model_dir=str(root / "run"),
                      model_options={"base_width": 4, "depth": 2}, crop_size=(16, 16), batch_size=2, train_steps=2,
                      log_every=1, checkpoint_every=2, strategy="one_device", eval_split="")
    cfg.validate()
    train(cfg, log=lambda m: None)
    return str(root / "run")


def _images(root):
    rng = np.random.default_rng(0)
    pics = {}
    for rel, shape in [("a.png", (20, 24)), ("sub/b.jpg", (17, 31)), ("sub/deeper/c.png", (9, 12))]:
        path = root / "in" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pics[rel] = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        Image.fromarray(pics[rel]).save(path, quality=100)
    (root / "in" / "sub" / "broken.png").write_text("not an image")
    (root / "in" / "notes.txt").write_text("ignored: not an image extension")
    return pics


def test_folder_keeps_relative_paths_writes_palette_pngs_and_reports_failures(model_dir, tmp_path):
    pics = _images(tmp_path)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "keras_seg.predict", f"--model_dir={model_dir}", f"--out={tmp_path / 'out'}",
                        "--save_probabilities", str(tmp_path / "in")], capture_output=True, text=True, timeout=300,
                       cwd=REPO, env=env)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "1 of the inputs failed" in r.stderr and "broken.png" in r.stderr and "cannot decode" in r.stderr
    model, config, _ = load_trained_model(model_dir)
    for rel, image in pics.items():
        stem = tmp_path / "out" / os.path.splitext(rel)[0]
        with Image.open(f"{stem}_label.png") as im:
            assert im.mode == "P"  # a palette image: class ids shown in the dataset's colours
            assert im.getpalette()[: 3 * 3] == [v for c in config["palette"] for v in c]
            labels = np.asarray(im)
        decoded = np.asarray(Image.open(tmp_path / "in" / rel).convert("RGB"))
        np.testing.assert_array_equal(labels, predict_keras(model, decoded))
        probs = np.load(f"{stem}_probs.npy")
        assert probs.shape == (*image.shape[:2], 3) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(np.argmax(probs, -1), labels)
        assert np.asarray(Image.open(f"{stem}_overlay.png")).shape == image.shape
    assert not (tmp_path / "out" / "sub" / "broken_label.png").exists()
    assert not list((tmp_path / "out").rglob("*.tmp-*"))


def test_globs_and_name_clashes(tmp_path):
    _images(tmp_path)
    got = expand_inputs([str(tmp_path / "in" / "**" / "*.png")])
    assert sorted(os.path.basename(p) for p, _ in got) == ["a.png", "broken.png", "c.png"]
    assert [s for _, s in expand_inputs([str(tmp_path / "in")])] == ["a", "sub/b", "sub/broken", "sub/deeper/c"]
    (tmp_path / "x").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x" / "a.png")
    with pytest.raises(ValueError, match="would both write a_label.png"):
        expand_inputs([str(tmp_path / "in" / "a.png"), str(tmp_path / "x" / "a.png")])
    with pytest.raises(ValueError, match="the pattern matches no files"):
        expand_inputs([str(tmp_path / "*.jpeg")])
    with pytest.raises(ValueError, match="nothing.png: file not found"):
        expand_inputs([str(tmp_path / "nothing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder holds no images"):
        expand_inputs([str(tmp_path / "empty")])


def test_batches_of_same_size_images_predict_what_single_images_do(model_dir, tmp_path):
    from keras_seg.predict import run

    rng = np.random.default_rng(3)
    for i, shape in enumerate([(20, 24)] * 4 + [(17, 31), (20, 24)]):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    one = run(model_dir, [str(tmp_path / "im*.png")], str(tmp_path / "b1"), log=lambda m: None, save_probabilities=True)
    three = run(model_dir, [str(tmp_path / "im*.png")], str(tmp_path / "b3"), log=lambda m: None,
                save_probabilities=True, batch_size=3)
    assert len(one) == len(three) == 18
    for a, b in zip(sorted(one), sorted(three)):
        if a.endswith(".npy"):
            np.testing.assert_allclose(np.load(a), np.load(b), atol=1e-5)
        elif a.endswith("_label.png"):
            np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
