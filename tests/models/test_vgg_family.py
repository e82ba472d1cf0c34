"""The VGG family: VGG16 backbone, FCN-32s/16s/8s, SegNet, SegNet-Basic, DeconvNet, FusionNet.

Golden numbers carry their source in a comment: the seed note (FCN-8s table), a reference
prototxt, or independent arithmetic written out here. Full-size models are marked slow.
"""

import ast
import math
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_seg
from keras_seg.flags import TRAIN_FLAGS
from keras_seg.models.backbones import VGG16_BLOCKS, load_vgg16_weights, vgg16_features
from keras_seg.models.blocks import BilinearUpsampling, PadToMultiple, bilinear_kernel
from keras_seg.models.fcn import FCN_CROP_OFFSETS
from tests.models.test_unpool import np_argmax_pool, np_unpool

FAMILY = ["fcn32s", "fcn16s", "fcn8s", "segnet", "segnet_basic", "deconvnet", "fusionnet"]


def _tiny(name, num_classes=5, **kw):
    keras.utils.set_random_seed(0)
    return keras_seg.build_model(name, num_classes, **{**keras_seg.tiny_options(name), **kw})


def _conv_params(k, c_in, c_out, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)


def test_family_is_registered():
    assert set(FAMILY) <= set(keras_seg.list_models())


# ----------------------------------------------------------------------------- shared blocks


def test_pad_to_multiple_minimum():
    layer = PadToMultiple(32, minimum=224)
    assert layer(tf.zeros((1, 33, 250, 2))).shape == (1, 224, 256, 2)
    assert layer.compute_output_shape((None, 33, 250, 2)) == (None, 224, 256, 2)
    assert PadToMultiple(8, minimum=20)(tf.zeros((1, 3, 30, 1))).shape == (1, 24, 32, 1)
    assert PadToMultiple.from_config(layer.get_config()).minimum == 224
    with pytest.raises(ValueError, match="minimum"):
        PadToMultiple(2, minimum=-1)


def test_bilinear_kernel_is_fcn_upsample_filt():
    # fcn.berkeleyvision.org surgery.upsample_filt(4): outer product of [1, 3, 3, 1] / 4.
    np.testing.assert_allclose(bilinear_kernel(4), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 16)
    # ... and (3): factor 2, centre 1: outer product of [1, 2, 1] / 2.
    np.testing.assert_allclose(bilinear_kernel(3), np.outer([1, 2, 1], [1, 2, 1]) / 4)
    kernel = BilinearUpsampling()((16, 16, 3, 3)).numpy()
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(kernel[:, :, i, j], bilinear_kernel(16) if i == j else 0)


def test_bilinear_transposed_convolution_interpolates_a_ramp():
    up = keras.layers.Conv2DTranspose(
        1, 4, strides=2, use_bias=False, kernel_initializer=BilinearUpsampling()
    )
    ramp = np.arange(8, dtype="float32")[None, None, :, None].repeat(3, axis=1)  # (1, 3, 8, 1)
    row = up(ramp).numpy()[0, 2, :, 0]  # (8 - 1) * 2 + 4 = 18 columns
    # Output column u sits at input coordinate (u - 1.5) / 2; away from the borders the
    # values are exactly that linear interpolation.
    np.testing.assert_allclose(row[3:15], (np.arange(3, 15) - 1.5) / 2, atol=1e-6)


# ------------------------------------------------------------------------------ VGG16 backbone


def test_vgg16_features_strides_and_names():
    inputs = keras.Input((64, 96, 3))
    features = vgg16_features(inputs, blocks=((4, 1), (4, 2), (8, 1)))
    assert sorted(features) == [2, 4, 8]
    assert [tuple(features[s].shape[1:3]) for s in (2, 4, 8)] == [(32, 48), (16, 24), (8, 12)]
    model = keras.Model(inputs, features[8])
    assert [l.name for l in model.layers[1:]] == [
        "block1_conv1", "block1_pool", "block2_conv1", "block2_conv2", "block2_pool",
        "block3_conv1", "block3_pool",
    ]


def test_vgg16_argmax_pooling_returns_indices():
    inputs = keras.Input((32, 32, 3))
    features, indices = vgg16_features(inputs, blocks=((4, 1), (8, 1)), batch_norm=True, pooling="argmax")
    assert sorted(indices) == [2, 4] and indices[4].dtype == "int32"
    assert tuple(indices[4].shape) == tuple(features[4].shape)


