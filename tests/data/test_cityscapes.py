"""data_prep.cityscapes on the real sample frame (../shared/data) and on synthetic layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep.cityscapes import convert_cityscapes
from data_prep.writer import ConversionError
from tests.data.util import by_key, save_image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = "cityscapes_sample/tests/data/pseudo_cityscapes_dataset"
STEM = "frankfurt_000000_000294"
# The official labelId -> trainId table, typed in again from the data README (not imported).
OFFICIAL = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
            26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def official_train_ids(label_ids: np.ndarray) -> np.ndarray:
    out = np.full(label_ids.shape, 255, np.uint8)
    for label_id, train_id in OFFICIAL.items():
        out[label_ids == label_id] = train_id
    return out


def _quiet(_msg):
    pass


@pytest.fixture
def sample(shared_data):
    root = shared_data / SAMPLE
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


def test_sample_label_ids_become_official_train_ids(sample, tmp_path):
    manifest = convert_cityscapes(str(sample), str(tmp_path / "out"), workers=1, log=_quiet)
    assert list(manifest["splits"]) == ["val"] and manifest["num_classes"] == 19
    rec = by_key(tmp_path / "out", "val")[STEM]
    label_ids = np.array(Image.open(sample / f"gtFine/val/frankfurt/{STEM}_gtFine_labelIds.png"))
    expected = official_train_ids(label_ids)
    np.testing.assert_array_equal(rec.label, expected)
    assert rec.meta == {"city": "frankfurt", "sequence": "000000", "frame": "000294"}
    assert rec.image.shape == (128, 256, 3)
    counts = np.bincount(expected.ravel(), minlength=256)
    assert manifest["splits"]["val"]["pixel_counts"] == counts[:19].tolist()
    assert manifest["splits"]["val"]["ignored_pixels"] == int(counts[255])
    # The fixture's own labelTrainIds were downscaled separately: <= 0.3 % may differ (data README).
    fixture = np.array(Image.open(sample / f"gtFine/val/frankfurt/{STEM}_gtFine_labelTrainIds.png"))
    assert (fixture != rec.label).mean() < 0.003


def test_sample_label_train_ids_option_reads_them_unchanged(sample, tmp_path):
    convert_cityscapes(str(sample), str(tmp_path / "out"), label_type="labelTrainIds", workers=1, log=_quiet)
    rec = by_key(tmp_path / "out", "val")[STEM]
    fixture = np.array(Image.open(sample / f"gtFine/val/frankfurt/{STEM}_gtFine_labelTrainIds.png"))
    np.testing.assert_array_equal(rec.label, fixture)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["label_type"] == "labelTrainIds"


def _synthetic(root, split, city, frame, label):
    stem = f"{city}_000001_{frame}"
    save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", np.zeros(label.shape + (3,)))
    save_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
    return stem


def test_every_label_id_maps_and_only_present_splits_convert(tmp_path):
    every = np.arange(35, dtype=np.uint8).reshape(5, 7)  # ids 0..33 and one unused id 34
    a = _synthetic(tmp_path / "src", "train", "aachen", "000019", every)
    b = _synthetic(tmp_path / "src", "train", "bochum", "000020", every.T.copy())
    manifest = convert_cityscapes(str(tmp_path / "src"), str(tmp_path / "out"), workers=1, log=_quiet)
    assert list(manifest["splits"]) == ["train"]
    recs = by_key(tmp_path / "out", "train")
    assert list(recs) == [a, b]
    np.testing.assert_array_equal(recs[a].label, official_train_ids(every))
    assert recs[b].meta["city"] == "bochum"
    assert manifest["splits"]["train"]["pixel_counts"] == [2] * 19


def test_missing_label_file_and_bad_name_are_reported(tmp_path):
    src = tmp_path / "src"
    _synthetic(src, "val", "ulm", "000003", np.zeros((4, 4)))
    save_image(src / "leftImg8bit/val/ulm/ulm_000001_000004_leftImg8bit.png", np.zeros((4, 4, 3)))
    save_image(src / "leftImg8bit/val/ulm/ulm_badname_leftImg8bit.png", np.zeros((4, 4, 3)))
    with pytest.raises(ConversionError) as err:
        convert_cityscapes(str(src), str(tmp_path / "out"), workers=1, log=_quiet)
    msg = str(err.value)
    assert f"{src}/gtFine/val/ulm/ulm_000001_000004_gtFine_labelIds.png: label file of" in msg
    assert f"{src}/leftImg8bit/val/ulm/ulm_badname_leftImg8bit.png: name is not" in msg
    assert not (tmp_path / "out").exists()


def test_truncated_image_is_reported_with_its_path(tmp_path):
    src = tmp_path / "src"
    stem = _synthetic(src, "val", "ulm", "000003", np.zeros((40, 40)))
    img = src / f"leftImg8bit/val/ulm/{stem}_leftImg8bit.png"
    save_image(img, np.random.default_rng(0).integers(0, 256, (40, 40, 3)))
    img.write_bytes(img.read_bytes()[:-200])
    with pytest.raises(ConversionError, match=f"{img}: the image cannot be decoded"):
        convert_cityscapes(str(src), str(tmp_path / "out"), workers=1, log=_quiet)
    assert not (tmp_path / "out").exists()


def test_cli_bad_src_exits_1_with_the_layout(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "data_prep.cityscapes", f"--src={tmp_path}", f"--out={tmp_path}/o"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert proc.returncode == 1
    assert "leftImg8bit" in proc.stderr and "is not a directory" in proc.stderr
