"""DeepLab v1 (LargeFOV) and G-FRNet on the shared VGG16 backbone, and the backbone options
they use (Caffe 3x3 pooling with output stride 8, dropout after pools, pre-pool features)."""

import keras
import numpy as np
import pytest

import keras_seg
from keras_seg.models.backbones.vgg import VGG16_BLOCKS, vgg16_features

TINY_BLOCKS = ((4, 1), (4, 1), (8, 1), (8, 1), (8, 1))


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ------------------------------------------------------------------ vgg16_features options


def test_caffe3x3_pooling_at_output_stride_8_dilates_block5():
    inputs = keras.Input((65, 97, 3))
    features = vgg16_features(inputs, blocks=TINY_BLOCKS, pooling="caffe3x3", output_stride=8)
    assert sorted(features) == [2, 4, 8]
    assert features[8].shape[1:3] == (9, 13)  # ceil(65/8), ceil(97/8): Caffe's count for odd sizes
    model = keras.Model(inputs, features[8])
    assert model.get_layer("block4_conv1").dilation_rate == (1, 1)
    assert model.get_layer("block5_conv1").dilation_rate == (2, 2)
    assert model.get_layer("block4_pool").strides == (1, 1)
    assert model.get_layer("block3_pool").pool_size == (3, 3)


def test_caffe3x3_pooling_matches_caffe_windows():
    # Caffe: pad 1, 3x3 windows at stride 2 -> output i covers input rows 2i-1 .. 2i+1.
    x = np.random.default_rng(0).uniform(size=(1, 7, 9, 1)).astype("float32")  # >= 0, as after ReLU
    inputs = keras.Input((None, None, 1))
    pooled = vgg16_features(inputs, blocks=((1, 1),), pooling="caffe3x3")[2]
    model = keras.Model(inputs, pooled)
    centre = np.zeros((3, 3, 1, 1), "float32")
    centre[1, 1] = 1.0  # block1_conv1 passes the (non-negative) input through
    model.get_layer("block1_conv1").set_weights([centre, np.zeros(1, "float32")])
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.array([[padded[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, 0].max() for j in range(5)] for i in range(4)])
    assert len(np.unique(want)) > 5  # a real max over distinct values
    np.testing.assert_array_equal(np.asarray(model(x))[0, :, :, 0], want)


def test_pre_pool_features_and_pool_dropout():
    inputs = keras.Input((64, 64, 3))
    pooled, before = vgg16_features(
        inputs, blocks=TINY_BLOCKS, batch_norm=True, pooling="ceil", pool_dropout={3: 0.5, 5: 0.5}, pre_pool=True
    )
    assert {s: t.shape[1] for s, t in before.items()} == {1: 64, 2: 32, 4: 16, 8: 8, 16: 4}
    assert {s: t.shape[1] for s, t in pooled.items()} == {2: 32, 4: 16, 8: 8, 16: 4, 32: 2}
    names = [layer.name for layer in keras.Model(inputs, pooled[32]).layers]
    assert "block3_pool_dropout" in names and "block5_pool_dropout" in names and "block4_pool_dropout" not in names


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output_stride=8), "Received: output_stride=8"),  # needs caffe3x3 pooling
        (dict(pooling="caffe3x3", output_stride=12), "Received: output_stride=12"),
        (dict(pool_dropout={6: 0.5}), "Received: pool_dropout"),
        (dict(pooling="argmax", pre_pool=True), "Received: pre_pool=True"),
    ],
)
def test_bad_vgg_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vgg16_features(keras.Input((None, None, 3)), blocks=TINY_BLOCKS, **kwargs)


def test_default_vgg16_is_unchanged():
    """The new options default to the original behaviour: keras.applications.VGG16's graph."""
    inputs = keras.Input((None, None, 3))
    ours = keras.Model(inputs, vgg16_features(inputs)[32])
    ref = keras.applications.VGG16(include_top=False, weights=None)
    assert [layer.name for layer in ours.layers[1:]] == [layer.name for layer in ref.layers[1:]]
    for layer in ref.layers[1:]:
        mine = ours.get_layer(layer.name).get_config()
        for key in ("filters", "kernel_size", "strides", "padding", "dilation_rate", "pool_size"):
            assert mine.get(key) == layer.get_config().get(key), (layer.name, key)


# ------------------------------------------------------------------ DeepLab v1


def test_deeplab_v1_large_fov_head():
    model = keras_seg.build_model("deeplab_v1", 3, **keras_seg.tiny_options("deeplab_v1"))
    assert model.get_layer("fc6").dilation_rate == (12, 12) and model.get_layer("fc6").kernel_size == (3, 3)
    assert model.get_layer("fc7").kernel_size == (1, 1)
    assert model.get_layer("fc8").output.shape[-1] == 3