@pytest.mark.parametrize("fmt", ["weights.h5", "h5"])
def test_vgg16_weights_load_by_name(tmp_path, fmt):
    """Weights saved from keras.applications.VGG16 load into our backbone, layer by layer.

    ``h5`` is the legacy format of the application's downloaded no-top file; ``weights.h5``
    is what ``save_weights`` writes today.
    """
    keras.utils.set_random_seed(1)
    app = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    path = str(tmp_path / f"vgg16_notop.{fmt}")
    if fmt == "h5":
        app.save(path)  # legacy HDF5, layer groups by name like the Keras download
    else:
        app.save_weights(path)
    inputs = keras.Input((None, None, 3))
    ours = keras.Model(inputs, vgg16_features(inputs)[32])
    load_vgg16_weights(ours, path)
    names = [l.name for l in app.layers if l.get_weights()]
    assert len(names) == 13
    for name in names:
        for got, want in zip(ours.get_layer(name).get_weights(), app.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_imagenet_without_network_says_how_to_pass_a_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, vgg16_features(inputs)[32])
    with pytest.raises(RuntimeError, match="backbone_weights='/path/to/vgg16_weights_tf_dim_ordering"):
        load_vgg16_weights(model, "imagenet")


@pytest.mark.parametrize("name", ["fcn8s", "segnet", "deconvnet"])
def test_backbone_weights_need_the_vgg16_layout(name, tmp_path):
    with pytest.raises(ValueError, match="Received: backbone_weights="):
        _tiny(name, backbone_weights="imagenet")
    with pytest.raises(ValueError, match="not found. Received: backbone_weights="):
        keras_seg.build_model(name, 3, input_shape=(None, None, 3), backbone_weights=str(tmp_path / "x.h5"))


# ------------------------------------------------------------------------------------- FCN

# The seed note's FCN-8s table (seeds/000_*.txt: PyTorch summary, Caffe layout, 19 classes,
# 256x512 input): (our layer, (H, W, C), parameters) for every Conv/Pool/Deconv row.
FCN8S_SEED_TABLE = [
    ("block1_conv1", (454, 710, 64), 1_792),
    ("block1_conv2", (454, 710, 64), 36_928),
    ("block1_pool", (227, 355, 64), 0),
    ("block2_conv1", (227, 355, 128), 73_856),
    ("block2_conv2", (227, 355, 128), 147_584),
    ("block2_pool", (114, 178, 128), 0),
    ("block3_conv1", (114, 178, 256), 295_168),
    ("block3_conv2", (114, 178, 256), 590_080),
    ("block3_conv3", (114, 178, 256), 590_080),
    ("block3_pool", (57, 89, 256), 0),
    ("block4_conv1", (57, 89, 512), 1_180_160),
    ("block4_conv2", (57, 89, 512), 2_359_808),
    ("block4_conv3", (57, 89, 512), 2_359_808),
    ("block4_pool", (29, 45, 512), 0),
    ("block5_conv1", (29, 45, 512), 2_359_808),
    ("block5_conv2", (29, 45, 512), 2_359_808),
    ("block5_conv3", (29, 45, 512), 2_359_808),
    ("block5_pool", (15, 23, 512), 0),
    ("fc6_conv", (9, 17, 4096), 102_764_544),
    ("fc6_relu", (9, 17, 4096), 0),
    ("fc6_dropout", (9, 17, 4096), 0),
    ("fc7_conv", (9, 17, 4096), 16_781_312),
    ("fc7_relu", (9, 17, 4096), 0),
    ("fc7_dropout", (9, 17, 4096), 0),
    ("score_fr", (9, 17, 19), 77_843),
    ("upscore2", (20, 36, 19), 5_776),
    ("score_pool4", (29, 45, 19), 9_747),
    ("upscore_pool4", (42, 74, 19), 5_776),
    ("score_pool3", (57, 89, 19), 4_883),
    ("upscore8", (344, 600, 19), 92_416),
]
FCN8S_SEED_TOTAL = 134_456_985  # "Total params: 134,456,985" in the same table


