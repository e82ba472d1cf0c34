"""data_prep.folder: conversion, manifest contents, and every bad input it must refuse."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep.folder import FolderOptions, convert_folder
from data_prep.images import DataError
from data_prep.writer import ConversionError
from keras_seg.data import features as F
from keras_seg.data.manifest import enet_weights, load_manifest, median_frequency_weights
from tests.data.fixtures import make_folder_dataset, write_pair

NAMES = ["a", "b", "c"]


def _convert(src, out, **kw):
    return convert_folder(os.path.join(src, "images"), os.path.join(src, "masks"), str(out), NAMES,
                          log=lambda m: None, **kw)


def test_conversion_round_trip_and_manifest(tmp_path):
    data = make_folder_dataset(tmp_path / "src")
    m = _convert(tmp_path / "src", tmp_path / "out", workers=2, shard_mb=0.002)
    assert m == load_manifest(str(tmp_path / "out"))
    assert m["num_classes"] == 3 and m["class_names"] == NAMES and m["ignore_label"] == 255
    assert len(m["palette"]) == 3
    for split, pairs in data.items():
        s = m["splits"][split]
        assert s["num_examples"] == len(pairs)
        masks = np.stack([mk for _, mk in pairs])
        want = np.bincount(masks.ravel(), minlength=256)
        assert s["pixel_counts"] == want[:3].tolist()
        assert s["ignored_pixels"] == int(want[255])
    assert len(m["splits"]["train"]["files"]) > 1  # size-bounded shards
    # Every record decodes back to the exact source pixels.
    rgb0, mask0 = data["train"][0]
    got = {}
    for f in m["splits"]["train"]["files"]:
        for rec in tf.data.TFRecordDataset(str(tmp_path / "out" / f)):
            ex = tf.io.parse_single_example(rec, F.parse_spec(False))
            got[ex[F.KEY].numpy().decode()] = ex
    ex = got["train000"]
    np.testing.assert_array_equal(tf.io.decode_png(ex[F.IMAGE]).numpy(), rgb0)
    np.testing.assert_array_equal(tf.io.decode_png(ex[F.LABEL]).numpy()[..., 0], mask0)
    assert int(ex[F.HEIGHT]) == 20 and int(ex[F.WIDTH]) == 24
    cw = m["class_weights"]
    assert cw["computed_from"] == "train"
    s = m["splits"]["train"]
    assert cw["median_frequency"] == pytest.approx(median_frequency_weights(s["pixel_counts"], s["present_pixel_counts"]), rel=1e-5)
    assert cw["enet"] == pytest.approx(enet_weights(s["pixel_counts"]), rel=1e-5)
    assert not [p for p in os.listdir(tmp_path) if "staging" in p]


def test_class_weight_formulas():
    # median frequency: freqs 0.5, 0.25, 0.125 (each present everywhere) -> median 0.25
    assert median_frequency_weights([50, 25, 12.5], [100, 100, 100]) == pytest.approx([0.5, 1.0, 2.0])
    assert median_frequency_weights([10, 0], [100, 100]) == [1.0, 0.0]
    p = np.array([0.7, 0.2, 0.1])
    assert enet_weights([70, 20, 10]) == pytest.approx(list(1 / np.log(1.02 + p)))


def test_fraction_split_without_split_folders(tmp_path):
    for i in range(30):
        write_pair(tmp_path / "flat", "", f"x{i:02d}", seed=i)
    m = convert_folder(str(tmp_path / "flat/images"), str(tmp_path / "flat/masks"), str(tmp_path / "out"),
                       NAMES, val_fraction=0.3, workers=1, log=lambda m: None)
    n = {s: v["num_examples"] for s, v in m["splits"].items()}
    assert n["train"] + n["val"] == 30 and 0 < n["val"] < 30


def _expect_failure(tmp_path, match, **kw):
    with pytest.raises((ConversionError, DataError), match=match):
        _convert(tmp_path / "src", tmp_path / "out", workers=1, **kw)
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert not [p for p in os.listdir(tmp_path) if "staging" in p]


def test_truncated_image_is_named(tmp_path):
    make_folder_dataset(tmp_path / "src")
    p = tmp_path / "src/images/train/train002.png"
    p.write_bytes(p.read_bytes()[:200])
    _expect_failure(tmp_path, r"train002\.png: the image cannot be decoded")


def test_size_mismatch_is_named(tmp_path):
    make_folder_dataset(tmp_path / "src")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "src/masks/train/train001.png")
    _expect_failure(tmp_path, r"train001\.png: mask size 10x10 \(WxH\) differs")


def test_missing_pair_is_named(tmp_path):
    make_folder_dataset(tmp_path / "src")
    os.remove(tmp_path / "src/masks/val/val001.png")
    _expect_failure(tmp_path, r"image without mask: .*val001\.png")


def test_out_of_range_values_are_named(tmp_path):
    make_folder_dataset(tmp_path / "src")
    mask = np.zeros((20, 24), np.uint8)
    mask[3, 3] = 7
    Image.fromarray(mask).save(tmp_path / "src/masks/train/train000.png")
    _expect_failure(tmp_path, r"train000\.png: mask values \[7\] are outside \[0, 3\)")


def test_rgb_mask_is_refused_with_fix(tmp_path):
    make_folder_dataset(tmp_path / "src")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "src/masks/train/train000.png")
    _expect_failure(tmp_path, r"colour \(RGB\) image.*Fix: map each colour")


def test_palette_mask_refused_unless_allowed(tmp_path):
    make_folder_dataset(tmp_path / "src")
    pal = Image.fromarray(np.full((20, 24), 2, np.uint8)).convert("P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "src/masks/train/train000.png")
    _expect_failure(tmp_path, r"palette PNG \(mode P\).*--palette_masks")
    m = _convert(tmp_path / "src", tmp_path / "out2", workers=1, options=FolderOptions(palette_masks=True))
    assert m["splits"]["train"]["num_examples"] == 6


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "e/images").mkdir(parents=True)
    (tmp_path / "e/masks").mkdir(parents=True)
    with pytest.raises(ConversionError, match="holds no .png/.jpg/.jpeg files"):
        convert_folder(str(tmp_path / "e/images"), str(tmp_path / "e/masks"), str(tmp_path / "o"), NAMES, log=lambda m: None)


def test_existing_output_needs_overwrite(tmp_path):
    make_folder_dataset(tmp_path / "src", n_train=2, n_val=1)
    _convert(tmp_path / "src", tmp_path / "out", workers=1)
    before = json.loads((tmp_path / "out/manifest.json").read_text())
    with pytest.raises(FileExistsError, match="--overwrite"):
        _convert(tmp_path / "src", tmp_path / "out", workers=1)
    # A failing overwrite leaves the old dataset intact.
    p = tmp_path / "src/images/train/train000.png"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ConversionError):
        _convert(tmp_path / "src", tmp_path / "out", workers=1, overwrite=True)
    assert json.loads((tmp_path / "out/manifest.json").read_text()) == before


def test_cli_reports_error_and_exits_1(tmp_path):
    make_folder_dataset(tmp_path / "src", n_train=2, n_val=1)
    os.remove(tmp_path / "src/masks/train/train000.png")
    r = subprocess.run([sys.executable, "-m", "data_prep.folder", f"--images={tmp_path}/src/images",
                        f"--masks={tmp_path}/src/masks", f"--out={tmp_path}/out", "--class_names=a,b,c"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "image without mask" in r.stderr and "train000.png" in r.stderr


def test_border_weight_maps_are_stored(tmp_path):
    make_folder_dataset(tmp_path / "src", n_train=2, n_val=1)
    m = _convert(tmp_path / "src", tmp_path / "out", workers=1, options=FolderOptions(border_weights=True))
    assert m["splits"]["train"]["has_weights"]
    rec = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" / m["splits"]["train"]["files"][0]))))
    ex = tf.io.parse_single_example(rec, F.parse_spec(True))
    w = np.frombuffer(ex[F.WEIGHT].numpy(), "<f4")
    assert w.size == 20 * 24 and np.all(np.isfinite(w)) and w.max() > 1.0
