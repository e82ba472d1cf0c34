"""Mask R-CNN builder: shapes at two sizes, a few training steps, weight transfer, names, golden counts."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_seg.detection import layers as det_layers
from keras_seg.detection.model import LOSS_NAMES, build_mask_rcnn, inference_model_from, transfer_weights

# width 16, not 8: 8 trips TF 2.21's oneDNN 1x1 stride-2 weight-gradient bug on AVX-512 (README, Known issues).
TINY = dict(
    backbone="resnet18", backbone_options=dict(blocks=(1, 1, 1, 1), width=16), fpn_width=16, box_fc_width=32,
    mask_width=16, mask_num_convs=2, rpn_batch_per_image=32, rpn_pre_nms_topk=(64, 32), rpn_post_nms_topk=(32, 16),
    roi_batch_per_image=16, max_instances=2, max_detections=5,
)
NUM_CLASSES = 3


def _batch(height, width, batch=1):
    """One bright square instance of class 2 per image, and an empty gt slot."""
    image = np.zeros((batch, height, width, 3), "float32")
    image[:, 16:48, 12:44] = 1.0
    masks = np.zeros((batch, 2, height, width), "uint8")
    masks[:, 0, 16:48, 12:44] = 1
    return {
        "image": image,
        "gt_boxes": np.tile(np.array([[[16, 12, 48, 44], [0, 0, 0, 0]]], "float32"), (batch, 1, 1)),
        "gt_classes": np.tile(np.array([[2, -1]], "int32"), (batch, 1)),
        "gt_masks": masks,
    }


@pytest.fixture(scope="module")
def train_model():
    keras.utils.set_random_seed(0)
    return build_mask_rcnn(NUM_CLASSES, (64, 64, 3), **TINY)


def test_train_mode_returns_five_finite_scalar_losses(train_model):
    losses = train_model(_batch(64, 64, batch=2), training=True)
    assert sorted(losses) == sorted(LOSS_NAMES)
    for name, value in losses.items():
        assert value.shape == () and np.isfinite(float(value)), name


def test_train_mode_at_a_non_square_size():
    model = build_mask_rcnn(NUM_CLASSES, (96, 64, 3), **TINY)
    losses = model(_batch(96, 64), training=True)
    assert all(np.isfinite(float(v)) for v in losses.values())


def _reset_sampling(model, seed=5):
    """Puts both target-sampling generators back to ``[seed, 0]``: the next call samples as the last."""
    generators = [layer.seed_generator for layer in model.layers
                  if isinstance(layer, (det_layers.RpnLosses, det_layers.RoiSampler))]
    assert len(generators) == 2
    for g in generators:
        g.state.assign(tf.constant([seed, 0], g.state.dtype))


def test_adam_steps_lower_the_losses():
    keras.utils.set_random_seed(1)
    model = build_mask_rcnn(NUM_CLASSES, (64, 64, 3), **TINY)
    optimizer = keras.optimizers.Adam(1e-3)
    batch = _batch(64, 64)
    history = []
    for _ in range(4):  # eagerly: tracing the whole train step costs more than these few steps
        _reset_sampling(model)  # the same anchor sample every step
        with tf.GradientTape() as tape:
            losses = model(batch, training=True)
            loss = tf.add_n(list(losses.values()))
        history.append({k: float(v) for k, v in losses.items()})
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    assert all(np.isfinite(list(h.values())).all() for h in history), history
    # The box-head loss is left out: its RoIs are the RPN's proposals, which change as the RPN
    # learns; early on more proposals overlap the gt and enter as foreground with non-zero box
    # targets, so it may rise while the total of the rest falls.
    for name in ("rpn_objectness", "classification", "mask"):
        assert history[-1][name] < history[0][name], (name, history)
    rest = [sum(v for k, v in h.items() if k != "box") for h in history]
    assert rest[-1] < rest[0], history


def test_sampling_is_reproducible_from_the_seed(train_model):
    batch = _batch(64, 64)
    _reset_sampling(train_model, seed=7)
    first = [float(v) for v in train_model(batch).values()]
    second = [float(v) for v in train_model(batch).values()]
    _reset_sampling(train_model, seed=7)
    assert [float(v) for v in train_model(batch).values()] == first
    assert second != first  # the generators advanced: other anchors and RoIs were drawn


@pytest.fixture(scope="module")
def inference_model(train_model):
    return inference_model_from(train_model, input_shape=(96, 64, 3), image_masks=True)


def _check_detections(out, batch, height, width):
    d = TINY["max_detections"]
    shapes = {"boxes": (batch, d, 4), "classes": (batch, d), "scores": (batch, d), "masks": (batch, d, 28, 28)}
    if "image_masks" in out:
        shapes["image_masks"] = (batch, d, height, width)
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
    classes, scores = np.asarray(out["classes"]), np.asarray(out["scores"])
    assert set(np.unique(classes)) <= {-1, 1, 2, 3}
    np.testing.assert_array_equal(scores[classes == -1], 0.0)
    np.testing.assert_array_equal(np.asarray(out["masks"])[classes == -1], 0.0)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_inference_outputs_at_96x64(inference_model):
    image = np.random.default_rng(0).uniform(size=(2, 96, 64, 3)).astype("float32")
    _check_detections(inference_model(image), 2, 96, 64)


def test_inference_outputs_at_64x64():
    model = build_mask_rcnn(NUM_CLASSES, (64, 64, 3), mode="inference", **TINY)
    _check_detections(model(np.random.default_rng(0).uniform(size=(1, 64, 64, 3)).astype("float32")), 1, 64, 64)


def test_inference_model_shares_every_weight_by_name(train_model, inference_model):
    weighted = [layer for layer in inference_model.layers if layer.weights]
    assert len(inference_model.weights) == len(train_model.weights) and len(weighted) > 20
    for layer in weighted:
        for got, want in zip(layer.get_weights(), train_model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_inference_model_config_round_trip(inference_model):
    clone = keras.Model.from_config(inference_model.get_config())
    clone.set_weights(inference_model.get_weights())
    image = np.random.default_rng(1).uniform(size=(1, 96, 64, 3)).astype("float32")
    want, got = inference_model(image), clone(image)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_transfer_weights_refuses_other_heads(train_model):
    other = build_mask_rcnn(NUM_CLASSES + 1, (64, 64, 3), **{**TINY, "mode": "inference"})
    with pytest.raises(ValueError, match="weight shapes"):
        transfer_weights(train_model, other)
    with pytest.raises(ValueError, match="Received: train_model"):
        inference_model_from(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))


def _snake(class_name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower()


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_layer_names_are_unique_and_explicit(train_model, inference_model, mode):
    model = train_model if mode == "train" else inference_model
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    auto = [layer.name for layer in model.layers
            if re.fullmatch(rf"{_snake(type(layer).__name__)}(_\d+)?", layer.name)]
    assert not auto, auto


def test_static_size_and_arguments_are_checked():
    with pytest.raises(ValueError, match="static input height and width"):
        build_mask_rcnn(NUM_CLASSES, (None, None, 3), **TINY)
    with pytest.raises(ValueError, match="Received: mode='eval'"):
        build_mask_rcnn(NUM_CLASSES, (64, 64, 3), **{**TINY, "mode": "eval"})
    with pytest.raises(ValueError, match="Received: rpn_post_nms_topk"):
        build_mask_rcnn(NUM_CLASSES, (64, 64, 3), **{**TINY, "rpn_post_nms_topk": 100})
    with pytest.raises(ValueError, match="Received: backbone='vgg16'"):
        build_mask_rcnn(NUM_CLASSES, (64, 64, 3), **{**TINY, "backbone": "vgg16"})


@pytest.mark.parametrize("layer", [
    det_layers.Proposals((64, 64), pre_nms_topk=10, post_nms_topk=5, name="p"),
    det_layers.RpnLosses((64, 64), batch_per_image=8, seed=3, name="r"),
    det_layers.RoiSampler(8, 0.5, seed=2, name="s"),
    det_layers.Detections((32, 48), max_detections=7, name="d"),
    det_layers.PasteMasks((32, 48), threshold=0.5, name="m"),
    det_layers.ForegroundRois(4, name="f"),
])
def test_layer_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.slow
def test_full_size_parameter_count_matches_torchvision():
    # torchvision maskrcnn_resnet50_fpn (91 classes) documents num_params = 44,401,393: ResNet-50
    # conv weights without biases (BN frozen: buffers) + FPN + RPN + TwoMLPHead + predictors whose
    # box regression (91 * 4) and masks (91) include the background. keras_seg's heads have no
    # background slot (K = 90: 90 * 4 deltas, 90 masks), so add 1024 * 4 + 4 = 4,100 and 256 + 1 = 257;
    # our ResNet-50 is keras.applications' (convolutions with biases: 26,560 of them, not counted).
    model = build_mask_rcnn(90, (128, 128, 3), mode="inference", backbone="resnet50")
    convs = [layer for layer in model.layers if re.match(r"conv\d_", layer.name) and hasattr(layer, "kernel")]
    backbone_kernels = sum(int(np.prod(layer.kernel.shape)) for layer in convs)
    heads = sum(layer.count_params() for layer in model.layers
                if layer.name.startswith(("fpn_", "rpn_", "box_head_", "mask_head_")))
    assert backbone_kernels == 23_454_912
    assert heads == 3_344_384 + 593_935 + 13_895_680 + (1024 * 91 + 91) + (1024 * 360 + 360) + 2_646_107 - 257
    assert backbone_kernels + heads + 4_100 + 257 == 44_401_393