def test_fcn8s_tiny_has_every_spatial_size_of_the_seed_table():
    """Spatial sizes depend on the geometry only: VGG16's conv counts with 4 filters each
    must give every size in the table (the model is only built, never run)."""
    narrow = tuple((4, n) for _, n in VGG16_BLOCKS)
    model = keras_seg.build_model("fcn8s", 19, input_shape=(256, 512, 3), blocks=narrow, fc_channels=4)
    for name, (h, w, c), _ in FCN8S_SEED_TABLE:
        shape = model.get_layer(name).output.shape
        assert tuple(shape[1:3]) == (h, w), name
        if c == 19:
            assert shape[3] == 19, name
    assert tuple(model.output.shape) == (None, 256, 512, 19)


def _coordinate_maps(model):
    """Caffe's coord_map rule on our layer graph: each tensor's map to input pixels.

    A tensor with map ``(a, b)`` has element ``x`` at input coordinate ``a * x + b``. A
    convolution or pooling with kernel ``k``, stride ``s`` and padding ``p`` maps
    ``(a, b) -> (a s, b + a ((k - 1) / 2 - p))``; a transposed convolution inverts that. A
    crop at offset ``o`` aligns ``x`` with ``ref`` iff ``b_ref = b_x + a o``.
    Returns the map of every layer output, checking every crop and sum on the way.
    """
    maps = {model.layers[0].name: (1.0, 0.0)}

    def src(t):
        return maps[t._keras_history.operation.name]

    for layer in model.layers[1:]:
        ins = layer.input if isinstance(layer.input, list) else [layer.input]
        a, b = src(ins[0])
        cfg = layer.get_config()
        if isinstance(layer, keras.layers.ZeroPadding2D):
            pad = cfg["padding"][0][0]
            maps[layer.name] = (a, b - a * pad)
        elif isinstance(layer, (keras.layers.Conv2DTranspose,)):
            k, s = cfg["kernel_size"][0], cfg["strides"][0]
            assert cfg["padding"] == "valid"
            maps[layer.name] = (a / s, b - (a / s) * (k - 1) / 2)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D)):
            k = cfg["kernel_size" if "kernel_size" in cfg else "pool_size"][0]
            s = cfg["strides"][0]
            p = (k - 1) / 2 if cfg["padding"] == "same" and s == 1 else 0  # ceil-mode pools: p=0
            maps[layer.name] = (a * s, b + a * ((k - 1) / 2 - p))
        elif type(layer).__name__ == "CropLike":
            ref_a, ref_b = src(ins[1])
            top, left = cfg["offset"]
            assert top == left and ref_a == a and ref_b == b + a * top, (layer.name, a, b, ref_b)
            maps[layer.name] = (ref_a, ref_b)
        elif isinstance(layer, keras.layers.Add):
            assert src(ins[1]) == (a, b), layer.name
            maps[layer.name] = (a, b)
        else:  # activations, dropout: element-wise
            maps[layer.name] = (a, b)
    return maps


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_crops_align_every_map_with_the_input(name):
    """The reference crop offsets are exactly what aligns each crop (checked inside), and the
    logits' coordinate map is the identity: logit (y, x) is centred on input pixel (y, x)."""
    model = _tiny(name)
    maps = _coordinate_maps(model)
    assert maps["logits"] == (1.0, 0.0)
    assert maps["score_fr"] == (32.0, 12.5)  # fc6's 7x7 window on pool5 starts at pixel -99
    offsets = [model.get_layer(n).offset[0] for n in ("score_pool4c", "score_pool3c", "logits") if n in maps]
    assert tuple(offsets) == FCN_CROP_OFFSETS[int(name[3:-1])]


def _fcn_final_rows(h, stride):
    """Independent size arithmetic of the reference nets; None where a crop would not fit."""
    p = [h + 198]
    for _ in range(5):
        p.append(math.ceil(p[-1] / 2))  # Caffe ceil-mode pooling
    f = p[5] - 6  # fc6, 7x7 valid
    if f < 1:
        return None
    up = (f - 1) * 2 + 4
    if stride == 32:
        return (f - 1) * 32 + 64, 19
    if p[4] < up + 5:
        return None
    if stride == 16:
        return (up - 1) * 16 + 32, 27
    up = (up - 1) * 2 + 4
    if p[3] < up + 9:
        return None
    return (up - 1) * 8 + 16, 31


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_fcn_every_input_size_fits_its_crops(stride):
    for h in range(1, 2049):
        rows = _fcn_final_rows(h, stride)
        assert rows is not None and rows[0] >= h + rows[1], (h, rows)


