"""Instance converters: COCO (pycocotools), Cityscapes instanceIds, VOC SegmentationObject."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep.cityscapes_instances import convert_cityscapes_instances
from data_prep.coco import convert_coco
from data_prep.images import DataError
from data_prep.voc_instances import convert_voc_instances
from data_prep.writer import ConversionError, default_palette
from keras_seg.data.preprocess import normalize_image
from keras_seg.detection.data import drop_crowd, make_instance_dataset
from tests.data.util import link, save_image
from tests.detection.instance_util import read_instances, tight_boxes

CITY = "cityscapes_sample/tests/data/pseudo_cityscapes_dataset"
STEM = "frankfurt_000000_000294"
# labelId -> class of the 8 Cityscapes instance classes, typed in again (not imported).
CITY_CLASSES = {24: 1, 25: 2, 26: 3, 27: 4, 28: 5, 31: 6, 32: 7, 33: 8}


def _quiet(_msg):
    pass


# ---------------------------------------------------------------- COCO


def _polygon_mask(h, w, poly):
    from pycocotools import mask as mask_utils

    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w)))


def _coco_source(tmp_path):
    """Two images; categories 10, 3, 7 (unsorted); polygon, compressed RLE, crowd uncompressed RLE."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for name, (h, w) in (("a.png", (20, 30)), ("b.png", (16, 12))):
        save_image(tmp_path / "images" / "val" / name, rng.integers(0, 255, (h, w, 3)))
    rle_mask = np.zeros((20, 30), np.uint8)
    rle_mask[2:9, 14:27] = 1
    rle_mask[5, 14:20] = 0
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode("ascii")
    crowd = np.zeros((20, 30), np.uint8)
    crowd[12:19, 0:10] = 1
    counts, prev, run = [], 0, 0
    for v in crowd.ravel(order="F"):  # uncompressed RLE, column-major runs starting with zeros
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    data = {
        "images": [{"id": 5, "file_name": "a.png", "height": 20, "width": 30},
                   {"id": 9, "file_name": "b.png", "height": 16, "width": 12}],
        "categories": [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 10, "iscrowd": 0,
             "segmentation": [[1.0, 1.0, 11.0, 1.0, 11.0, 8.0, 1.0, 8.0]]},
            {"id": 2, "image_id": 5, "category_id": 3, "iscrowd": 0, "segmentation": rle},
            {"id": 3, "image_id": 5, "category_id": 7, "iscrowd": 1,
             "segmentation": {"size": [20, 30], "counts": counts}},
        ],
    }
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps(data))
    return ann, rle_mask, crowd


def test_coco_round_trip(tmp_path):
    ann, rle_mask, crowd = _coco_source(tmp_path)
    manifest = convert_coco([str(ann)], str(tmp_path / "images"), str(tmp_path / "out"), workers=1, log=_quiet)
    assert manifest["class_names"] == ["three", "seven", "ten"] and manifest["category_ids"] == [3, 7, 10]
    split = manifest["splits"]["val"]
    assert split["num_instances"] == 3 and split["num_crowd"] == 1 and split["images_without_instances"] == 1
    assert split["instance_counts"] == [1, 0, 1] and split["crowd_counts"] == [0, 1, 0]
    got = read_instances(tmp_path / "out", "val")
    a, b = got["a"], got["b"]
    poly = _polygon_mask(20, 30, [1.0, 1.0, 11.0, 1.0, 11.0, 8.0, 1.0, 8.0])
    np.testing.assert_array_equal(a["masks"], np.stack([poly, rle_mask, crowd]))
    np.testing.assert_array_equal(a["classes"], [3, 1, 2])  # ids 10, 3, 7 -> sorted order
    np.testing.assert_array_equal(a["is_crowd"], [0, 0, 1])
    np.testing.assert_array_equal(a["boxes"], tight_boxes(a["masks"]))
    np.testing.assert_array_equal(a["boxes"][1:], [[2, 14, 9, 27], [12, 0, 19, 10]])
    assert a["image"].shape == (20, 30, 3)
    assert b["masks"].shape == (0, 16, 12) and b["boxes"].shape == (0, 4) and b["classes"].shape == (0,)
    kept = drop_crowd({k: tf.constant(v) for k, v in a.items()})
    np.testing.assert_array_equal(kept["classes"].numpy(), [3, 1])
    np.testing.assert_array_equal(kept["masks"].numpy(), a["masks"][:2])


