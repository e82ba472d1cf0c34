"""FPN level sizes against the anchors, RPN output order, head shapes and a golden parameter count."""

import keras
import numpy as np
import pytest

from keras_seg.detection.boxes import concat_anchors, feature_size, fpn_anchors
from keras_seg.detection.fpn import fpn
from keras_seg.detection.heads import (
    FoldRois,
    MultiLevelRoiAlign,
    SelectClassMasks,
    UnfoldRois,
    box_head,
    mask_head,
    rpn_head,
)
from keras_seg.models.backbones.resnet import resnet

TINY_BACKBONE = dict(blocks=(1, 1, 1, 1), width=8)


@pytest.mark.parametrize("height,width", [(64, 64), (96, 64), (33, 47)])
def test_fpn_levels_are_ceil_sizes_and_match_anchor_counts(height, width):
    image = keras.Input((height, width, 3))
    pyramid = fpn(resnet(image, "resnet18", **TINY_BACKBONE), width=16)
    assert sorted(pyramid) == [2, 3, 4, 5, 6]
    for level, p in pyramid.items():
        assert tuple(p.shape[1:]) == (feature_size(height, level), feature_size(width, level), 16)
    objectness, deltas = rpn_head(pyramid, num_anchors=3)
    n = int(concat_anchors(fpn_anchors((height, width))).shape[0])
    assert tuple(objectness.shape) == (None, n) and tuple(deltas.shape) == (None, n, 4)


def test_fpn_runs_at_the_static_sizes():
    image = keras.Input((96, 64, 3))
    pyramid = fpn(resnet(image, "resnet18", **TINY_BACKBONE), width=16)
    model = keras.Model(image, [pyramid[level] for level in range(2, 7)])
    shapes = [o.shape for o in model(np.zeros((1, 96, 64, 3), "float32"))]
    assert shapes == [(1, 24, 16, 16), (1, 12, 8, 16), (1, 6, 4, 16), (1, 3, 2, 16), (1, 2, 1, 16)]


def test_fpn_rejects_missing_strides():
    with pytest.raises(ValueError, match="Received: features keys"):
        fpn({4: keras.Input((8, 8, 4))})


def test_rpn_head_flattens_row_col_anchor_and_concatenates_levels():
    inputs = {2: keras.Input((4, 5, 6)), 3: keras.Input((2, 3, 6))}
    model = keras.Model(inputs, rpn_head(inputs, num_anchors=3, name="rpn"))
    rng = np.random.default_rng(0)
    x = {k: rng.normal(size=(2,) + tuple(v.shape[1:])).astype("float32") for k, v in inputs.items()}
    objectness, deltas = (np.asarray(t) for t in model(x))
    conv, relu = model.get_layer("rpn_conv"), model.get_layer("rpn_relu")
    start = 0
    for level in (2, 3):
        hidden = relu(conv(x[level]))
        obj = np.asarray(model.get_layer("rpn_objectness")(hidden))  # [B, H, W, A]
        box = np.asarray(model.get_layer("rpn_deltas")(hidden))  # [B, H, W, 4A]
        _, h, w, a = obj.shape
        i, j, k = 1, 2, 2  # an arbitrary (row, col, anchor)
        row = start + (i * w + j) * a + k
        np.testing.assert_allclose(objectness[:, row], obj[:, i, j, k], rtol=1e-5)
        np.testing.assert_allclose(deltas[:, row], box[:, i, j, 4 * k:4 * k + 4], rtol=1e-5)
        start += h * w * a
    assert objectness.shape == (2, start)


def test_box_and_mask_head_shapes():
    box_in, mask_in = keras.Input((6, 7, 7, 16)), keras.Input((6, 14, 14, 16))
    logits, deltas = box_head(box_in, num_classes=3, fc_width=32)
    masks = mask_head(mask_in, num_classes=3, width=8)
    model = keras.Model([box_in, mask_in], [logits, deltas, masks])
    out = model([np.zeros((2, 6, 7, 7, 16), "float32"), np.zeros((2, 6, 14, 14, 16), "float32")])
    assert [tuple(o.shape) for o in out] == [(2, 6, 4), (2, 6, 3, 4), (2, 6, 28, 28, 3)]


def test_heads_reject_bad_widths():
    with pytest.raises(ValueError, match="Received: fc_width=0"):
        box_head(keras.Input((2, 7, 7, 4)), 3, fc_width=0)
    with pytest.raises(ValueError, match="Received: num_classes=0"):
        mask_head(keras.Input((2, 14, 14, 4)), 0)


def test_select_class_masks_picks_the_class_channel_and_zeros_padding():
    logits = np.zeros((1, 2, 2, 2, 3), "float32")
    logits[0, 0, ..., 1] = 5.0  # detection 0 is class 2 -> channel 1
    out = np.asarray(SelectClassMasks()(logits, np.array([[2, -1]], "int32")))
    np.testing.assert_allclose(out[0, 0], 1 / (1 + np.exp(-5.0)), rtol=1e-6)
    np.testing.assert_array_equal(out[0, 1], 0.0)


@pytest.mark.parametrize("layer", [FoldRois(name="f"), UnfoldRois(name="u"), SelectClassMasks(name="s"),
                                   MultiLevelRoiAlign(14, 2, 2, 5, name="r")])
def test_layer_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def test_golden_parameter_count_at_paper_widths():
    # Hand count, K = 80 classes, all layers with biases:
    # FPN laterals 1x1: (256 + 512 + 1024 + 2048) * 256 + 4 * 256          =   984,064
    # FPN outputs 3x3: 4 * (256 * 256 * 9 + 256)                              = 2,360,320
    # RPN: 3x3 256->256 (590,080) + 1x1 256->3 (771) + 1x1 256->12 (3,084)    =   593,935
    # Box head: fc1 7*7*256*1024 + 1024 (12,846,080) + fc2 1024*1024 + 1024
    #   (1,049,600) + logits 1024*81 + 81 (83,025) + deltas 1024*320 + 320 (328,000) = 14,306,705
    # Mask head: 4 * 590,080 (2,360,320) + deconv 2*2*256*256 + 256 (262,400)
    #   + logits 256*80 + 80 (20,560)                                         = 2,643,280
    # Total                                                                    = 20,888,304
    assert _conv(256, 256, 3) == 590_080
    features = {4 * 2**i: keras.Input((8 // 2**i, 8 // 2**i, c)) for i, c in enumerate((256, 512, 1024, 2048))}
    pyramid = fpn(features, width=256)
    objectness, deltas = rpn_head(pyramid, num_anchors=3)
    box_in, mask_in = keras.Input((4, 7, 7, 256)), keras.Input((4, 14, 14, 256))
    outputs = [objectness, deltas, *box_head(box_in, 80, fc_width=1024), mask_head(mask_in, 80, width=256)]
    model = keras.Model([*features.values(), box_in, mask_in], outputs)
    by_prefix = {p: sum(layer.count_params() for layer in model.layers if layer.name.startswith(p))
                 for p in ("fpn_", "rpn_", "box_head_", "mask_head_")}
    assert by_prefix == {"fpn_": 3_344_384, "rpn_": 593_935, "box_head_": 14_306_705, "mask_head_": 2_643_280}
    assert model.count_params() == 20_888_304
