"""Instance data: the synthetic shapes, writer -> reader round trips, augmentation and padding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from data_prep.instances import InstanceInfo, Instances
from data_prep.shapes_instances import example_rng, make_instance_example, write_shapes_instances
from data_prep.writer import ConversionError, Item, Loaded, write_dataset
from keras_seg.data.manifest import ManifestError, load_manifest
from keras_seg.data.preprocess import normalize_image
from keras_seg.detection.data import (decode_instance_example, flip_instances, make_instance_dataset, pad_instances,
                                      resize_and_pad)
from tests.detection.instance_util import read_instances, tight_boxes

SIZE = 32


def _quiet(_msg):
    pass


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "tfr"
    write_shapes_instances(str(out), num_train=5, num_val=3, size=SIZE, seed=7, min_visible=10, workers=1,
                           shard_mb=0.008, log=_quiet)
    return out


def _adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a pixel of ``a`` is a 4-neighbour of a pixel of ``b``."""
    a = a.astype(bool)
    grown = a.copy()
    grown[1:] |= a[:-1]
    grown[:-1] |= a[1:]
    grown[:, 1:] |= a[:, :-1]
    grown[:, :-1] |= a[:, 1:]
    return bool((grown & b.astype(bool)).any())


def test_shapes_are_deterministic_and_overlap_and_touch():
    examples = [make_instance_example(example_rng(3, "train", i), 48, min_visible=15) for i in range(12)]
    again = make_instance_example(example_rng(3, "train", 5), 48, min_visible=15)
    np.testing.assert_array_equal(again.image, examples[5].image)
    np.testing.assert_array_equal(again.masks, examples[5].masks)
    other = make_instance_example(example_rng(4, "train", 5), 48, min_visible=15)
    assert not np.array_equal(other.image, examples[5].image)
    occluded = touching = 0
    for ex in examples:
        n = len(ex.classes)
        assert 0 < n <= 6 and set(ex.classes.tolist()) <= {1, 2, 3}
        assert ex.masks.shape == (n, 48, 48) and set(np.unique(ex.masks).tolist()) <= {0, 1}
        assert (ex.masks.sum(axis=(1, 2)) >= 15).all()
        assert ex.masks.sum(axis=0).max() <= 1  # visible parts never overlap
        assert ((ex.masks == 1) <= (ex.full_masks == 1)).all()  # visible part of the drawn shape
        occluded += int((ex.masks.sum(axis=(1, 2)) < ex.full_masks.sum(axis=(1, 2))).sum())
        touching += sum(_adjacent(ex.masks[i], ex.masks[j]) for i in range(n) for j in range(i + 1, n))
    assert occluded >= 3 and touching >= 3  # later shapes occlude earlier ones, and shapes touch
    assert len({c for ex in examples for c in ex.classes.tolist()}) == 3


def test_shapes_round_trip_equals_generated_instances(shapes_dir):
    manifest = json.loads((shapes_dir / "manifest.json").read_text())
    assert manifest["task"] == "instance" and manifest["class_names"] == ["circle", "square", "triangle"]
    total, most = 0, 0
    for split, n in (("train", 5), ("val", 3)):
        got = read_instances(shapes_dir, split)
        assert sorted(got) == [f"{split}_{i:05d}" for i in range(n)]
        counts = np.zeros(3, int)
        for i in range(n):
            want = make_instance_example(example_rng(7, split, i), SIZE, min_visible=10)
            ex = got[f"{split}_{i:05d}"]
            np.testing.assert_array_equal(ex["image"], want.image)
            np.testing.assert_array_equal(ex["masks"], want.masks)
            np.testing.assert_array_equal(ex["classes"], want.classes)
            np.testing.assert_array_equal(ex["boxes"], tight_boxes(want.masks))
            np.testing.assert_array_equal(ex["is_crowd"], np.zeros(len(want.classes)))
            counts += np.bincount(want.classes - 1, minlength=3)
            most = max(most, len(want.classes))
        s = manifest["splits"][split]
        assert s["instance_counts"] == counts.tolist() and s["num_instances"] == counts.sum()
        assert s["num_examples"] == n == sum(s["file_records"]) and len(s["files"]) > 1
        total += counts.sum()
    assert manifest["max_instances"] == most and total > 8


def _example(shapes_dir):
    raw = next(iter(tf.data.TFRecordDataset(str(shapes_dir / json.loads(
        (shapes_dir / "manifest.json").read_text())["splits"]["train"]["files"][0]))))
    return decode_instance_example(raw)


def test_flip_keeps_boxes_tight_around_masks(shapes_dir):
    ex = _example(shapes_dir)
    flipped = flip_instances(ex)
    np.testing.assert_array_equal(flipped["masks"].numpy(), ex["masks"].numpy()[:, :, ::-1])
    np.testing.assert_array_equal(flipped["boxes"].numpy(), tight_boxes(flipped["masks"].numpy()))
    np.testing.assert_array_equal(flip_instances(flipped)["boxes"].numpy(), ex["boxes"].numpy())