def test_deeplab_v1_bad_options_raise():
    with pytest.raises(ValueError, match="Received: blocks"):
        keras_seg.build_model("deeplab_v1", 3, blocks=((8, 1), (8, 1), (8, 1)))
    with pytest.raises(ValueError, match="Received: fc6_rate=0"):
        keras_seg.build_model("deeplab_v1", 3, **keras_seg.tiny_options("deeplab_v1"), fc6_rate=0)


# ------------------------------------------------------------------ G-FRNet


def test_gfrnet_declares_deep_supervision_of_every_coarse_prediction():
    assert keras_seg.get_spec("gfrnet").aux_weights == {f"aux_s{s}": 1.0 for s in (32, 16, 8, 4, 2)}


def test_gfrnet_gates_multiply_adjacent_encoder_levels():
    model = keras_seg.build_model("gfrnet", 3, **keras_seg.tiny_options("gfrnet"))
    for stride, block in zip((16, 8, 4, 2, 1), (5, 4, 3, 2, 1)):
        gate = model.get_layer(f"gate_s{stride}_product")
        assert isinstance(gate, keras.layers.Multiply)
        # the finer side is the block's last activation before pooling
        feature = model.get_layer(f"gate_s{stride}_feature")
        assert feature.input.shape[-1] == TINY_BLOCKS[block - 1][0]
    assert model.get_layer("logits").input.shape[-1] == 2 * 3  # gate + upsampled prediction


def test_gfrnet_bad_options_raise():
    with pytest.raises(ValueError, match="Received: blocks"):
        keras_seg.build_model("gfrnet", 3, blocks=TINY_BLOCKS[:4])
    with pytest.raises(ValueError, match="Received: aux_outputs=1"):
        keras_seg.build_model("gfrnet", 3, **keras_seg.tiny_options("gfrnet"), aux_outputs=1)


def test_vgg_weights_load_into_deeplab_v1_and_gfrnet(tmp_path):
    keras.utils.set_random_seed(5)
    ref = keras.applications.VGG16(include_top=False, weights=None)
    path = str(tmp_path / "vgg16.weights.h5")
    ref.save_weights(path)
    kernel = ref.get_layer("block5_conv3").get_weights()[0]
    for name in ("deeplab_v1", "gfrnet"):
        model = keras_seg.build_model(name, 3, backbone_weights=path, fc_filters=8)
        np.testing.assert_array_equal(model.get_layer("block5_conv3").get_weights()[0], kernel)


# ------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize("name, params", [("deeplab_v1", 6_939), ("gfrnet", 5_346)])
def test_tiny_parameter_counts(name, params):
    assert keras_seg.build_model(name, 3, **keras_seg.tiny_options(name)).count_params() == params


@pytest.mark.slow
def test_deeplab_v1_full_size_parameters():
    # Paper, Table 2: DeepLab-LargeFOV has 20.5M parameters (VOC, 21 classes): VGG16's 13
    # convolutions (14,714,688) + fc6 3x3 512->1024 + fc7 1x1 1024->1024 + fc8 1x1 1024->21.
    model = keras_seg.build_model("deeplab_v1", 21)
    expected = 14_714_688 + (9 * 512 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 21 + 21)
    assert model.count_params() == expected == 20_505_429
    assert round(model.count_params() / 1e6, 1) == 20.5


@pytest.mark.slow
def test_gfrnet_full_size_parameters():
    # mrochan/gfrnet models/camvid/train_camvid_gate.prototxt (CamVid, 11 classes), layer by
    # layer: VGG16-BN encoder, conv6/conv7 (3x3, 1024, BN), pred_1, the five gate feature
    # convolutions (+BN but pool5's), five gate BNs and five 3x3 predictions on 2C channels.
    c = 11
    encoder = 14_714_688 + 2 * (64 * 2 + 128 * 2 + 256 * 3 + 512 * 6)
    fc = (9 * 512 * 1024 + 1024 + 2 * 1024) + (9 * 1024 * 1024 + 1024 + 2 * 1024)
    coarse = (9 * 1024 * c + c) + (9 * 512 * c + c)
    gates = sum(9 * ch * c + c + 2 * c for ch in (512, 512, 256, 128, 64)) + 5 * 2 * c
    refine = 5 * (9 * 2 * c * c + c)
    model = keras_seg.build_model("gfrnet", c)
    assert _trainable(model) == encoder + fc + coarse + gates + refine == 29_194_090
    assert len(keras_seg.build_model("gfrnet", c, aux_outputs=True).outputs) == 6
