"""Evaluation by group (``evaluate --group_by=FIELD``): each group's scores are those of its images alone."""

import dataclasses
import functools
import json

import numpy as np
import pytest

import keras
import keras_seg
from data_prep.folder import FolderOptions, load_folder_item, pair_folder
from data_prep.writer import DatasetInfo, write_dataset
from keras_seg.data import DataConfig, make_dataset
from keras_seg.inference import InferenceConfig
from keras_seg.training import evaluate, format_group_table, scores_to_json
from tests.data.fixtures import write_pair

NAMES = ["a", "b", "c"]
# Seven val images of two drives, interleaved, so a batch of 3 mixes them.
SEQUENCES = ["A", "B", "A", "A", "B", "A", "B"]


def _convert(src, out, keep=None):
    """The val images of ``src`` (those of the sequences in ``keep``, default all) as TFRecords in ``out``."""
    items = [dataclasses.replace(it, meta={"sequence": seq, "frame": i})
             for i, (it, seq) in enumerate(zip(pair_folder(str(src / "images/val"), str(src / "masks/val")),
                                               SEQUENCES))]
    items = [it for it in items if keep is None or it.meta["sequence"] in keep]
    info = DatasetInfo(name="groups", num_classes=3, class_names=NAMES, ignore_label=255,
                       palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]])
    write_dataset(str(out), {"val": items}, functools.partial(load_folder_item, opts=FolderOptions()), info,
                  workers=1, log=lambda m: None)
    return str(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("groups")
    for i in range(len(SEQUENCES)):
        write_pair(root / "src", "val", f"v{i}", h=32, w=32, seed=i)
    keras.utils.set_random_seed(0)
    model = keras_seg.build_model("unet", 3, **keras_seg.tiny_options("unet"))
    return {"model": model, "all": _convert(root / "src", root / "all"),
            "A": _convert(root / "src", root / "a", {"A"}), "B": _convert(root / "src", root / "b", {"B"})}


def _dataset(data_dir, batch=1, with_meta=True):
    return make_dataset(DataConfig(data_dir, "val", batch, False, with_meta=with_meta))


@pytest.mark.parametrize("batch", [1, 3])
def test_each_group_scores_as_its_images_alone(data, batch):
    model = data["model"]
    grouped = evaluate(model, _dataset(data["all"], batch), 3, 255, group_by="sequence")
    assert list(grouped["groups"]) == ["A", "B"]
    assert [g["num_images"] for g in grouped["groups"].values()] == [4, 3]
    for seq in ("A", "B"):  # the plain path over a dataset of only that drive's records
        alone = evaluate(model, _dataset(data[seq], with_meta=False), 3, 255)
        np.testing.assert_array_equal(grouped["groups"][seq]["confusion_matrix"], alone["confusion_matrix"])
        assert grouped["groups"][seq]["mean_iu"] == pytest.approx(alone["mean_iu"])
    whole = evaluate(model, _dataset(data["all"], with_meta=False), 3, 255)
    np.testing.assert_array_equal(grouped["confusion_matrix"], whole["confusion_matrix"])
    assert grouped["mean_iu"] == pytest.approx(whole["mean_iu"])
    assert grouped["groups"]["A"]["mean_iu"] != pytest.approx(grouped["groups"]["B"]["mean_iu"])


def test_groups_under_test_time_augmentation(data):
    model, flip = data["model"], InferenceConfig(scales=(1.0, 0.5), flip=True)
    grouped = evaluate(model, _dataset(data["all"]), 3, 255, inference=flip, group_by="sequence")
    alone = evaluate(model, _dataset(data["B"], with_meta=False), 3, 255, inference=flip)
    np.testing.assert_array_equal(grouped["groups"]["B"]["confusion_matrix"], alone["confusion_matrix"])
    plain = evaluate(model, _dataset(data["all"]), 3, 255, group_by="sequence")
    assert not np.array_equal(grouped["confusion_matrix"], plain["confusion_matrix"])  # flip did run


def test_json_record_and_table(data):
    scores = evaluate(data["model"], _dataset(data["all"]), 3, 255, group_by="sequence")
    record = json.loads(json.dumps(scores_to_json(scores, NAMES, 7)))
    assert record["step"] == 7 and sorted(record["groups"]) == ["A", "B"]
    b = record["groups"]["B"]
    assert b["num_images"] == 3 and "step" not in b
    assert b["mean_iu"] == pytest.approx(scores["groups"]["B"]["mean_iu"])
    assert np.sum(b["confusion_matrix"]) + np.sum(record["groups"]["A"]["confusion_matrix"]) == \
        np.sum(record["confusion_matrix"])
    lines = format_group_table(scores, NAMES, "sequence").splitlines()
    assert lines[0].split() == ["sequence", "images", "mean_iu", "acc", "acc_cls", "a", "b", "c"]
    assert [line.split()[:2] for line in lines[1:]] == [["A", "4"], ["B", "3"], ["all", "7"]]
    assert lines[2].split()[2] == f"{100 * scores['groups']['B']['mean_iu']:.1f}"


def test_bad_group_requests_are_refused(data):
    with pytest.raises(ValueError, match=r"record 'v0' has no 'city' in its image/meta \(it has \['frame', "
                                         r"'sequence'\]\)"):
        evaluate(data["model"], _dataset(data["all"]), 3, 255, group_by="city")
    with pytest.raises(ValueError, match="with_meta=True"):
        evaluate(data["model"], _dataset(data["all"], with_meta=False), 3, 255, group_by="sequence")
    with pytest.raises(ValueError, match="evaluation datasets"):
        make_dataset(DataConfig(data["all"], "val", 1, True, with_meta=True))
