"""Mask R-CNN commands end to end on a tiny synthetic dataset: train (and resume exactly), evaluate,
predict, export; plus the COCO conversion of a perfect prediction, by hand."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from keras_seg.detection.options import DetectionEvalConfig, DetectionExportConfig, DetectionPredictConfig, \
    DetectionTrainConfig

# width 16, not 8: 8 trips TF 2.21's oneDNN 1x1 stride-2 weight-gradient bug on AVX-512 (README, Known issues).
TINY = dict(
    image_size=(64, 64), max_instances=8, backbone_blocks=(1, 1, 1, 1), backbone_width=16, fpn_width=16,
    anchor_sizes=(8.0, 16.0, 32.0, 64.0, 128.0), rpn_batch_per_image=32, rpn_pre_nms_topk=(64, 32),
    rpn_post_nms_topk=(32, 16), roi_batch_per_image=16, box_fc_width=32, mask_width=16, mask_num_convs=1,
    max_detections=5, batch_size=2, train_steps=3, optimizer="adamw", learning_rate=1e-3, warmup_steps=1,
    log_every=1, checkpoint_every=1, eval_batch_size=4, deterministic=True,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from data_prep.shapes_instances import write_shapes_instances

    out = tmp_path_factory.mktemp("shapes_instances")
    write_shapes_instances(str(out), num_train=8, num_val=3, size=64, workers=1, log=lambda m: None)
    return str(out)


def _config(data_dir, model_dir, **overrides):
    cfg = DetectionTrainConfig(data_dir=data_dir, model_dir=str(model_dir), **{**TINY, **overrides})
    cfg.validate()
    return cfg


def _checkpoint_values(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if not name.startswith("save_counter") and "OBJECT_GRAPH" not in name}


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """An uninterrupted 3-step run that evaluates at its end: ``(model_dir, lines logged)``."""
    from keras_seg.detection.trainer import train_detector

    model_dir = tmp_path_factory.mktemp("run_a")
    lines = []
    train_detector(_config(data_dir, model_dir), flags_text="--flag=1\n", log=lines.append)
    return str(model_dir), lines


def test_training_writes_checkpoints_config_logs_and_metrics(trained):
    model_dir, lines = trained
    config = json.load(open(os.path.join(model_dir, "model_config.json")))
    assert config["task"] == "instance" and config["image_size"] == [64, 64]
    assert config["model_options"]["backbone_options"] == {"blocks": [1, 1, 1, 1], "width": 16}
    assert open(os.path.join(model_dir, "flags.txt")).read() == "--flag=1\n"
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "ckpt")).endswith("ckpt-3")
    progress = [line for line in lines if line.startswith("step ")]
    assert len(progress) == 3 and all(k in progress[-1] for k in ("rpn_objectness", "mask", "lr", "img/s", "ETA"))
    metrics = json.load(open(os.path.join(model_dir, "eval", "metrics-00000003.json")))
    assert metrics["num_images"] == 3 and 0.0 <= metrics["segm"]["AP50"] <= 1.0
    assert json.load(open(os.path.join(model_dir, "best", "best.json")))["step"] == 3
    names = {name for name, _ in tf.train.list_variables(os.path.join(model_dir, "ckpt", "ckpt-3"))}
    assert any(n.startswith("rng/rpn_loss_seed0") for n in names)  # the sampling state is saved
    assert any(n.startswith("optimizer/") for n in names)


@pytest.mark.slow  # about 30 s on 2 cores
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(data_dir, trained, tmp_path):
    from keras_seg.detection.trainer import train_detector

    cfg = _config(data_dir, tmp_path, eval_split="", steps_per_run=2)
    first = train_detector(cfg, log=lambda m: None)
    assert first.step == 2
    lines = []
    assert train_detector(cfg, log=lines.append).step == 3
    assert any(line.startswith("Resumed from") and line.endswith("at step 2.") for line in lines)
    want = _checkpoint_values(os.path.join(trained[0], "ckpt", "ckpt-3"))
    got = _checkpoint_values(os.path.join(str(tmp_path), "ckpt", "ckpt-3"))
    assert sorted(got) == sorted(want) and len(want) > 50
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_semantic_dataset_and_too_few_instance_slots_are_refused(data_dir, tmp_path):
    from keras_seg.detection.trainer import train_detector

    semantic = tmp_path / "semantic"
    semantic.mkdir()
    (semantic / "manifest.json").write_text(json.dumps({"format_version": 1, "num_classes": 2}))
    with pytest.raises(ValueError, match="'semantic' dataset, but a 'instance' one was expected"):
        train_detector(_config(str(semantic), tmp_path / "a"), log=lambda m: None)
    with pytest.raises(ValueError, match="more than --max_instances=1"):
        train_detector(_config(data_dir, tmp_path / "b", max_instances=1), log=lambda m: None)


def test_evaluate_writes_ap_in_unit_interval(trained):
    from keras_seg.detection.evaluate import run

    record = run(DetectionEvalConfig(model_dir=trained[0], split="val", batch_size=2), log=lambda m: None)
    for kind in ("bbox", "segm"):
        assert sorted(record[kind]) == ["AP", "AP50", "AP75"]
        assert all(0.0 <= v <= 1.0 for v in record[kind].values())
    assert os.path.isfile(os.path.join(trained[0], "eval", "evaluate-val-00000003.json"))


def test_predict_writes_a_picture_and_json(trained, tmp_path):
    from keras_seg.detection.predict import run

    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    run(DetectionPredictConfig(model_dir=trained[0], out_dir=str(out), min_score=0.0), [str(image)],
        log=lambda m: None)
    record = json.load(open(out / "x.json"))
    assert (record["height"], record["width"]) == (48, 80)
    assert 1 <= len(record["detections"]) <= TINY["max_detections"]
    det = record["detections"][0]
    assert det["class_name"] in ("circle", "square", "triangle") and len(det["box_yxyx"]) == 4
    picture = Image.open(out / "x_instances.png")
    assert picture.size[0] >= 80 and picture.size[0] * 48 == picture.size[1] * 80  # enlarged, same aspect


@pytest.mark.slow  # about 30 s on 2 cores
def test_export_saved_model_round_trips_and_tflite_is_checked(trained, tmp_path):
    from keras_seg.detection.export import _detect_fn, export_detector
    from keras_seg.detection.run_dir import load_detector

    report = export_detector(DetectionExportConfig(model_dir=trained[0], out_dir=str(tmp_path), parity_images=2),
                             log=lambda m: None)
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    model, config, _ = load_detector(trained[0])
    image = np.random.default_rng(3).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    want = _detect_fn(model, config)(tf.constant(image))
    for signature, x in (("serving_default", image), ("serving_float", image.astype("float32"))):
        got = served.signatures[signature](images=tf.constant(x))
        assert got["masks"].shape == (2, TINY["max_detections"], 64, 64)
        for key in ("boxes", "classes", "scores", "masks"):
            np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-4, err_msg=key)
    assert report["parity"]["summary"]["saved_model"]["classes_equal"]
    if report["tflite"]:  # converted with builtin ops: LiteRT agrees with Keras
        tflite = report["parity"]["summary"]["tflite"]
        assert tflite["classes_equal"] and max(tflite["max_abs_diff"].values()) < 1e-3, tflite
    else:  # the documented outcome otherwise: the ops that stop the conversion are named
        assert report["tflite_error"]["blocking_ops"], report["tflite_error"]


def test_blocking_ops_are_read_from_the_converter_message():
    from keras_seg.detection.export import blocking_ops

    message = ("loc(...): error: 'tf.RandomUniform' op is neither a custom op nor a flex op\n"
               "Some ops are not supported by the native TFLite runtime...\nDetails:\n"
               "\ttf.ImageProjectiveTransformV3(tensor<1x64x64x3xf32>) -> (tensor<1x64x64x3xf32>)\n")
    assert blocking_ops(message) == ["tf.ImageProjectiveTransformV3", "tf.RandomUniform"]


def test_a_perfect_prediction_converts_to_ap_one():
    """Ground truth fed back as detections through the eval conversion (un-resize, paste, threshold)."""
    from keras_seg.detection.coco_eval import evaluate_instances
    from keras_seg.detection.evaluation import to_instances

    h, w, nh, nw = 48, 80, 38, 64  # a 48x80 image resized by 0.8 into a 64x64 input: 38x64 valid
    boxes = np.array([[4, 6, 20, 30], [10, 40, 45, 75], [25, 2, 47, 20]], np.float32)  # stored pixels
    masks = np.zeros((3, h, w), np.uint8)
    for m, (y1, x1, y2, x2) in zip(masks, boxes.astype(int)):
        m[y1:y2, x1:x2] = 1  # a box-filling mask: its 28x28 crop is all ones
    classes = np.array([1, 3, 2], np.int32)
    d = 5  # padded detections, as the model returns them
    outputs = {
        "boxes": np.zeros((1, d, 4), np.float32), "classes": np.full((1, d), -1, np.int32),
        "scores": np.zeros((1, d), np.float32), "masks": np.zeros((1, d, 28, 28), np.float32)}
    outputs["boxes"][0, :3] = boxes * np.array([nh / h, nw / w, nh / h, nw / w], np.float32)
    outputs["classes"][0, :3], outputs["scores"][0, :3] = classes, (0.9, 0.8, 0.7)
    outputs["masks"][0, :3] = 1.0
    (pred,) = to_instances(outputs, np.array([[nh, nw]]), np.array([[h, w]]))
    np.testing.assert_allclose(pred["boxes"], boxes, atol=1e-4)
    np.testing.assert_array_equal(pred["masks"], masks)
    truth = [{"height": h, "width": w, "boxes": boxes, "classes": classes, "masks": masks}]
    metrics = evaluate_instances(truth, [pred], ["circle", "square", "triangle"])
    for kind in ("bbox", "segm"):  # COCOeval's 101-point average sums to 1 - 2e-16
        assert metrics[kind] == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0}, abs=1e-12), kind


def test_the_shapes_config_parses_and_validates():
    from keras_seg.cli import expand_flagfiles
    from keras_seg.flags import config_from_flags, define_flags

    values = flags.FlagValues()
    define_flags(DetectionTrainConfig, flag_values=values)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    values(["prog"] + expand_flagfiles([f"--flagfile={repo}/configs/detection/shapes_maskrcnn.cfg"]))
    cfg = config_from_flags(values, DetectionTrainConfig)
    assert cfg.backbone_blocks == (2, 2, 2, 2) and cfg.anchor_sizes[0] == 8.0 and cfg.optimizer == "adamw"
    with pytest.raises(ValueError, match="--warmup_steps must be in"):
        dataclasses.replace(cfg, warmup_steps=cfg.train_steps).validate()


def test_a_round_mask_cropped_and_pasted_back_keeps_mask_ap50_one():
    """A disk's 28x28 RoIAlign crop (the training target) pasted back overlaps it far above IoU 0.75."""
    from keras_seg.detection.coco_eval import evaluate_instances
    from keras_seg.detection.evaluation import to_instances
    from keras_seg.detection.roi_align import crop_mask_targets

    yy, xx = np.mgrid[0:64, 0:64]
    mask = (((yy + 0.5 - 30) ** 2 + (xx + 0.5 - 34) ** 2) <= 12 ** 2).astype(np.uint8)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = np.array([[rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]], np.float32)
    crop = crop_mask_targets(mask[None, None], box[None], np.zeros((1, 1), np.int32)).numpy()
    outputs = {"boxes": box[None], "classes": np.array([[1]]), "scores": np.array([[0.9]], np.float32),
               "masks": crop}
    (pred,) = to_instances(outputs, np.array([[64, 64]]), np.array([[64, 64]]))
    iou = (pred["masks"][0] & mask).sum() / (pred["masks"][0] | mask).sum()
    assert iou > 0.9, iou
    truth = [{"height": 64, "width": 64, "boxes": box, "classes": np.array([1]), "masks": mask[None]}]
    metrics = evaluate_instances(truth, [pred], ["circle"])
    assert metrics["segm"]["AP50"] == pytest.approx(1.0) and metrics["segm"]["AP75"] == pytest.approx(1.0)


def test_a_nan_loss_names_the_step_and_the_last_checkpoint(data_dir, tmp_path, monkeypatch):
    from keras_seg.detection import trainer
    from keras_seg.detection.model import LOSS_NAMES
    from keras_seg.training.loop import NonFiniteLossError

    calls = []

    def fake_step(*args, **kwargs):  # the real model and loop around a step whose second loss is NaN
        def step(iterator):
            calls.append(1)
            value = float("nan") if len(calls) == 2 else 1.0
            return {k: tf.constant(value) for k in (*LOSS_NAMES, "total")}
        return step

    monkeypatch.setattr(trainer, "make_detection_step", fake_step)
    with pytest.raises(NonFiniteLossError, match=r"is nan at step 2 .*Last good checkpoint: \S*ckpt-1;"):
        trainer.train_detector(_config(data_dir, tmp_path, eval_split=""), log=lambda m: None)
