"""BiSeNet V2: branch strides, GE / BGA structure, boosters, options, and the parameter count of
the reference implementation."""

import keras
import numpy as np
import pytest

import keras_seg

BOOSTERS = {"aux_s4": 1.0, "aux_s8": 1.0, "aux_s16": 1.0, "aux_s32": 1.0}


def _tiny(**kwargs):
    return keras_seg.build_model("bisenet_v2", 3, **{**keras_seg.tiny_options("bisenet_v2"), **kwargs})


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ------------------------------------------------------------------ reference parameter count
#
# CoinCheung/BiSeNet, lib/models/bisenetv2.py at commit fdcfdc3420509a6d6aa951ac7617823342513506
# (https://github.com/CoinCheung/BiSeNet/blob/fdcfdc3420509a6d6aa951ac7617823342513506/lib/models/bisenetv2.py),
# BiSeNetV2(n_classes, aux_mode="eval"): the inference network, whose __init__ creates no booster
# (aux2 ... aux5_4) heads. Counted as torch's model.parameters(): convolution weights and biases
# and BatchNorm2d weight and bias; BN running statistics are buffers, not parameters. Every
# nn.Conv2d there has bias=False except the head's classifier.


def _conv(k, cin, cout, groups=1, bias=False):
    return k * k * (cin // groups) * cout + (cout if bias else 0)


def _bn(c):
    return 2 * c


def _conv_bn(k, cin, cout, groups=1):  # ConvBNReLU, or a Conv2d + BatchNorm2d pair
    return _conv(k, cin, cout, groups) + _bn(cout)


def _ge_s1(c, e=6):  # GELayerS1(c, c): conv1, dwconv (groups=c, c -> 6c), conv2 (1x1 + BN)
    return _conv_bn(3, c, c) + _conv_bn(3, c, e * c, groups=c) + _conv_bn(1, e * c, c)


def _ge_s2(cin, cout, e=6):  # GELayerS2: conv1, dwconv1 (stride 2), dwconv2, conv2, shortcut (dw + BN, 1x1 + BN)
    mid = e * cin
    return (_conv_bn(3, cin, cin) + _conv_bn(3, cin, mid, groups=cin) + _conv_bn(3, mid, mid, groups=mid)
            + _conv_bn(1, mid, cout) + _conv_bn(3, cin, cin, groups=cin) + _conv_bn(1, cin, cout))


REFERENCE_DETAIL = (  # DetailBranch: S1, S2, S3
    _conv_bn(3, 3, 64) + _conv_bn(3, 64, 64)
    + _conv_bn(3, 64, 64) + 2 * _conv_bn(3, 64, 64)
    + _conv_bn(3, 64, 128) + 2 * _conv_bn(3, 128, 128)
)
REFERENCE_SEGMENT = (  # SegmentBranch: StemBlock, S3, S4, S5_4, CEBlock
    _conv_bn(3, 3, 16) + _conv_bn(1, 16, 8) + _conv_bn(3, 8, 16) + _conv_bn(3, 32, 16)
    + _ge_s2(16, 32) + _ge_s1(32)
    + _ge_s2(32, 64) + _ge_s1(64)
    + _ge_s2(64, 128) + 3 * _ge_s1(128)
    + _bn(128) + _conv_bn(1, 128, 128) + _conv_bn(3, 128, 128)
)
REFERENCE_BGA = (  # BGALayer: left1, left2, right1, right2, conv
    _conv_bn(3, 128, 128, groups=128) + _conv(1, 128, 128)
    + _conv_bn(3, 128, 128)
    + _conv_bn(3, 128, 128)
    + _conv_bn(3, 128, 128, groups=128) + _conv(1, 128, 128)
    + _conv_bn(3, 128, 128)
)


def _reference_head(n_classes):  # SegmentHead(128, 1024, n_classes, aux=False): ConvBNReLU, 1x1 classifier
    return _conv_bn(3, 128, 1024) + _conv(1, 1024, n_classes, bias=True)


def test_reference_count_by_branch():
    # The branch sums above, as torch counts them on the reference module (aux_mode="eval").
    assert (REFERENCE_DETAIL, REFERENCE_SEGMENT, REFERENCE_BGA) == (519_232, 1_159_504, 478_720)
    assert REFERENCE_DETAIL + REFERENCE_SEGMENT + REFERENCE_BGA + _reference_head(19) == 3_358_627


@pytest.mark.slow
@pytest.mark.parametrize("num_classes, reference", [(11, 3_350_427), (19, 3_358_627)])
def test_inference_parameters_match_the_reference(num_classes, reference):
    assert REFERENCE_DETAIL + REFERENCE_SEGMENT + REFERENCE_BGA + _reference_head(num_classes) == reference
    model = keras_seg.build_model("bisenet_v2", num_classes)  # no booster heads
    # Trainable weights are torch's parameters; Keras also counts the BN moving mean and
    # variance (2 x 8,664 channels) as non-trainable weights.
    assert _trainable(model) == reference
    assert model.count_params() == reference + 17_328


def test_tiny_parameter_count():
    # The reference's layer formulas at the tiny widths (detail 8, 8, 16; stem 4; S3-S5 8, 8,
    # 16; one layer per stage; head 16 maps; 3 classes).
    detail = _conv_bn(3, 3, 8) + _conv_bn(3, 8, 8) + _conv_bn(3, 8, 16)
    stem = _conv_bn(3, 3, 4) + _conv_bn(1, 4, 2) + _conv_bn(3, 2, 4) + _conv_bn(3, 8, 4)
    stages = _ge_s2(4, 8) + _ge_s2(8, 8) + _ge_s2(8, 16)
    ce = _bn(16) + _conv_bn(1, 16, 16) + _conv_bn(3, 16, 16)
    bga = 2 * (_conv_bn(3, 16, 16, groups=16) + _conv(1, 16, 16)) + 3 * _conv_bn(3, 16, 16)
    head = _conv_bn(3, 16, 16) + _conv(1, 16, 3, bias=True)
    assert _trainable(_tiny()) == detail + stem + stages + ce + bga + head == 21_319


# ------------------------------------------------------------------ structure


def test_branch_strides_and_depths():
    model = keras_seg.build_model(
        "bisenet_v2", 3, input_shape=(64, 96, 3),
        **{**keras_seg.tiny_options("bisenet_v2"), "detail_depths": (2, 3, 3), "semantic_depths": (2, 2, 4)},
    )

    def hw(layer):
        return tuple(model.get_layer(layer).output.shape[1:3])

    assert [hw(f"detail_s{i}_relu{d}") for i, d in ((1, 2), (2, 3), (3, 3))] == [(32, 48), (16, 24), (8, 12)]
    assert hw("stem_relu2") == (16, 24)
    assert [hw(f"s{s}_ge{d}_relu") for s, d in ((3, 2), (4, 2), (5, 4))] == [(8, 12), (4, 6), (2, 3)]
    assert hw("ce_relu3") == (2, 3)
    assert "detail_s1_conv3" not in [layer.name for layer in model.layers]
    assert [model.get_layer(f"detail_s{i}_conv1").strides for i in (1, 2, 3)] == [(2, 2)] * 3
    assert model.get_layer("detail_s2_conv2").strides == (1, 1)
    # BGA: detail features gated at stride 8, semantic ones at stride 32, fused at stride 8.
    assert hw("bga_detail_mul") == (8, 12) and hw("bga_semantic_mul") == (2, 3)
    assert hw("bga_relu1") == (8, 12)
    assert model.output.shape[1:] == (64, 96, 3)


def test_ge_layers():
    model = _tiny()
    expand = model.get_layer("s3_ge1_dwconv2")
    assert isinstance(expand, keras.layers.DepthwiseConv2D)
    assert expand.depth_multiplier == 6 and expand.strides == (2, 2)
    assert model.get_layer("s3_ge1_dwconv3").strides == (1, 1)
    assert model.get_layer("s3_ge1_shortcut_dwconv1").strides == (2, 2)
    assert model.get_layer("s3_ge1_shortcut_conv2").filters == 8
    # The last BN of each residual branch starts at gamma 0 (the reference's last_bn).
    assert not np.any(model.get_layer("s3_ge1_bn4").gamma.numpy())
    assert np.all(model.get_layer("s3_ge1_bn1").gamma.numpy() == 1)
    stride1 = _tiny(semantic_depths=(2, 1, 1), expansion=3).get_layer("s3_ge2_dwconv2")
    assert stride1.depth_multiplier == 3 and stride1.strides == (1, 1)


def test_context_embedding_and_head():
    model = _tiny(head_channels=24, dropout=0.2)
    assert isinstance(model.get_layer("ce_gap"), keras.layers.GlobalAveragePooling2D)
    assert model.get_layer("ce_conv2").kernel_size == (1, 1) and model.get_layer("ce_conv3").kernel_size == (3, 3)
    assert model.get_layer("head_conv1").filters == 24
    assert model.get_layer("head_dropout").rate == 0.2
    assert model.get_layer("head_classifier").dtype_policy.name == "float32"
    assert "head_dropout" not in [layer.name for layer in _tiny(dropout=0.0).layers]


def test_boosters_are_training_only_outputs_weighted_one():
    assert keras_seg.get_spec("bisenet_v2").aux_weights == BOOSTERS
    assert _tiny().output_names == ["logits"]
    model = _tiny(aux_outputs=True, booster_channels=6)
    assert model.output_names == ["logits", *BOOSTERS]
    assert [model.get_layer(f"{n}_head_conv1").filters for n in BOOSTERS] == [6] * 4
    # Boosters sit on the stem and on S3, S4 and S5 before the context embedding.
    sources = [model.get_layer(f"{n}_head_conv1").input.name for n in BOOSTERS]
    features = ("stem_relu2", "s3_ge1_relu", "s4_ge1_relu", "s5_ge1_relu")
    assert sources == [model.get_layer(n).output.name for n in features]
    outs = model(np.zeros((1, 37, 29, 3), "float32"), training=False)
    assert [tuple(o.shape) for o in outs] == [(1, 37, 29, 3)] * 5


def test_whole_model_weights_option(tmp_path):
    x = np.random.default_rng(3).normal(size=(1, 35, 29, 3)).astype("float32")
    keras.utils.set_random_seed(1)
    model = _tiny()
    path = str(tmp_path / "bisenet_v2.weights.h5")
    model.save_weights(path)
    keras.utils.set_random_seed(2)
    again = _tiny(weights=path)
    np.testing.assert_array_equal(np.asarray(again(x, training=False)), np.asarray(model(x, training=False)))
    with pytest.raises(ValueError, match="Received: weights="):
        _tiny(weights=str(tmp_path / "missing.weights.h5"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(detail_widths=(8, 8, 12)), "Received: detail_widths=.*semantic_widths"),
        (dict(detail_widths=(8, 8)), "Received: detail_widths"),
        (dict(semantic_depths=(1, 0, 1)), "Received: semantic_depths"),
        (dict(semantic_widths=(4, 8, 8, 16.0)), "Received: semantic_widths"),
        (dict(expansion=0), "Received: expansion=0"),
        (dict(head_channels=True), "Received: head_channels=True"),
        (dict(dropout=1.0), "Received: dropout=1.0"),
        (dict(aux_outputs="yes"), "Received: aux_outputs='yes'"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kwargs)
