"""DeepLab v3+: the decoder on the stride-4 features, output stride 16 and 8, the separable form,
options, and full-size parameter counts against independent PyTorch implementations."""

import keras
import numpy as np
import pytest

import keras_seg
from keras_seg.models.backbones.resnet import build_resnet_backbone
from tests.tflite_utils import convert_builtin_only, run_tflite


def _tiny(num_classes=3, **kwargs):
    keras.utils.set_random_seed(0)
    options = {**keras_seg.tiny_options("deeplab_v3plus"), **kwargs}
    return keras_seg.build_model("deeplab_v3plus", num_classes, **options)


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ------------------------------------------------------------------ reference parameter counts
#
# Counted as torch's model.parameters() (conv weights and biases, BatchNorm2d weight and bias;
# BN running statistics are buffers), with torch 2.13.0+cpu, torchvision 0.28.0 and
# segmentation-models-pytorch 0.6.0 from PyPI, every model built on the meta device.
#
# 1. A PyTorch twin of the paper's model, made of torchvision 0.28.0 parts:
#      body = IntermediateLayerGetter(torchvision.models.resnet101(weights=None,
#                 replace_stride_with_dilation=[False, False, True]),      # resnet50 likewise
#                 return_layers={"layer1": "low", "layer4": "out"})
#      aspp = torchvision.models.segmentation.deeplabv3.ASPP(2048, [6, 12, 18], 256)
#      low  = Conv2d(256, 48, 1, bias=False), BatchNorm2d(48), ReLU
#      dec  = [Conv2d(304, 256, 3, bias=False), BatchNorm2d(256), ReLU,
#              Conv2d(256, 256, 3, bias=False), BatchNorm2d(256), ReLU]
#      cls  = Conv2d(256, 21, 1)                                            # with bias
#    and its separable form, where each of the ASPP's three ASPPConv branches and each decoder
#    conv is TF deeplab's split_separable_conv2d: Conv2d(c, c, 3, groups=c, dilation=r,
#    bias=False), BatchNorm2d(c), ReLU, Conv2d(c, 256, 1, bias=False), BatchNorm2d(256), ReLU.
#    Parts, ResNet-101: body 42,500,160 (torchvision's resnet101 without fc); aspp 15,535,104
#    (separable 3,019,776); low 12,384; dec 1,291,264 (separable 150,544); cls 5,397. ResNet-50
#    body: 23,508,032.
TWIN = {
    ("resnet101", False): 59_344_309,
    ("resnet101", True): 45_688_261,
    ("resnet50", False): 40_352_181,
    ("resnet50", True): 26_696_133,
}
# keras.applications ResNets (whose layers and variables ours reproduce) give every conv a
# bias, torchvision's none: one per output channel of the 7x7 stem and of every bottleneck conv
# and shortcut. ResNet-101: 64 + 1,408 + 3,584 + 36,352 + 11,264; ResNet-50: conv4 has 6
# blocks (10,240) instead of 23. Everything after the backbone has no bias before a BN on
# either side, so these are the whole difference.
KERAS_RESNET_BIASES = {"resnet101": 52_672, "resnet50": 26_560}

# 2. segmentation_models_pytorch 0.6.0 DeepLabV3Plus(encoder_name=arch, encoder_weights=None,
#    encoder_output_stride=16, classes=21, decoder_aspp_separable=separable): same encoder
#    (torchvision's ResNet), same ASPP (its 1x1, three 3x3 and pooling branches and 1x1
#    projection), same 1x1 256->48 low-level block and 1x1 classifier; it differs from the paper
#    in three layers, accounted for below:
#    - decoder.aspp[1:]: an extra SeparableConv2d(256, 256, 3) + BatchNorm2d after the ASPP
#      (2,304 + 65,536 + 512 = 68,352), not in the paper;
#    - decoder.block2: ONE SeparableConv2d(304, 256, 3) + BatchNorm2d (2,736 + 77,824 + 512 =
#      81,072) where the paper has two 3x3 convs;
#    - its SeparableConv2d has no BatchNorm between depthwise and pointwise (split_separable_conv2d
#      has one, with ReLU): 2 x 2,048 per separable ASPP branch.
SMP = {
    ("resnet101", False): 58_202_469,
    ("resnet101", True): 45_674_853,
    ("resnet50", False): 39_210_341,
    ("resnet50", True): 26_682_725,
}


