"""keras_seg.data: decode, augment, normalise and make_dataset."""

import json

import numpy as np
import pytest
import tensorflow as tf

from data_prep.folder import convert_folder
from keras_seg.data import AugmentConfig, DataConfig, augment, make_dataset, normalize_image
from keras_seg.data.manifest import ManifestError
from keras_seg.data.preprocess import MEAN_RGB, STD_RGB
from tests.data.fixtures import make_folder_dataset


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    make_folder_dataset(root / "src", n_train=8, n_val=3)
    convert_folder(str(root / "src/images"), str(root / "src/masks"), str(root / "tfr"), ["a", "b", "c"],
                   workers=1, shard_mb=0.003, log=lambda m: None)
    return str(root / "tfr")


def test_normalize_image_is_imagenet_standardisation():
    x = np.array([[[0, 128, 255]]], np.uint8)
    want = (x / 255.0 - np.array(MEAN_RGB)) / np.array(STD_RGB)
    np.testing.assert_allclose(normalize_image(x).numpy(), want, rtol=1e-6)


def test_training_batches_have_crop_shape_and_valid_labels(dataset_dir):
    cfg = DataConfig(dataset_dir, "train", batch_size=4, training=True,
                     augment=AugmentConfig(crop_size=(16, 32), min_scale=0.5, max_scale=1.5, ignore_label=255))
    for images, labels, weights in make_dataset(cfg).take(3):
        assert images.shape == (4, 16, 32, 3) and images.dtype == tf.float32
        assert labels.shape == (4, 16, 32) and labels.dtype == tf.int32
        assert weights.shape == (4, 16, 32)
        assert set(np.unique(labels.numpy())) <= {0, 1, 2, 255}  # nearest resize: no new values


def test_training_stream_is_deterministic_and_skippable(dataset_dir):
    aug = AugmentConfig(crop_size=(16, 16), ignore_label=255)
    a = [b[1].numpy() for b in make_dataset(DataConfig(dataset_dir, "train", 2, True, aug, seed=3)).take(5)]
    b = [b[1].numpy() for b in make_dataset(DataConfig(dataset_dir, "train", 2, True, aug, seed=3)).take(5)]
    c = [b[1].numpy() for b in make_dataset(DataConfig(dataset_dir, "train", 2, True, aug, seed=3, skip_batches=2)).take(3)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a[2:], c):  # a resumed stream continues exactly where it left off
        np.testing.assert_array_equal(x, y)


def test_eval_batches_are_full_images(dataset_dir):
    ds = make_dataset(DataConfig(dataset_dir, "val", batch_size=1, training=False))
    shapes = [tuple(img.shape) for img, _, _ in ds]
    assert shapes == [(1, 20, 24, 3)] * 3


def test_augment_pads_with_ignore_and_keeps_alignment():
    image = tf.reshape(tf.range(6 * 8 * 3, dtype=tf.float32) % 256, (6, 8, 3))
    label = tf.cast(tf.reshape(tf.range(6 * 8) % 3, (6, 8, 1)), tf.uint8)
    ex = {"image": tf.cast(image, tf.uint8), "label": label, "weight": tf.ones((6, 8, 1))}
    cfg = AugmentConfig(crop_size=(10, 12), min_scale=1.0, max_scale=1.0, flip=False, photometric=False, ignore_label=255)
    out = augment(ex, tf.constant([1, 2], tf.int64), cfg)
    lab = out["label"].numpy()[..., 0]
    assert lab.shape == (10, 12)
    assert (lab == 255).sum() == 10 * 12 - 6 * 8  # padding is ignore, every source pixel kept
    np.testing.assert_array_equal(lab[:6, :8], label.numpy()[..., 0])
    assert out["weight"].numpy()[lab == 255].sum() == 0
    # Same seed, same result; flips move image and label together.
    cfg2 = AugmentConfig(crop_size=(6, 8), min_scale=1.0, max_scale=1.0, flip=True, photometric=False)
    outs = [augment(ex, tf.constant([s, 0], tf.int64), cfg2) for s in range(8)]
    for o in outs:
        flipped = np.array_equal(o["label"].numpy(), label.numpy()[:, ::-1])
        same = np.array_equal(o["label"].numpy(), label.numpy())
        assert flipped or same
        ref_img = ex["image"].numpy()[:, ::-1] if flipped else ex["image"].numpy()
        np.testing.assert_allclose(o["image"].numpy(), ref_img)
    assert any(np.array_equal(o["label"].numpy(), label.numpy()[:, ::-1]) for o in outs)