def test_coco_dataset_keeps_crowd_when_asked(tmp_path):
    ann, _, _ = _coco_source(tmp_path)
    convert_coco([str(ann)], str(tmp_path / "images"), str(tmp_path / "out"), workers=1, log=_quiet)
    a = read_instances(tmp_path / "out", "val")["a"]
    ds = make_instance_dataset(str(tmp_path / "out"), "val", 2, (20, 30), 4, training=False, include_crowd=True)
    features, labels = next(iter(ds))  # images in id order: a (20x30, kept as is), b (16x12 -> 20x15)
    np.testing.assert_array_equal(labels["gt_classes"].numpy(), [[3, 1, 2, -1], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(labels["gt_is_crowd"].numpy()[0], [0, 0, 1, 0])
    np.testing.assert_array_equal(labels["gt_masks"].numpy()[0, :3], a["masks"])
    np.testing.assert_array_equal(labels["gt_boxes"].numpy()[0, :3], a["boxes"])
    np.testing.assert_array_equal(labels["image_hw"].numpy(), [[20, 30], [20, 15]])
    np.testing.assert_allclose(features["image"].numpy()[0], normalize_image(a["image"]).numpy(), atol=1e-5)


def test_coco_category_outside_the_categories_is_named(tmp_path):
    ann, _, _ = _coco_source(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][1]["category_id"] = 4
    ann.write_text(json.dumps(data))
    with pytest.raises(ConversionError, match=r"instances_val.json: annotation 2 has category_id=4"):
        convert_coco([str(ann)], str(tmp_path / "images"), str(tmp_path / "out"), workers=1, log=_quiet)


@pytest.mark.parametrize("content,problem", [
    ("", "cannot read the annotations as JSON"),
    ('{"images": [], "annotations": [], "categories": []}', "lists no images"),
    ('{"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}], "annotations": [], '
     '"categories": [{"id": 1, "name": "x"}]}', "annotations list is empty"),
])
def test_coco_empty_annotations_file_is_named(tmp_path, content, problem):
    ann = tmp_path / "instances_val.json"
    ann.write_text(content)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=f"{ann}: .*{problem}"):
        convert_coco([str(ann)], str(tmp_path / "images"), str(tmp_path / "out"), log=_quiet)


def test_coco_missing_files_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    missing = tmp_path / "instances_train.json"
    with pytest.raises(DataError, match=f"{missing}: annotations file not found"):
        convert_coco([str(missing)], str(tmp_path / "images"), str(tmp_path / "out"), log=_quiet)
    ann, _, _ = _coco_source(tmp_path)
    os.remove(tmp_path / "images" / "val" / "b.png")
    with pytest.raises(ConversionError, match="b.png: image 9 of .*instances_val.json not found"):
        convert_coco([str(ann)], str(tmp_path / "images"), str(tmp_path / "out"), log=_quiet)


# ---------------------------------------------------------------- Cityscapes


@pytest.fixture
def city_src(shared_data, tmp_path):
    root = shared_data / CITY
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    src = tmp_path / "src"
    for rel in (f"leftImg8bit/val/frankfurt/{STEM}_leftImg8bit.png", f"gtFine/val/frankfurt/{STEM}_gtFine_instanceIds.png"):
        link(root / rel, src / rel)
    return src


def test_cityscapes_sample_round_trip(city_src, tmp_path):
    manifest = convert_cityscapes_instances(str(city_src), str(tmp_path / "out"), workers=1, log=_quiet)
    ids = np.array(Image.open(city_src / f"gtFine/val/frankfurt/{STEM}_gtFine_instanceIds.png")).astype(np.int64)
    want_masks, want_classes, want_crowd = [], [], []
    for v in sorted(set(ids.ravel().tolist())):
        label = v // 1000 if v >= 1000 else v
        if label in CITY_CLASSES:
            want_masks.append(ids == v)
            want_classes.append(CITY_CLASSES[label])
            want_crowd.append(int(v < 1000))
    assert sum(c == 1 and not k for c, k in zip(want_classes, want_crowd)) == 4  # person 24000..24003 (README)
    assert sum(c == 3 and not k for c, k in zip(want_classes, want_crowd)) == 3  # car 26000..26002
    ex = read_instances(tmp_path / "out", "val")[STEM]
    np.testing.assert_array_equal(ex["masks"], np.stack(want_masks).astype(np.uint8))
    np.testing.assert_array_equal(ex["classes"], want_classes)
    np.testing.assert_array_equal(ex["is_crowd"], want_crowd)
    np.testing.assert_array_equal(ex["boxes"], tight_boxes(np.stack(want_masks)))
    assert ex["image"].shape == (128, 256, 3)
    assert manifest["splits"]["val"]["num_instances"] == len(want_classes)
    assert manifest["class_names"][0] == "person" and len(manifest["class_names"]) == 8


def test_cityscapes_bad_instance_id_is_named(tmp_path):
    src = tmp_path / "src"
    save_image(src / "leftImg8bit/val/aachen/aachen_000000_000001_leftImg8bit.png", np.zeros((6, 8, 3)))
    ids = np.full((6, 8), 7, np.uint16)
    ids[1:3, 1:3] = 26001
    ids[4, 4] = 99  # not a labelId
    path = src / "gtFine/val/aachen/aachen_000000_000001_gtFine_instanceIds.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(ids).save(path)
    with pytest.raises(ConversionError, match=rf"{path}: instance id value\(s\) \[99\]"):
        convert_cityscapes_instances(str(src), str(tmp_path / "out"), workers=1, log=_quiet)


# ---------------------------------------------------------------- VOC


def _palette_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette([v for c in default_palette(256) for v in c])
    im.save(path)


def _voc_source(tmp_path):
    root = tmp_path / "VOC2012"
    objects = np.zeros((10, 14), np.uint8)
    classes = np.zeros((10, 14), np.uint8)
    objects[1:5, 1:6], classes[1:5, 1:6] = 1, 15  # person
    objects[5:9, 6:13], classes[5:9, 6:13] = 2, 1  # aeroplane
    objects[4:6, 6:8], classes[4:6, 6:8] = 255, 255  # border, no instance
    objects[1:3, 9:12], classes[1:3, 9:12] = 3, 15  # second person
    save_image(root / "JPEGImages" / "2007_000001.jpg", np.full((10, 14, 3), 90))
    _palette_png(root / "SegmentationObject" / "2007_000001.png", objects)
    _palette_png(root / "SegmentationClass" / "2007_000001.png", classes)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n")
    return root, objects, classes


def test_voc_round_trip(tmp_path):
    root, objects, _ = _voc_source(tmp_path)
    manifest = convert_voc_instances(str(root), str(tmp_path / "out"), workers=1, log=_quiet)
    assert manifest["class_names"][0] == "aeroplane" and manifest["class_names"][14] == "person"
    ex = read_instances(tmp_path / "out", "train")["2007_000001"]
    want = np.stack([objects == k for k in (1, 2, 3)]).astype(np.uint8)
    np.testing.assert_array_equal(ex["masks"], want)
    np.testing.assert_array_equal(ex["classes"], [15, 1, 15])
    np.testing.assert_array_equal(ex["boxes"], [[1, 1, 5, 6], [5, 6, 9, 13], [1, 9, 3, 12]])
    np.testing.assert_array_equal(ex["is_crowd"], [0, 0, 0])


def test_voc_instance_with_disagreeing_classes_is_refused(tmp_path):
    root, objects, classes = _voc_source(tmp_path)
    classes[6, 6:9] = 7  # part of instance 2 says car
    _palette_png(root / "SegmentationClass" / "2007_000001.png", classes)
    path = root / "SegmentationObject" / "2007_000001.png"
    with pytest.raises(ConversionError, match=rf"{path}: instance 2's pixels disagree.*\{{1: 23, 7: 3\}}"):
        convert_voc_instances(str(root), str(tmp_path / "out"), workers=1, log=_quiet)


def test_voc_real_sample_if_it_has_object_masks(shared_data, tmp_path):
    voc = shared_data / "voc_sample/tests/dummy_data/seg/voc"
    if not (voc / "SegmentationObject").is_dir():
        pytest.skip("the VOC sample has no SegmentationObject/ (data README)")
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass"):
        link(voc / sub, root / sub)
    link(voc / "train.txt", root / "ImageSets" / "Segmentation" / "train.txt")
    convert_voc_instances(str(root), str(tmp_path / "out"), splits=["train"], workers=1, log=_quiet)
    for key, ex in read_instances(tmp_path / "out", "train").items():
        objects = np.array(Image.open(voc / "SegmentationObject" / f"{key}.png"))
        ks = [k for k in np.unique(objects) if k not in (0, 255)]
        np.testing.assert_array_equal(ex["masks"], np.stack([objects == k for k in ks]).astype(np.uint8))
        np.testing.assert_array_equal(ex["boxes"], tight_boxes(ex["masks"]))