def _conv(k, cin, cout, groups=1):  # no bias: every conv below is followed by a BN
    return k * k * (cin // groups) * cout


def _conv_bn(k, cin, cout, groups=1):
    return _conv(k, cin, cout, groups) + 2 * cout


def _sep(cin, cout):  # split_separable_conv2d: depthwise + BN, pointwise + BN
    return _conv_bn(3, cin, cin, groups=cin) + _conv_bn(1, cin, cout)


def _decoder(separable):  # the paper's two 3x3 convs on concat(256 encoder, 48 low-level)
    return _sep(304, 256) + _sep(256, 256) if separable else _conv_bn(3, 304, 256) + _conv_bn(3, 256, 256)


SMP_EXTRA = _sep(256, 256) - 2 * 256  # decoder.aspp[1:]: SeparableConv2d without the inner BN, + BN
SMP_BLOCK2 = _sep(304, 256) - 2 * 304  # decoder.block2


@pytest.mark.parametrize("arch, separable", sorted(TWIN))
def test_the_two_references_differ_by_the_layers_smp_changes(arch, separable):
    assert (SMP_EXTRA, SMP_BLOCK2) == (68_352, 81_072)
    aspp_inner_bn = 3 * 2 * 2048 if separable else 0
    assert TWIN[arch, separable] == (
        SMP[arch, separable] - SMP_EXTRA - SMP_BLOCK2 + _decoder(separable) + aspp_inner_bn
    )


@pytest.mark.slow
@pytest.mark.parametrize("arch, separable", sorted(TWIN))
def test_full_size_parameters_match_the_torch_twin(arch, separable):
    # Output stride 16, VOC's 21 classes; the model is only built, never run.
    model = keras_seg.build_model("deeplab_v3plus", 21, backbone=arch, separable=separable)
    assert _trainable(model) == TWIN[arch, separable] + KERAS_RESNET_BIASES[arch]


FULL_SIZE = {  # _trainable() of the line above, as the README quotes the default one
    ("resnet101", False): 59_396_981,
    ("resnet101", True): 45_740_933,
    ("resnet50", False): 40_378_741,
    ("resnet50", True): 26_722_693,
}


def test_full_size_goldens_are_the_twin_plus_the_keras_biases():
    assert FULL_SIZE == {k: TWIN[k] + KERAS_RESNET_BIASES[k[0]] for k in TWIN}


def test_tiny_decoder_parameters():
    # The same tiny encoder and classifier with and without the decoder: the difference is the
    # 1x1 32->8 low-level projection and the two 3x3 convs (24->16, 16->16), each with BN.
    # (Tiny: ResNet blocks (1, 1, 1, 1), stem width 8, so conv2's output has 32 channels.)
    tiny = keras_seg.tiny_options("deeplab_v3plus")
    v3 = keras_seg.build_model("deeplab_v3", 3, **{k: tiny[k] for k in keras_seg.tiny_options("deeplab_v3")})
    decoder = _conv_bn(1, 32, 8) + _conv_bn(3, 24, 16) + _conv_bn(3, 16, 16)
    assert _trainable(_tiny()) == _trainable(v3) + decoder == 256_003
    # Separable: ASPP's three 3x3 branches on 256 channels and both decoder convs change.
    aspp_sep = 3 * (_sep(256, 16) - _conv_bn(3, 256, 16))
    decoder_sep = _conv_bn(1, 32, 8) + _sep(24, 16) + _sep(16, 16)
    assert _trainable(_tiny(separable=True)) == _trainable(v3) + aspp_sep + decoder_sep


# ------------------------------------------------------------------ structure


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_output_is_input_size_at_odd_sizes(output_stride, rates):
    model = _tiny(5, output_stride=output_stride)
    assert [model.get_layer(f"aspp_r{r}_conv").dilation_rate for r in rates] == [(r, r) for r in rates]
    for h, w in [(37, 29), (45, 31)]:
        out = np.asarray(model(np.zeros((1, h, w, 3), "float32"), training=False))
        assert out.shape == (1, h, w, 5) and out.dtype == np.float32


@pytest.mark.parametrize("output_stride", [16, 8])
def test_decoder_fuses_the_stride_4_features(output_stride):
    model = _tiny(input_shape=(64, 96, 3), output_stride=output_stride, low_level_filters=48)

    def hw(layer):
        return tuple(model.get_layer(layer).output.shape[1:3])

    proj = model.get_layer("decoder_low_level_proj_conv")
    assert proj.filters == 48 and proj.kernel_size == (1, 1)
    # Its input is ResNet stage conv2's output (tiny: one block), at stride 4 of the image.
    assert proj.input.name == model.get_layer("conv2_block1_out").output.name
    assert tuple(proj.input.shape[1:3]) == (16, 24)
    s = output_stride
    assert tuple(model.get_layer("aspp_concat").input[0].shape[1:3]) == (64 // s, 96 // s)
    # The encoder output is resized to the low-level size, x4 at output stride 16 (x2 at 8).
    assert hw("decoder_up") == (16, 24) and model.get_layer("decoder_up").input[1].name == (
        model.get_layer("decoder_low_level_proj_relu").output.name
    )
    assert model.get_layer("decoder_up").input[0].name == model.get_layer("aspp_proj_relu").output.name
    assert model.get_layer("decoder_concat").output.shape[-1] == 16 + 48
    for i in (1, 2):
        conv = model.get_layer(f"decoder_conv{i}_conv")
        assert conv.kernel_size == (3, 3) and conv.filters == 16 and hw(f"decoder_conv{i}_relu") == (16, 24)
    assert model.get_layer("classifier").input.name == model.get_layer("decoder_conv2_relu").output.name
    assert model.output.shape[1:] == (64, 96, 3)


def test_defaults_are_the_papers_widths():
    defaults = keras_seg.get_spec("deeplab_v3plus").defaults()
    assert {k: defaults[k] for k in ("backbone", "output_stride", "multi_grid", "aspp_filters",
                                     "low_level_filters", "decoder_filters", "separable")} == dict(
        backbone="resnet101", output_stride=16, multi_grid=(1, 2, 4), aspp_filters=256,
        low_level_filters=48, decoder_filters=256, separable=False,
    )


def test_separable_changes_the_3x3_convolutions():
    plain, sep = _tiny(), _tiny(separable=True)
    assert not [layer for layer in plain.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    names = {layer.name for layer in sep.layers}
    for prefix, rate in (("aspp_r6", 6), ("aspp_r12", 12), ("aspp_r18", 18),
                         ("decoder_conv1", 1), ("decoder_conv2", 1)):
        assert f"{prefix}_conv" not in names
        depthwise = sep.get_layer(f"{prefix}_depthwise_conv")
        assert type(depthwise) is keras.layers.DepthwiseConv2D  # pylint: disable=unidiomatic-typecheck
        assert depthwise.kernel_size == (3, 3) and depthwise.dilation_rate == (rate, rate)
        assert depthwise.depth_multiplier == 1 and not depthwise.use_bias
        assert isinstance(sep.get_layer(f"{prefix}_depthwise_bn"), keras.layers.BatchNormalization)
        assert sep.get_layer(f"{prefix}_depthwise_relu").activation is keras.activations.relu
        pointwise = sep.get_layer(f"{prefix}_pointwise_conv")
        assert type(pointwise) is keras.layers.Conv2D  # pylint: disable=unidiomatic-typecheck
        assert pointwise.kernel_size == (1, 1) and pointwise.filters == 16 and not pointwise.use_bias
        assert isinstance(sep.get_layer(f"{prefix}_pointwise_bn"), keras.layers.BatchNormalization)
    # The 1x1 branches, image pooling, projection and low-level projection stay plain.
    for name in ("aspp_1x1_conv", "aspp_pool_conv", "aspp_proj_conv", "decoder_low_level_proj_conv"):
        assert type(sep.get_layer(name)) is keras.layers.Conv2D  # pylint: disable=unidiomatic-typecheck


def test_separable_model_converts_to_builtin_tflite():
    model = _tiny(separable=True)
    x = np.random.default_rng(2).normal(size=(1, 40, 56, 3)).astype("float32")
    blob = convert_builtin_only(model, x.shape)
    np.testing.assert_allclose(run_tflite(blob, x), model.predict_on_batch(x), atol=1e-4, rtol=1e-4)


def test_builder_loads_backbone_weights(tmp_path):
    keras.utils.set_random_seed(7)
    backbone = build_resnet_backbone("resnet18")
    path = str(tmp_path / "resnet18.weights.h5")
    backbone.save_weights(path)
    model = keras_seg.build_model(
        "deeplab_v3plus", 3, backbone="resnet18", backbone_weights=path, multi_grid=(1, 2),
        aspp_filters=8, low_level_filters=8, decoder_filters=8,
    )
    np.testing.assert_array_equal(
        model.get_layer("conv5_block2_2_conv").get_weights()[0],
        backbone.get_layer("conv5_block2_2_conv").get_weights()[0],
    )
    assert model.get_layer("decoder_low_level_proj_conv").input.shape[-1] == 64  # ResNet-18's conv2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output_stride=32), "Received: output_stride=32"),
        (dict(output_stride=4), "Received: output_stride=4"),
        (dict(backbone="vgg16"), "Received: backbone='vgg16'"),
        (dict(backbone_weights="resnet.bin"), "Received: backbone_weights='resnet.bin'"),
        (dict(multi_grid=(1, 2, 4)), "Received: multi_grid"),
        (dict(atrous_rates=(6, 0, 18)), "Received: atrous_rates"),
        (dict(aspp_filters=0), "Received: aspp_filters=0"),
        (dict(low_level_filters=0), "Received: low_level_filters=0"),
        (dict(decoder_filters=True), "Received: decoder_filters=True"),
        (dict(decoder_filters=16.0), "Received: decoder_filters=16.0"),
        (dict(separable="yes"), "Received: separable='yes'"),
        (dict(image_pooling=1), "Received: image_pooling=1"),
        (dict(weights="model.h5"), "Received: weights='model.h5'"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kwargs)
