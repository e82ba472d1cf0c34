"""data_prep.voc on the two real VOC samples (../shared/data) and a synthetic SBD .mat set."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_prep.voc import convert_voc
from data_prep.writer import ConversionError
from tests.data.util import by_key, link, save_image

SAMPLE = "voc_sample/tests/dummy_data/seg/voc"
# Histograms of the two SegmentationClass PNGs, from the data README.
GOLDEN = {
    "2007_000032": {0: 129545, 1: 4734, 15: 866, 255: 5355},
    "2007_000033": {0: 143868, 1: 30937, 255: 8195},
}


def _quiet(_msg):
    pass


@pytest.fixture
def voc(shared_data, tmp_path):
    """A VOCdevkit/VOC2012 layout in tmp_path made of symlinks to the sample's files."""
    sample = shared_data / SAMPLE
    if not sample.is_dir():
        pytest.skip(f"{sample} not found")
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for stem in GOLDEN:
        link(sample / "JPEGImages" / f"{stem}.jpg", root / "JPEGImages" / f"{stem}.jpg")
        link(sample / "SegmentationClass" / f"{stem}.png", root / "SegmentationClass" / f"{stem}.png")
    for split in ("train", "val"):
        link(sample / f"{split}.txt", root / "ImageSets" / "Segmentation" / f"{split}.txt")
    return root


def test_sample_palette_masks_keep_their_indices(voc, tmp_path):
    manifest = convert_voc(str(tmp_path / "VOCdevkit"), str(tmp_path / "out"), workers=1, log=_quiet)
    assert manifest["num_classes"] == 21 and manifest["ignore_label"] == 255
    assert manifest["palette"][15] == [192, 128, 128] and manifest["palette"][1] == [128, 0, 0]
    train, val = by_key(tmp_path / "out", "train"), by_key(tmp_path / "out", "val")
    assert sorted(train) == ["2007_000032", "2007_000033"] and list(val) == ["2007_000033"]
    for stem, hist in GOLDEN.items():
        label = train[stem].label  # decoded from the record with tf.io.decode_png
        values, counts = np.unique(label, return_counts=True)
        assert dict(zip(values.tolist(), counts.tolist())) == hist
        np.testing.assert_array_equal(label, np.array(Image.open(voc / "SegmentationClass" / f"{stem}.png")))
        assert train[stem].image_format == "jpeg" and train[stem].meta == {"source": "voc"}
    assert set(np.unique(train["2007_000032"].label)) == {0, 1, 15, 255}
    assert set(np.unique(val["2007_000033"].label)) == {0, 1, 255}
    counts = manifest["splits"]["val"]["pixel_counts"]
    assert counts[0] == 143868 and counts[1] == 30937 and sum(counts) == 143868 + 30937
    assert manifest["splits"]["val"]["ignored_pixels"] == 8195


def _mat(path, seg):
    from scipy import io as sio

    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), {"GTcls": {"Segmentation": np.asarray(seg, np.uint8),
                                      "Boundaries": np.zeros(1), "CategoriesPresent": np.array([1])}})


def test_sbd_adds_train_aug_without_voc_val(voc, tmp_path):
    sbd = tmp_path / "sbd"
    seg = np.zeros((30, 40), np.uint8)
    seg[5:20, 10:30] = 7
    _mat(sbd / "cls" / "2008_000123.mat", seg)
    save_image(sbd / "img" / "2008_000123.jpg", np.full((30, 40, 3), 90))
    _mat(sbd / "cls" / "2007_000033.mat", np.full((366, 500), 3))  # VOC val: must stay out
    _mat(sbd / "cls" / "2007_000032.mat", np.full((281, 500), 4))  # VOC train: VOC's own mask wins
    (sbd / "train.txt").write_text("2007_000033\n2008_000123\n")
    (sbd / "val.txt").write_text("2007_000032\n")
    logs = []
    manifest = convert_voc(str(voc), str(tmp_path / "out"), sbd=str(sbd), workers=1, log=logs.append)
    aug = by_key(tmp_path / "out", "train_aug")
    # The sample's VOC train list also holds its val image (data README); train_aug drops it.
    assert list(aug) == ["2007_000032", "2008_000123"]
    assert aug["2007_000032"].meta == {"source": "voc"} and set(np.unique(aug["2007_000032"].label)) == {0, 1, 15, 255}
    assert aug["2008_000123"].meta == {"source": "sbd"}
    np.testing.assert_array_equal(aug["2008_000123"].label, seg)
    assert manifest["splits"]["train_aug"]["num_examples"] == 2 and manifest["source"]["sbd"]
    assert any("2 already in VOC train or val, 1 added" in m for m in logs)


def test_truncated_sbd_mat_is_reported_with_its_path(voc, tmp_path):
    sbd = tmp_path / "sbd"
    _mat(sbd / "cls" / "2008_000001.mat", np.zeros((30, 40)))
    bad = sbd / "cls" / "2008_000001.mat"
    bad.write_bytes(bad.read_bytes()[:100])
    save_image(sbd / "img" / "2008_000001.jpg", np.zeros((30, 40, 3)))
    with pytest.raises(ConversionError, match=f"{bad}: the .mat file cannot be read"):
        convert_voc(str(voc), str(tmp_path / "out"), sbd=str(sbd), workers=1, log=_quiet)
    assert not (tmp_path / "out").exists()


def test_bad_list_lines_and_missing_files_name_file_and_line(voc, tmp_path):
    lst = voc / "ImageSets" / "Segmentation" / "train.txt"
    lst.unlink()
    lst.write_text("2007_000032\n2007_000033 extra\n\n2007_999999\n2007_000032\n")
    with pytest.raises(ConversionError) as err:
        convert_voc(str(voc), str(tmp_path / "out"), workers=1, log=_quiet)
    msg = str(err.value)
    assert f"{lst}:2: expected one image id" in msg
    assert f"{lst}:5: id '2007_000032' repeats line 1" in msg
    assert f"{voc}/JPEGImages/2007_999999.jpg: not found (listed in {lst})" in msg


def test_mask_of_wrong_size_is_reported(voc, tmp_path):
    mask = voc / "SegmentationClass" / "2007_000033.png"
    mask.unlink()
    im = Image.fromarray(np.zeros((300, 500), np.uint8), mode="L").convert("P")
    im.save(mask)
    with pytest.raises(ConversionError, match=f"{mask}: mask size 500x300 \\(WxH\\) differs from its image"):
        convert_voc(str(voc), str(tmp_path / "out"), workers=1, log=_quiet)