def test_fcn8s_tiny_runs_at_small_and_odd_sizes():
    model = _tiny("fcn8s")
    for h, w in [(1, 1), (3, 70)]:
        assert model.predict_on_batch(np.zeros((1, h, w, 3), "float32")).shape == (1, h, w, 5)


@pytest.mark.parametrize(
    "option, trainable",
    [
        ("intermediate", {"upscore2": True, "upscore_pool4": True, "upscore8": False}),
        ("none", {"upscore2": False, "upscore_pool4": False, "upscore8": False}),
        ("all", {"upscore2": True, "upscore_pool4": True, "upscore8": True}),
    ],
)
def test_fcn8s_upsampling_is_bilinear_and_trainable_by_option(option, trainable):
    model = _tiny("fcn8s", 3, upsampling_trainable=option)
    for layer_name, want in trainable.items():
        layer = model.get_layer(layer_name)
        assert layer.trainable is want and layer.use_bias is False
        want = BilinearUpsampling()(layer.kernel.shape).numpy()
        np.testing.assert_array_equal(layer.get_weights()[0], want)
    frozen = sum(not t for t in trainable.values())
    assert len(model.non_trainable_weights) == frozen


def test_fcn_scores_are_zero_initialised_by_default():
    model = keras_seg.build_model(
        "fcn16s", 3, **{**keras_seg.tiny_options("fcn16s"), "zero_init_scores": True}
    )
    for name in ("score_fr", "score_pool4"):
        assert not np.any(model.get_layer(name).get_weights()[0])


def test_fcn_refuses_other_than_five_blocks():
    with pytest.raises(ValueError, match="Received: blocks="):
        keras_seg.build_model("fcn8s", 3, blocks=((8, 1),) * 4)


def _fcn_params(stride, num_classes, c=4096):
    """Independent count: VGG16 convolutions, fc6/fc7, scores and bias-free deconvolutions."""
    vgg = sum(_conv_params(3, c_in, c_out) for c_in, c_out in [
        (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
        (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)])
    assert vgg == 14_714_688  # keras.applications.VGG16(include_top=False).count_params()
    head = _conv_params(7, 512, c) + _conv_params(1, c, c) + _conv_params(1, c, num_classes)
    n2 = num_classes**2
    if stride == 32:
        return vgg + head + 64 * 64 * n2
    skips = _conv_params(1, 512, num_classes) + 4 * 4 * n2
    if stride == 16:
        return vgg + head + skips + 32 * 32 * n2
    return vgg + head + skips + _conv_params(1, 256, num_classes) + 4 * 4 * n2 + 16 * 16 * n2


def test_fcn_parameter_arithmetic_reproduces_the_seed_total():
    assert _fcn_params(8, 19) == FCN8S_SEED_TOTAL == sum(p for *_, p in FCN8S_SEED_TABLE)


@pytest.mark.slow
def test_fcn8s_full_size_reproduces_the_seed_table():
    model = keras_seg.build_model("fcn8s", 19, input_shape=(256, 512, 3))
    for name, shape, params in FCN8S_SEED_TABLE:
        layer = model.get_layer(name)
        assert tuple(layer.output.shape[1:]) == shape, name
        assert layer.count_params() == params, name
    assert model.count_params() == FCN8S_SEED_TOTAL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn32s", "fcn16s"])
def test_fcn_full_size_parameter_counts(name):
    # VOC, 21 classes, by the arithmetic above: fcn32s 136,152,917 (134,346,581 without the
    # 1,806,336 weights of its 64x64 bilinear deconvolution: the paper's Table 1 gives
    # FCN-VGG16 as 134M parameters), fcn16s 134,815,994, fcn8s 134,489,759.
    model = keras_seg.build_model(name, 21)
    assert model.count_params() == _fcn_params(int(name[3:-1]), 21)
    assert (_fcn_params(32, 21), _fcn_params(16, 21), _fcn_params(8, 21)) == (
        136_152_917, 134_815_994, 134_489_759)


# ---------------------------------------------------------------------------------- SegNet


def _bn(c):
    """Keras BatchNormalization: gamma, beta (learned) and moving mean, variance."""
    return 4 * c


def _segnet_params(blocks, num_classes, in_ch=3):
    """Independent count from segnet_train.prototxt's layer list: every encoder and decoder
    Convolution has a bias and a BN, except the classifier conv1_1_D (3x3, bias, no BN)."""
    total, c_in = 0, in_ch
    for f, n in blocks:  # encoder
        for _ in range(n):
            total += _conv_params(3, c_in, f) + _bn(f)
            c_in = f
    for i in range(len(blocks), 0, -1):  # decoder
        f, n = blocks[i - 1]
        for j in range(n, 0, -1):
            if j > 1:
                total += _conv_params(3, c_in, f) + _bn(f)
                c_in = f
            elif i > 1:
                total += _conv_params(3, c_in, blocks[i - 2][0]) + _bn(blocks[i - 2][0])
                c_in = blocks[i - 2][0]
            else:
                total += _conv_params(3, c_in, num_classes)
    return total


def _bn_stats(model):
    return sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)