def test_input_context_shards_and_splits_batch(dataset_dir):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    ds = make_dataset(DataConfig(dataset_dir, "train", 4, True, AugmentConfig(crop_size=(8, 8))), ctx)
    assert next(iter(ds))[0].shape[0] == 2  # per-replica batch
    with pytest.raises(ValueError, match="does not divide"):
        make_dataset(DataConfig(dataset_dir, "train", 3, True, AugmentConfig(crop_size=(8, 8))), ctx)


def test_missing_manifest_and_unknown_split(tmp_path, dataset_dir):
    with pytest.raises(ManifestError, match="No manifest.json"):
        make_dataset(DataConfig(str(tmp_path), "train", 1, False))
    with pytest.raises(ManifestError, match="Split 'test' is not in"):
        make_dataset(DataConfig(dataset_dir, "test", 1, False))


def test_augment_pads_images_with_the_mean_colour_after_the_jitter():
    # Padding must look like inference's padding (the mean colour, which normalises to 0), and the
    # photometric jitter must run before it: jittered padding would no longer be the mean colour.
    from keras_seg.data.augment import MEAN_PIXEL

    rng = np.random.default_rng(0)
    ex = {"image": tf.constant(rng.integers(0, 256, (6, 8, 3)), tf.uint8),
          "label": tf.zeros((6, 8, 1), tf.uint8), "weight": tf.ones((6, 8, 1))}
    cfg = AugmentConfig(crop_size=(10, 12), min_scale=1.0, max_scale=1.0, flip=False, photometric=True,
                        ignore_label=255)
    for s in range(4):
        out = augment(ex, tf.constant([s, 3], tf.int64), cfg)
        img, lab = out["image"].numpy(), out["label"].numpy()[..., 0]
        padded = lab == 255
        assert padded.sum() == 10 * 12 - 6 * 8
        np.testing.assert_allclose(img[padded], np.broadcast_to(MEAN_PIXEL, (padded.sum(), 3)), rtol=1e-6)
        np.testing.assert_allclose(normalize_image(img[padded]).numpy(), 0.0, atol=1e-5)
        assert not np.allclose(img[:6, :8], ex["image"].numpy())  # the source pixels were jittered


def _jittered(rgb01, cfg, seeds=range(150)):
    """augment() of a flat 4x4 image of colour ``rgb01`` (in [0, 1]) under many seeds, in [0, 1]."""
    ex = {"image": tf.constant(np.full((4, 4, 3), np.round(np.array(rgb01) * 255), np.uint8)),
          "label": tf.zeros((4, 4, 1), tf.uint8), "weight": tf.ones((4, 4, 1))}
    return np.stack([augment(ex, tf.constant([s, 11], tf.int64), cfg)["image"].numpy()[0, 0] / 255.0
                     for s in seeds])


def test_jitter_strength_scales_the_brightness_range():
    # A flat grey frame: contrast and saturation leave it as it is, so each output is grey + the
    # brightness delta, which must stay within +-0.125 * strength and reach past the default range.
    base = dict(crop_size=(4, 4), min_scale=1.0, max_scale=1.0, flip=False, photometric=True)
    grey = np.round(0.5 * 255) / 255.0
    shift1 = _jittered((0.5, 0.5, 0.5), AugmentConfig(**base))[:, 0] - grey
    shift2 = _jittered((0.5, 0.5, 0.5), AugmentConfig(**base, jitter_strength=2.0))[:, 0] - grey
    assert np.abs(shift1).max() <= 0.125 + 1e-5 and np.abs(shift1).max() > 0.11
    assert np.abs(shift2).max() <= 0.25 + 1e-5 and np.abs(shift2).max() > 0.2
    still = _jittered((0.5, 0.5, 0.5), AugmentConfig(**base, jitter_strength=0.0), seeds=range(5))
    np.testing.assert_allclose(still, grey, atol=1e-6)  # strength 0 and no hue: no jitter at all


