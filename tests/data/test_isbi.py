"""data_prep.isbi on the real 30 ISBI 2012 slices (../shared/data) and on synthetic layouts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_prep.border_weights import unet_weight_map
from data_prep.isbi import convert_isbi, IsbiOptions
from data_prep.verify import verify_dataset
from data_prep.writer import ConversionError
from tests.data.util import by_key, link, save_image

MEMBRANE, CELL = 1727250, 6137070  # pixels of 0 and 255 over all 30 labels (data README)


def _quiet(_msg):
    pass


@pytest.fixture
def membrane(shared_data):
    root = shared_data / "isbi2012_membrane" / "data" / "membrane"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


def test_real_slices_map_0_255_to_membrane_and_cell(membrane, tmp_path):
    manifest = convert_isbi(str(membrane.parent.parent), str(tmp_path / "out"), workers=1, log=_quiet)
    assert manifest["class_names"] == ["membrane", "cell"] and manifest["num_classes"] == 2
    assert {s: e["num_examples"] for s, e in manifest["splits"].items()} == {"train": 25, "val": 5}
    assert manifest["source"]["val_slices"] == [25, 26, 27, 28, 29]
    recs = {**by_key(tmp_path / "out", "train"), **by_key(tmp_path / "out", "val")}
    assert sorted(recs, key=int) == [str(k) for k in range(30)]
    for k in (0, 17, 29):
        src = np.array(Image.open(membrane / "train" / "label" / f"{k}.png"))
        np.testing.assert_array_equal(recs[str(k)].label, (src == 255).astype(np.uint8))
        assert recs[str(k)].image.shape == (512, 512, 1) and recs[str(k)].meta == {"slice": k}
    total = np.sum([e["pixel_counts"] for e in manifest["splits"].values()], axis=0)
    assert total.tolist() == [MEMBRANE, CELL]
    assert all(e["ignored_pixels"] == 0 for e in manifest["splits"].values())


def _layout(root, labels):
    for k, lab in enumerate(labels):
        save_image(root / "train" / "image" / f"{k}.png", np.full(lab.shape, 100 + k))
        save_image(root / "train" / "label" / f"{k}.png", lab)
    return root


def _cells(h=48, w=64):
    """Three cells (255) separated by 3-px membranes (0)."""
    lab = np.full((h, w), 255, np.uint8)
    lab[:, 20:23] = 0
    lab[24:27, 23:] = 0
    return lab


@pytest.mark.parametrize("kwargs, val", [
    (dict(val_slices="0,2-3"), [0, 2, 3]),
    (dict(val_count=2), [4, 5]),
    (dict(), [1, 2, 3, 4, 5]),  # the last 5 by default
])
def test_val_split_options(tmp_path, kwargs, val):
    _layout(tmp_path / "m", [_cells()] * 6)
    manifest = convert_isbi(str(tmp_path / "m"), str(tmp_path / "out"), workers=1, log=_quiet, **kwargs)
    assert manifest["source"]["val_slices"] == val
    assert manifest["splits"]["train"]["num_examples"] == 6 - len(val)


@pytest.mark.parametrize("kwargs, message", [
    (dict(val_slices="1-2", val_count=1), "not both"),
    (dict(val_slices="4-9"), "names slices [6, 7, 8, 9] that do not exist"),
    (dict(val_slices="x"), "cannot parse 'x'"),
    (dict(val_count=6), "--val_count must be in [0, 6)"),
])
def test_bad_split_options(tmp_path, kwargs, message):
    _layout(tmp_path / "m", [_cells()] * 6)
    with pytest.raises(ValueError) as err:
        convert_isbi(str(tmp_path / "m"), str(tmp_path / "out"), workers=1, log=_quiet, **kwargs)
    assert message in str(err.value)


def test_non_binary_label_and_missing_partner_are_errors(tmp_path):
    lab = _cells()
    lab[5:7, 5:9] = 128
    root = _layout(tmp_path / "m", [_cells(), lab, _cells()])
    with pytest.raises(ConversionError, match=f"{root}/train/label/1.png: 8 pixel\\(s\\) have values \\[128\\]"):
        convert_isbi(str(root), str(tmp_path / "out"), val_count=1, workers=1, log=_quiet)
    (root / "train" / "label" / "2.png").unlink()
    with pytest.raises(ConversionError, match=f"{root}/train/image/2.png: no label"):
        convert_isbi(str(root), str(tmp_path / "out"), val_count=1, workers=1, log=_quiet)
    assert not (tmp_path / "out").exists()


def test_border_weights_are_stored_and_verified(tmp_path):
    root = _layout(tmp_path / "m", [_cells(), _cells().T.copy(), _cells()])
    manifest = convert_isbi(str(root), str(tmp_path / "out"), val_count=1, options=IsbiOptions(border_weights=True),
                            workers=1, log=_quiet)
    assert manifest["splits"]["train"]["has_weights"] and manifest["source"]["border_weights"]["w0"] == 10.0
    rec = by_key(tmp_path / "out", "train")["1"]
    expected = unet_weight_map(_cells().T // 255, background=0, w0=10.0, sigma=5.0)
    np.testing.assert_allclose(rec.weight, expected, rtol=1e-6)
    assert rec.weight[24, 21] > 5 > rec.weight[0, 0]  # membrane between two cells vs. a cell's corner
    assert verify_dataset(str(tmp_path / "out")).ok


def test_real_slice_border_weights(membrane, tmp_path):
    root = tmp_path / "m"
    for k in (3, 4):
        for sub in ("image", "label"):
            link(membrane / "train" / sub / f"{k}.png", root / "train" / sub / f"{k - 3}.png")
    manifest = convert_isbi(str(root), str(tmp_path / "out"), val_count=0, options=IsbiOptions(border_weights=True),
                            workers=1, log=_quiet)
    assert list(manifest["splits"]) == ["train"]
    rec = by_key(tmp_path / "out", "train")["0"]
    assert rec.weight.shape == (512, 512) and rec.weight.max() > 10 > rec.weight.min() > 0
