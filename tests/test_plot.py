"""Learning curves from the trainer's TensorBoard files (python -m keras_seg.plot)."""

import csv
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from keras_seg.options import TrainConfig
from keras_seg.plot import curves
from keras_seg.training import train
from tests.data.fixtures import make_converted_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plot_draws_the_runs_curves_and_writes_the_eval_csv(tmp_path):
    data_dir = make_converted_dataset(str(tmp_path), n_train=4, n_val=2)
    cfg = TrainConfig(model="unet", num_classes=3, data_dir=data_dir, model_dir=str(tmp_path / "run"),
                      model_options={"base_width": 4, "depth": 2}, crop_size=(16, 16), batch_size=2, train_steps=6,
                      log_every=2, eval_every=3, checkpoint_every=3, strategy="one_device", eval_images=2)
    cfg.validate()
    train(cfg, log=lambda m: None)
    data = curves(str(tmp_path / "run"))
    assert [s for s, _, _ in data["train"]["loss"]] == [2, 4, 6]
    assert [s for s, _, _ in data["eval"]["mean_iu"]] == [3, 6]
    assert {"iou/a", "iou/b", "iou/c"} <= set(data["eval"])  # per-class IoU scalars
    tags = set()
    import tensorflow as tf

    for path in (tmp_path / "run" / "eval").glob("events.out.tfevents.*"):
        for raw in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    tags.add((value.tag, event.step))
                    width, height = (int(b) for b in tf.make_ndarray(value.tensor)[:2])
                    assert width > 100 and height > 100  # a real picture, not an empty one
    assert tags == {("eval/sheet", 3), ("eval/confusion_matrix", 3), ("eval/sheet", 6), ("eval/confusion_matrix", 6)}
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "keras_seg.plot", f"--model_dir={tmp_path / 'run'}",
                        f"--csv={tmp_path / 'c.csv'}"], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    with Image.open(tmp_path / "run" / "curves.png") as im:
        assert im.format == "PNG" and im.size[0] > 400
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    for row in rows:
        rec = json.loads((tmp_path / "run" / "eval" / f"metrics-{int(row['step']):08d}.json").read_text())
        assert float(row["mean_iu"]) == pytest.approx(rec["mean_iu"], abs=1e-4)
        assert 0 <= float(row["hours"]) < 1
    # evaluate writes its pictures next to its JSON.
    r = subprocess.run([sys.executable, "-m", "keras_seg.evaluate", f"--model_dir={tmp_path / 'run'}",
                        "--sheet_images=2", "--scales=1,1.5", "--flip"], capture_output=True, text=True, timeout=300,
                       cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    stem = tmp_path / "run" / "eval" / "evaluate-val-00000006-s1_1.5-flip"
    assert json.loads(open(f"{stem}.json").read())["inference"]["flip"] is True
    for suffix in ("-confusion.png", "-iou.png", "-sheet.png"):
        with Image.open(f"{stem}{suffix}") as im:
            assert im.format == "PNG" and min(im.size) > 100, suffix
    # --group_by reaches the records: the folder converter's have no metadata, which is refused by name.
    r = subprocess.run([sys.executable, "-m", "keras_seg.evaluate", f"--model_dir={tmp_path / 'run'}",
                        "--group_by=sequence", "--nopictures"], capture_output=True, text=True, timeout=300,
                       cwd=REPO, env=env)
    assert r.returncode == 1 and "has no 'sequence' in its image/meta (it has [])" in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "keras_seg.plot", f"--model_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 1 and "hold no TensorBoard scalars" in r.stderr


def test_eval_curve_is_labelled_with_the_runs_eval_split(tmp_path):
    from keras_seg.plot import _eval_split

    flags_txt = tmp_path / "flags.txt"
    assert _eval_split(str(flags_txt)) == "val"  # no flags.txt: the default split
    flags_txt.write_text("--model=enet\n--eval_split=train_holdout\n--eval_every=500\n")
    assert _eval_split(str(flags_txt)) == "train_holdout"
    flags_txt.write_text("--model=enet\n")
    assert _eval_split(str(flags_txt)) == "val"