def test_segnet_parameter_arithmetic():
    # CamVid, 11 classes: 29,433,483 convolution weights and biases (the prototxt) plus
    # 7,936 BN channels; Caffe's BN learns scale and shift (15,872), Keras also keeps the
    # moving mean and variance (15,872 more). The paper quotes SegNet as 29.5M parameters.
    assert _segnet_params(VGG16_BLOCKS, 11) == 29_465_227
    model = _tiny("segnet", 11)
    assert model.count_params() == _segnet_params(keras_seg.tiny_options("segnet")["blocks"], 11) == 4_715


def test_segnet_decoder_unpools_with_its_own_stage_indices():
    model = _tiny("segnet")
    blocks = keras_seg.tiny_options("segnet")["blocks"]
    for i in range(1, len(blocks) + 1):
        unpool = model.get_layer(f"dec{i}_unpool")
        assert unpool.input[1]._keras_history.operation.name == f"block{i}_pool"
    # the decoder mirrors the encoder: stage 2 (16 filters, one conv) narrows to stage 1's 8
    assert model.get_layer("dec2_1_conv").filters == 8
    assert model.get_layer("dec1_2_conv").filters == 8
    assert model.get_layer("logits_full").kernel_size == (3, 3)  # conv1_1_D is a 3x3 conv


def test_segnet_is_argmax_unpooling_end_to_end():
    """dec1_unpool places the decoder's map exactly at block1_pool's argmax positions."""
    model = _tiny("segnet")
    pre_pool = model.get_layer("block1_pool").input
    decoded = model.get_layer("dec1_unpool").input[0]
    probe = keras.Model(model.input, [pre_pool, decoded, model.get_layer("dec1_unpool").output])
    x = np.random.default_rng(0).normal(size=(1, 16, 20, 3)).astype("float32")
    pre_pool, decoded, unpooled = probe.predict_on_batch(x)
    _, index = np_argmax_pool(pre_pool, 2)
    np.testing.assert_array_equal(unpooled, np_unpool(decoded, index, (16, 20)))
    assert np.count_nonzero(unpooled) > 0


@pytest.mark.slow
def test_segnet_full_size_parameters_and_layout():
    model = keras_seg.build_model("segnet", 11, input_shape=(360, 480, 3))
    assert model.count_params() == _segnet_params(VGG16_BLOCKS, 11) == 29_465_227
    assert _bn_stats(model) == 15_872
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 26  # 13 encoder + 13 decoder convolutions (the last is the classifier)
    # segnet_train.prototxt decoder widths, conv5_3_D ... conv1_1_D
    assert [l.filters for l in convs[13:]] == [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64, 11]
    # pooling sizes at 360x480 (padded to 384x480): the bottleneck is 12x15
    assert tuple(model.get_layer("block5_pool").output[0].shape[1:3]) == (12, 15)


@pytest.mark.slow
def test_segnet_loads_vgg16_encoder_weights(tmp_path):
    keras.utils.set_random_seed(3)
    app = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    app.save_weights(path)
    model = keras_seg.build_model("segnet", 11, backbone_weights=path)
    loaded = [layer for layer in app.layers if layer.get_weights()]
    assert len(loaded) == 13
    for layer in loaded:
        for got, want in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(got, want)


def _segnet_basic_params(num_classes, depth=4, filters=64, k=7, in_ch=3):
    """segnet_basic_train.prototxt: 4 + 4 convs (7x7, 64, bias, BN), 1x1 classifier."""
    convs = _conv_params(k, in_ch, filters) + (2 * depth - 1) * _conv_params(k, filters, filters)
    return convs + 2 * depth * _bn(filters) + _conv_params(1, filters, num_classes)


