"""benchmarks.pipeline (with pipeline_data, pipeline_numpy and pipeline_sections): synthetic CamVid
data, the NumPy generator's semantics, bad arguments, the sections.

No timing assertions: throughput depends on the machine.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from benchmarks import pipeline as bp
from benchmarks import pipeline_data, pipeline_numpy, pipeline_sections
from keras_seg.data import DataConfig, make_dataset, normalize_image
from keras_seg.data.augment import AugmentConfig
from keras_seg.data.manifest import load_manifest
from keras_seg.data.preprocess import MEAN_RGB, STD_RGB

CROP = (64, 96)  # small crops keep the test fast; the semantics are the same at 352x480


@pytest.fixture(scope="module")
def camvid_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("camvid_like")
    return pipeline_data.make_camvid_like(str(root), 3, seed=1, workers=1)


def test_make_camvid_like_writes_counts_manifest_and_valid_labels(camvid_like):
    raw_dir, tfr_dir = camvid_like
    images = sorted(os.listdir(os.path.join(raw_dir, "images", "train")))
    masks = sorted(os.listdir(os.path.join(raw_dir, "masks", "train")))
    assert len(images) == 3 and images == masks
    manifest = load_manifest(tfr_dir)
    assert manifest["num_classes"] == 11 and manifest["ignore_label"] == 11
    assert manifest["class_names"] == list(pipeline_data.CAMVID_CLASSES)
    assert list(manifest["splits"]) == ["train"] and manifest["splits"]["train"]["num_examples"] == 3
    seen = set()
    for name in images:
        with Image.open(os.path.join(raw_dir, "images", "train", name)) as im:
            assert im.mode == "RGB" and im.size == (480, 360)
        with Image.open(os.path.join(raw_dir, "masks", "train", name)) as lb:
            assert lb.mode == "L" and lb.size == (480, 360)
            seen |= set(np.unique(np.asarray(lb)).tolist())
    assert seen <= set(range(12)) and 11 in seen and len(seen - {11}) >= 4  # void and several classes


def test_make_camvid_like_is_deterministic(tmp_path):
    a = pipeline_data.synth_street_scene(np.random.default_rng(5))
    b = pipeline_data.synth_street_scene(np.random.default_rng(5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_generator_batches_match_the_tfdata_pipeline(camvid_like):
    raw_dir, tfr_dir = camvid_like
    cfg = DataConfig(tfr_dir, "train", batch_size=2, training=True, augment=pipeline_data.camvid_augment(11, CROP))
    want = next(iter(make_dataset(cfg)))
    gen = pipeline_numpy.camvid_generator(raw_dir, 2, crop_size=CROP, seed=0)
    low = min((0 - m) / s for m, s in zip(MEAN_RGB, STD_RGB))
    high = max((1 - m) / s for m, s in zip(MEAN_RGB, STD_RGB))
    for _ in range(2):  # crosses an epoch boundary: 3 images, batches of 2
        got = next(gen)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape) and g.dtype == w.dtype.as_numpy_dtype
        images, labels, weights = got
        assert low - 1e-5 <= images.min() and images.max() <= high + 1e-5
        assert set(np.unique(labels).tolist()) <= set(range(12))
        np.testing.assert_array_equal(weights, 1.0)
    assert want[0].numpy().min() >= low - 1e-5 and want[0].numpy().max() <= high + 1e-5


def test_numpy_normalisation_equals_normalize_image():
    v = np.arange(256)
    x = np.stack([v, v[::-1], (7 * v) % 256], -1).reshape(16, 16, 3).astype(np.uint8)  # every value, each channel
    np.testing.assert_array_equal(pipeline_numpy.normalize_image_np(x), normalize_image(x).numpy())  # same float32 ops
    assert pipeline_numpy.normalize_image_np(x).dtype == np.float32


@pytest.mark.parametrize("factor", [0.75, 1.0, 1.25, 3.0])
def test_saturation_closed_form_equals_tf(factor):
    x = np.random.default_rng(0).random((8, 9, 3)).astype(np.float32)
    x[0, 0] = 0.5  # grey pixel
    x[0, 1] = 0.0  # black pixel
    want = tf.image.adjust_saturation(x, factor).numpy()
    np.testing.assert_allclose(pipeline_numpy.adjust_saturation_np(x, factor), want, atol=1e-5)


def test_augment_numpy_pads_with_ignore_and_keeps_alignment():
    image = Image.fromarray(np.full((10, 12, 3), 200, np.uint8))
    label = Image.fromarray(np.full((10, 12), 3, np.uint8))
    cfg = AugmentConfig(crop_size=(16, 20), min_scale=1.0, max_scale=1.0, flip=False, photometric=False,
                        ignore_label=11)
    img, lab = pipeline_numpy.augment_numpy(image, label, np.random.default_rng(0), cfg)
    assert img.shape == (16, 20, 3) and lab.shape == (16, 20)
    np.testing.assert_array_equal(lab[:10, :12], 3)
    assert (lab[10:] == 11).all() and (lab[:, 12:] == 11).all()
    np.testing.assert_array_equal(img[:10, :12], 200.0)
    np.testing.assert_array_equal(img[10:], np.broadcast_to(np.float32(cfg.pad_value), img[10:].shape))
    np.testing.assert_array_equal(img[:, 12:], np.broadcast_to(np.float32(cfg.pad_value), img[:, 12:].shape))


@pytest.mark.parametrize("kwargs", [dict(n_train=0), dict(n_train=2.5), dict(n_train=True), dict(seed=-1)])
def test_make_camvid_like_rejects_bad_arguments(tmp_path, kwargs):
    args = dict(root=str(tmp_path), n_train=2, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match="Received"):
        pipeline_data.make_camvid_like(**args)


def test_make_camvid_like_refuses_a_used_root(camvid_like):
    raw_dir, _ = camvid_like
    with pytest.raises(ValueError, match="not empty"):
        pipeline_data.make_camvid_like(os.path.dirname(raw_dir), 1)


def test_throughput_functions_reject_bad_arguments(camvid_like, tmp_path):
    raw_dir, tfr_dir = camvid_like
    with pytest.raises(ValueError, match="batch"):
        bp.tfdata_throughput(tfr_dir, 0, 1)
    with pytest.raises(ValueError, match="n_batches"):
        bp.generator_throughput(raw_dir, 2, 0)
    with pytest.raises(ValueError, match="warmup"):
        bp.generator_throughput(raw_dir, 2, 1, warmup=-1)
    with pytest.raises(ValueError, match="images/train"):
        pipeline_numpy.camvid_generator(str(tmp_path), 2)  # raises at the call, not at the first batch
    with pytest.raises(ValueError, match="block"):
        bp.step_time_real_vs_synthetic(tfr_dir, "enet", 2, block=0)
    with pytest.raises(ValueError, match="unknown variants"):
        bp.options_experiments(tfr_dir, 2, 1, variants=["threading.nonsense"])
    with pytest.raises(ValueError, match="repeats"):
        bp.options_experiments(tfr_dir, 2, 1, repeats=0)


def test_run_pipeline_benchmarks_returns_both_sections(tmp_path, monkeypatch):
    # Real data, tf.data and generator measurements at a tiny size; the training step and the
    # option sweep (tens of seconds) are replaced by canned results.
    plan = pipeline_sections._Plan(images=2, batch=2, tf_batches=1, gen_batches=1, steps=(("enet", 1, 1, 1, 0),),
                                   option_batches=1, option_repeats=2)
    monkeypatch.setattr(pipeline_sections, "QUICK", plan)
    fake = bp.Timing([1.0, 1.2])
    monkeypatch.setattr(bp, "step_time_real_vs_synthetic",
                        lambda data_dir, model, batch, **kw: bp.StepComparison(model, batch, fake, bp.Timing([1.0])))
    t = bp.Throughput(10.0, 50.0, fake)
    monkeypatch.setattr(bp, "options_experiments",
                        lambda *a, **kw: [bp.OptionResult("none (A/A control)", [t, t], [t, t])])
    lines = []
    sections = pipeline_sections.run_pipeline_benchmarks(str(tmp_path), quick=True, log=lines.append)
    assert set(sections) == {"pipeline", "pipeline-options"}
    pipeline, options = sections["pipeline"], sections["pipeline-options"]
    assert pipeline.startswith("## Input pipeline") and "| enet | 1 | 1100 | 1000 | 1.10 | 2 |" in pipeline
    assert options.startswith("## tf.data options")
    assert "| none (A/A control) | 10.0 / 10.0 | 10.0 / 10.0 | 1.00 / 1.00 | 1.00 / 1.00 |" in options
    assert lines and os.listdir(tmp_path) == []  # progress was logged; the data were deleted