def test_resize_keeps_aspect_pads_and_scales_boxes(shapes_dir):
    ex = _example(shapes_dir)  # 32x32 -> 24x24 inside 24x40
    out = resize_and_pad(ex, (24, 40), "imagenet")
    assert out["image"].shape == (24, 40, 3) and out["masks"].shape[1:] == (24, 40)
    np.testing.assert_array_equal(out["image_hw"].numpy(), [24, 24])
    np.testing.assert_allclose(normalize_image(out["image"][:, 24:]).numpy(), 0.0, atol=1e-5)  # padding -> 0
    assert not out["masks"].numpy()[:, :, 24:].any()
    np.testing.assert_allclose(out["boxes"].numpy(), ex["boxes"].numpy() * 0.75)
    # Nearest-neighbour masks stay within a pixel of the scaled boxes.
    np.testing.assert_allclose(tight_boxes(out["masks"].numpy()), out["boxes"].numpy(), atol=1.0)


def test_padding_gives_minus_one_classes(shapes_dir):
    ex = _example(shapes_dir)
    n = int(tf.shape(ex["classes"])[0])
    out = pad_instances(ex, 9)
    classes = out["classes"].numpy()
    np.testing.assert_array_equal(classes[:n], ex["classes"].numpy())
    assert (classes[n:] == -1).all() and out["masks"].shape == (9, SIZE, SIZE)
    assert not out["boxes"].numpy()[n:].any() and not out["masks"].numpy()[n:].any()
    with pytest.raises(tf.errors.InvalidArgumentError, match="more instances than max_instances"):
        pad_instances(ex, n - 1)


def test_make_instance_dataset_batches(shapes_dir):
    ds = make_instance_dataset(str(shapes_dir), "val", 2, (24, 40), 8, training=False)
    batches = list(ds)
    assert len(batches) == 2  # 3 examples, remainder kept
    features, labels = batches[0]
    assert features["image"].shape == (2, 24, 40, 3) and features["image"].dtype == tf.float32
    assert labels["gt_boxes"].shape == (2, 8, 4) and labels["gt_classes"].dtype == tf.int32
    assert labels["gt_masks"].shape == (2, 8, 24, 40) and labels["gt_masks"].dtype == tf.uint8
    classes = labels["gt_classes"].numpy()
    valid = classes > 0
    assert ((classes == -1) == ~valid).all() and valid.any() and (~valid).any()
    assert (valid[:, :-1] >= valid[:, 1:]).all()  # instances first, padding after


def test_training_stream_is_a_function_of_the_seed(shapes_dir):
    def take(seed):
        ds = make_instance_dataset(str(shapes_dir), "train", 2, (32, 32), 8, training=True, seed=seed)
        return [(f["image"].numpy(), l["gt_boxes"].numpy()) for f, l in ds.take(2)]

    a, b, c = take(1), take(1), take(2)
    for (ia, ba), (ib, bb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ba, bb)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_max_instances_below_the_manifest_is_refused(shapes_dir):
    most = json.loads((shapes_dir / "manifest.json").read_text())["splits"]["train"]["max_objects"]
    with pytest.raises(ValueError, match=f"has {most} instances.*max_instances={most - 1}"):
        make_instance_dataset(str(shapes_dir), "train", 2, (32, 32), most - 1, training=True)


def test_semantic_reader_refuses_an_instance_dataset(shapes_dir):
    with pytest.raises(ManifestError, match="'instance' dataset.*make_instance_dataset"):
        load_manifest(str(shapes_dir))


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_shard_is_named(shapes_dir, tmp_path, damage):
    import shutil

    data = tmp_path / "copy"
    shutil.copytree(shapes_dir, data)
    manifest = json.loads((data / "manifest.json").read_text())
    split = manifest["splits"]["train"]
    name = next(f for f, n in zip(split["files"], split["file_records"]) if n >= 2)
    path = data / name
    raw = bytearray(path.read_bytes())
    if damage == "flip_byte":
        raw[len(raw) - 40] ^= 0xFF  # inside the last record's payload: its CRC fails
    else:
        raw = raw[:len(raw) - 10]
    path.write_bytes(bytes(raw))
    ds = make_instance_dataset(str(data), "train", 1, (32, 32), 8, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"corrupt or truncated TFRecord shard.*{name}"):
        for _ in ds:
            pass


def _info():
    return InstanceInfo(name="t", class_names=["a", "b"], palette=InstanceInfo.default_palette(2))


def _load_bad_class(item):
    masks = np.zeros((1, 4, 5), np.uint8)
    masks[0, 1:3, 2:4] = 1
    return Loaded(image=b"", image_format="png", height=4, width=5,
                  instances=Instances(np.array([3]), masks, np.array([0])))


def test_class_outside_range_names_the_file(tmp_path):
    items = {"train": [Item(key="k", image_path="img.png", mask_path="/src/k_mask.png")]}
    with pytest.raises(ConversionError, match=r"/src/k_mask.png: instance classes \[3\] are outside 1..2"):
        write_dataset(str(tmp_path / "out"), items, _load_bad_class, _info(), workers=1, log=_quiet)
    assert not (tmp_path / "out").exists()