def test_default_jitter_is_the_jitter_earlier_zoo_runs_trained_with():
    # Round 1-7 configs predate --jitter_strength/--hue_delta; their defaults must draw the same
    # three ops from the same seeds (the first 7 of the split, seeds 4-6) as before, or those
    # configs no longer reproduce their runs.
    rng = np.random.default_rng(1)
    img = tf.constant(rng.integers(0, 256, (6, 8, 3)), tf.uint8)
    ex = {"image": img, "label": tf.zeros((6, 8, 1), tf.uint8), "weight": tf.ones((6, 8, 1))}
    cfg = AugmentConfig(crop_size=(6, 8), min_scale=1.0, max_scale=1.0, flip=False, photometric=True)
    for s in range(3):
        seed = tf.constant([s, 5], tf.int64)
        old = tf.random.experimental.stateless_split(seed, 7)
        x = tf.cast(img, tf.float32) / 255.0
        x = tf.image.stateless_random_brightness(x, 0.125, old[4])
        x = tf.image.stateless_random_contrast(x, 0.75, 1.25, old[5])
        x = tf.image.stateless_random_saturation(x, 0.75, 1.25, old[6])
        want = tf.clip_by_value(x, 0.0, 1.0) * 255.0
        np.testing.assert_allclose(augment(ex, seed, cfg)["image"].numpy(), want.numpy(), atol=1e-4)


def test_hue_delta_turns_the_colour_wheel_and_keeps_value_and_saturation():
    import colorsys

    base = dict(crop_size=(4, 4), min_scale=1.0, max_scale=1.0, flip=False, photometric=True, jitter_strength=0.0)
    rgb = np.round(np.array([0.8, 0.3, 0.2]) * 255) / 255.0
    h0, s0, v0 = colorsys.rgb_to_hsv(*rgb)
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in _jittered(rgb, AugmentConfig(**base, hue_delta=0.05))])
    turn = (hsv[:, 0] - h0 + 0.5) % 1.0 - 0.5
    assert np.abs(turn).max() <= 0.05 + 0.005 and np.abs(turn).max() > 0.04
    assert turn.min() < 0 < turn.max()
    np.testing.assert_allclose(hsv[:, 2], v0, atol=0.005)
    np.testing.assert_allclose(hsv[:, 1], s0, atol=0.01)
    none = _jittered(rgb, AugmentConfig(**base), seeds=range(5))
    np.testing.assert_allclose(none, np.broadcast_to(rgb, none.shape), atol=1e-6)


@pytest.mark.parametrize("kw, msg", [(dict(jitter_strength=4.0), "jitter_strength must be in \\[0, 4\\)"),
                                     (dict(jitter_strength=-1.0), "jitter_strength"),
                                     (dict(hue_delta=0.6), "hue_delta must be in \\[0, 0.5\\]")])
def test_augment_config_refuses_jitter_ranges_that_break_the_ops(kw, msg):
    with pytest.raises(ValueError, match=msg):
        AugmentConfig(crop_size=(4, 4), **kw)


def test_shards_split_one_ordering_when_there_are_fewer_files_than_shards(tmp_path):
    # 3 files of 4 records and 4 shards: each shard keeps every 4th record of the files read
    # in one common order, so one epoch's 12 draws (3 global batches of one record per shard)
    # are the 12 records, each once. With per-shard file orders, some came 3 times, some never.
    from data_prep.folder import convert_folder
    from tests.data.fixtures import write_pair

    for i in range(12):
        write_pair(tmp_path / "src", "train", f"t{i:02d}", h=8, w=8, seed=i)
    convert_folder(str(tmp_path / "src/images"), str(tmp_path / "src/masks"), str(tmp_path / "tfr"), ["a", "b", "c"],
                   workers=1, log=lambda m: None)
    # Re-shard into exactly 3 files of 4 records (equal files: interleave ends them together).
    manifest_path = tmp_path / "tfr" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    records = [r.numpy() for f in manifest["splits"]["train"]["files"]
               for r in tf.data.TFRecordDataset(str(tmp_path / "tfr" / f))]
    assert len(records) == 12
    names = [f"train3-{i}.tfrecord" for i in range(3)]
    for i, name in enumerate(names):
        with tf.io.TFRecordWriter(str(tmp_path / "tfr" / name)) as w:
            for r in records[4 * i : 4 * i + 4]:
                w.write(r)
    manifest["splits"]["train"]["files"] = names
    manifest_path.write_text(json.dumps(manifest))
    aug = AugmentConfig(crop_size=(8, 8), min_scale=1.0, max_scale=1.0, flip=False, photometric=False)
    for seed in (0, 1):
        cfg = DataConfig(str(tmp_path / "tfr"), "train", 4, True, aug, seed=seed, shuffle_buffer=1, num_shards=4)
        draws = [round(float(img.numpy().sum()), 3) for images, _, _ in make_dataset(cfg).take(3) for img in images]
        assert len(draws) == 12 and len(set(draws)) == 12, draws