def test_segnet_basic_parameter_arithmetic_and_layout():
    # 11 classes: 1,415,563 weights and biases + 1,024 BN scale/shift learned in Caffe
    # = 1,416,587; Keras adds 1,024 moving statistics: 1,417,611.
    assert _segnet_basic_params(11) == 1_417_611
    model = _tiny("segnet_basic", 11)
    assert model.count_params() == _segnet_basic_params(11, depth=2, filters=8, k=3) == 2_203
    names = [l.name for l in model.layers]
    assert "input_lrn" in names and not [n for n in names if n.startswith("dec") and n.endswith("relu")]
    assert [n for n in names if n.endswith("_unpool")] == ["dec2_unpool", "dec1_unpool"]


@pytest.mark.slow
def test_segnet_basic_full_size_parameters():
    model = keras_seg.build_model("segnet_basic", 11, input_shape=(360, 480, 3))
    assert model.count_params() == 1_417_611 and _bn_stats(model) == 1_024
    assert model.get_layer("enc1_conv").kernel_size == (7, 7)


# ------------------------------------------------------------------------------- DeconvNet


def _deconvnet_params(blocks, num_classes, fc=4096, k=7, in_ch=3):
    """DeconvNet_inference_deploy.prototxt: VGG16 convs + BN, fc6 (k x k) + BN, fc7 (1x1) + BN,
    fc6-deconv (k x k) + BN, mirrored 3x3 deconvolutions + BN, seg-score 1x1."""
    total, c_in = 0, in_ch
    for f, n in blocks:
        for _ in range(n):
            total += _conv_params(3, c_in, f) + _bn(f)
            c_in = f
    total += _conv_params(k, c_in, fc) + _bn(fc) + _conv_params(1, fc, fc) + _bn(fc)
    total += _conv_params(k, fc, c_in) + _bn(c_in)
    for i in range(len(blocks), 0, -1):
        f, n = blocks[i - 1]
        for j in range(1, n + 1):
            out = f if j < n else (blocks[i - 2][0] if i > 1 else f)
            total += _conv_params(3, c_in, out) + _bn(out)
            c_in = out
    return total + _conv_params(1, c_in, num_classes)


def test_deconvnet_parameter_arithmetic():
    # VOC, 21 classes: 251,839,061 (33,408 of them BN moving statistics); the SegNet paper's
    # comparison lists DeconvNet at 252M parameters.
    assert _deconvnet_params(VGG16_BLOCKS, 21) == 251_839_061
    opts = keras_seg.tiny_options("deconvnet")
    model = _tiny("deconvnet", 21)
    want = _deconvnet_params(opts["blocks"], 21, opts["fc_channels"], opts["fc_kernel"])
    assert model.count_params() == want


def test_deconvnet_pads_small_inputs_to_its_fc6_window():
    """Tiny: fc6 3x3 on the stride-4 map needs 12x12; 5x30 is padded to 12x32, then cropped."""
    model = _tiny("deconvnet")
    outputs = [model.get_layer("pad").output, model.get_layer("fc6_conv").output, model.output]
    probe = keras.Model(model.input, outputs)
    padded, fc6, out = probe.predict_on_batch(np.ones((1, 5, 30, 3), "float32"))
    assert padded.shape[1:3] == (12, 32) and fc6.shape[1:3] == (1, 6) and out.shape == (1, 5, 30, 5)


@pytest.mark.slow
def test_deconvnet_full_size_matches_the_deploy_prototxt():
    model = keras_seg.build_model("deconvnet", 21, input_shape=(224, 224, 3))
    assert model.count_params() == 251_839_061 and _bn_stats(model) == 33_408
    # deploy prototxt comments: pool5 7x7, fc6/fc7 1x1, fc6-deconv 7x7, unpool5 14 ... unpool1 224
    sizes = {"block5_pool": 7, "fc6_conv": 1, "fc7_conv": 1, "dec6_deconv": 7, "dec5_unpool": 14,
             "dec4_unpool": 28, "dec3_unpool": 56, "dec2_unpool": 112, "dec1_unpool": 224}
    for name, size in sizes.items():
        out = model.get_layer(name).output
        out = out[0] if isinstance(out, (list, tuple)) else out
        assert tuple(out.shape[1:3]) == (size, size), name
    widths = [l.filters for l in model.layers if isinstance(l, keras.layers.Conv2DTranspose)]
    assert widths == [512, 512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64, 64]


