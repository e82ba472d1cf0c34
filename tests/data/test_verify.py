"""data_prep.verify: a clean dataset passes; each kind of damage is named by file and record."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep.folder import convert_folder
from data_prep.verify import format_report, verify_dataset
from keras_seg.data import features as F
from tests.data.util import record_offsets, save_image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def dataset(tmp_path):
    """A 3-class folder dataset: train 4 examples, val 3, one shard each; returns its dir."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 3)):
        for i in range(n):
            h, w = 20 + i, 24
            save_image(tmp_path / "src" / "images" / split / f"{split}{i}.png", rng.integers(0, 256, (h, w, 3)))
            mask = rng.integers(0, 3, (h, w))
            mask[0, :5] = 255
            save_image(tmp_path / "src" / "masks" / split / f"{split}{i}.png", mask)
    out = tmp_path / "out"
    convert_folder(str(tmp_path / "src" / "images"), str(tmp_path / "src" / "masks"), str(out),
                   ["a", "b", "c"], workers=1, log=lambda _: None)
    return out


def _rewrite(shard, index, **changes):
    """Rewrites record ``index`` of ``shard`` with some features replaced."""
    import tensorflow as tf

    raws = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    ex = tf.train.Example.FromString(raws[index])
    for key, value in changes.items():
        ex.features.feature[key].bytes_list.value[:] = [value]
    raws[index] = ex.SerializeToString()
    with tf.io.TFRecordWriter(str(shard)) as w:
        for r in raws:
            w.write(r)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_clean_dataset_passes_and_counts_match_manifest(dataset):
    report = verify_dataset(str(dataset))
    assert report.ok, report.problems
    assert {s: r.num_records for s, r in report.splits.items()} == {"train": 4, "val": 3}
    for s, r in report.splits.items():
        assert r.class_counts(3) == report.manifest["splits"][s]["pixel_counts"]
        assert int(r.pixel_counts[255]) == report.manifest["splits"][s]["ignored_pixels"]
    text = format_report(report)
    assert "OK: 7 records" in text and "median_freq" in text and "(ignore)" in text


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_shard_names_file_and_record(dataset, damage):
    shard = dataset / "train-00000-of-00001.tfrecord"
    start = record_offsets(shard)[2]
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        for j in range(start + 40, start + 48):
            data[j] ^= 0xFF
    else:
        del data[start + 100:]
    shard.write_bytes(bytes(data))
    report = verify_dataset(str(dataset))
    assert not report.ok
    crc = [p for p in report.problems if p.file == str(shard) and p.record == 2]
    assert crc and "corrupt TFRecord" in crc[0].message, report.problems
    assert f"{shard} record 2" in str(crc[0])


@pytest.mark.parametrize("change, message", [
    ({F.LABEL: _png(np.full((20, 24), 7))}, "label values [7] are outside [0, 3)"),
    ({F.LABEL: _png(np.zeros((20, 25)))}, "label is 25x20 (WxH) but the image is 24x20"),
    ({F.IMAGE: b"\x89PNG\r\n\x1a\n-not-really"}, "the image does not decode"),
    ({F.META: b"{not json"}, "image/meta is not JSON"),
])
def test_bad_record_is_named(dataset, change, message):
    shard = dataset / "val-00000-of-00001.tfrecord"
    _rewrite(shard, 0, **change)
    report = verify_dataset(str(dataset))
    assert [(p.file, p.record) for p in report.problems] == [(str(shard), 0)], report.problems
    assert message in report.problems[0].message
    assert report.problems[0].key == "val0"


@pytest.mark.parametrize("field", ["pixel_counts", "ignored_pixels", "num_examples"])
def test_stale_manifest_is_a_problem(dataset, field):
    path = dataset / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = manifest["splits"]["val"]
    entry[field] = [v + 1 for v in entry[field]] if field == "pixel_counts" else entry[field] + 1
    path.write_text(json.dumps(manifest))
    report = verify_dataset(str(dataset))
    assert [(p.file, p.record) for p in report.problems] == [(str(path), None)]
    assert "split 'val'" in report.problems[0].message


def test_missing_manifest_is_a_problem(tmp_path):
    report = verify_dataset(str(tmp_path))
    assert not report.ok and "No manifest.json" in report.problems[0].message


def test_cli_exits_nonzero_naming_file_and_record(dataset):
    train = dataset / "train-00000-of-00001.tfrecord"
    start = record_offsets(train)[1]
    data = bytearray(train.read_bytes())
    data[start + 30] ^= 0xFF
    train.write_bytes(bytes(data))
    val = dataset / "val-00000-of-00001.tfrecord"
    _rewrite(val, 2, **{F.LABEL: _png(np.full((22, 24), 9))})
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "data_prep.verify", str(dataset)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{train} record 1: corrupt TFRecord data" in proc.stdout
    assert f"{val} record 2 (key val2): label values [9]" in proc.stdout
    assert "FAILED" in proc.stdout