# ------------------------------------------------------------------------------- FusionNet


def _fusionnet_params(num_classes, in_ch=1, base=64, depth=4, up_k=2):
    """Independent count of the paper's Fig. 2: per level conv + 3-conv residual block + conv,
    all 3x3 without bias, each with BN; bias-free transposed convolutions with BN; 1x1 output."""

    def crc(c_in, f):  # conv-res-conv
        return _conv_params(3, c_in, f, False) + 4 * _conv_params(3, f, f, False) + 5 * _bn(f)

    widths = [base * 2**i for i in range(depth + 1)]
    total, c_in = 0, in_ch
    for f in widths:  # encoder levels and bridge
        total += crc(c_in, f)
        c_in = f
    for f in reversed(widths[:-1]):
        total += up_k * up_k * c_in * f + _bn(f) + crc(f, f)
        c_in = f
    return total + _conv_params(1, c_in, num_classes)


def test_fusionnet_parameter_arithmetic():
    # The paper's configuration: 1-channel EM input, 1 output map, 64 ... 1024 filters.
    assert _fusionnet_params(1) == 75_065_217
    model = _tiny("fusionnet", 2)
    opts = keras_seg.tiny_options("fusionnet")
    assert model.count_params() == _fusionnet_params(2, in_ch=3, base=opts["base_width"], depth=opts["depth"])


def test_fusionnet_skips_are_summed_at_equal_resolution():
    model = _tiny("fusionnet")
    for i in range(1, keras_seg.tiny_options("fusionnet")["depth"] + 1):
        add = model.get_layer(f"dec{i}_add")
        assert isinstance(add, keras.layers.Add)
        sources = {t._keras_history.operation.name for t in add.input}
        assert sources == {f"dec{i}_up_relu", f"enc{i}_conv2_relu"}
    assert not [l for l in model.layers if isinstance(l, keras.layers.Concatenate)]


@pytest.mark.slow
def test_fusionnet_full_size_parameters():
    model = keras_seg.build_model("fusionnet", 1, input_shape=(640, 640, 1))
    assert model.count_params() == 75_065_217 and _bn_stats(model) == 31_360
    assert tuple(model.get_layer("bridge_conv2_relu").output.shape[1:]) == (40, 40, 1024)


# --------------------------------------------------------------------------------- configs

CONFIGS = {
    "fcn8s_voc.cfg": ("fcn8s", "configs/base/voc.cfg"),
    **{f"{m}_camvid.cfg": (m, "configs/base/camvid.cfg") for m in FAMILY},
}
TRAINER_FLAGS = set(TRAIN_FLAGS) | {"flagfile"}  # the trainer's own list, never a stale copy


def _read_flags(path):
    flags = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert line.startswith("--") and "=" in line, (path.name, line)
            flags.append(tuple(line[2:].split("=", 1)))
    return flags


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
def test_config_flags_and_model_options_are_real(cfg):
    repo = pathlib.Path(__file__).resolve().parents[2]
    model, base = CONFIGS[cfg]
    flags = _read_flags(repo / "configs" / cfg)
    assert flags[0] == ("flagfile", base) and (repo / base).is_file()
    for name, _ in flags + _read_flags(repo / base):
        assert name in TRAINER_FLAGS, (cfg, name)
    values = dict(flags)
    assert values["model"] == model
    assert values["optimizer"] in ("sgd", "adamw")
    accepted = keras_seg.get_spec(model).option_names()
    options = {}
    for name, value in flags:
        if name == "model_opt":
            key, raw = value.split("=", 1)
            assert key in accepted, (cfg, key)
            try:
                options[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                options[key] = raw
    # The options must be values the builder accepts (checked on the tiny variant, offline).
    options.pop("backbone_weights", None)
    _tiny(model, **options)


@pytest.mark.parametrize("name", ["fcn8s", "segnet_basic"])
def test_mixed_float16_keeps_float32_logits(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _tiny(name)
        inner = "fuse_pool3" if name == "fcn8s" else "dec1_unpool"
        assert model.get_layer(inner).output.dtype == "float16"
        out = model.predict_on_batch(np.random.default_rng(0).normal(size=(1, 33, 47, 3)).astype("float32"))
        assert model.output.dtype == "float32" and out.dtype == np.float32 and np.isfinite(out).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")
