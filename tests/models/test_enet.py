"""ENet: bottleneck structure, unpooling with the encoder's indices, parameter counts."""

import keras
import numpy as np
import pytest

import keras_seg
from keras_seg.models.blocks import MaxUnpooling2D, PadChannels


def _tiny(**kwargs):
    return keras_seg.build_model("enet", 3, **{**keras_seg.tiny_options("enet"), **kwargs})


def test_pad_channels_appends_zero_maps():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype("float32")
    y = np.asarray(PadChannels(8)(x))
    np.testing.assert_array_equal(y[..., :5], x)
    np.testing.assert_array_equal(y[..., 5:], 0)


def test_stage2_bottleneck_kinds():
    model = keras_seg.build_model("enet", 3, widths=(8, 16, 16), stage1_blocks=0, stage23_blocks=8,
                                  stage4_blocks=0, stage5_blocks=0)
    assert model.get_layer("bottleneck2_2_conv2").dilation_rate == (2, 2)
    assert model.get_layer("bottleneck2_3_conv2a").kernel_size == (1, 5)
    assert model.get_layer("bottleneck2_3_conv2b").kernel_size == (5, 1)
    assert model.get_layer("bottleneck2_8_conv2").dilation_rate == (16, 16)
    assert isinstance(model.get_layer("bottleneck2_1_1_prelu"), keras.layers.PReLU)


def test_decoder_unpools_with_the_encoder_indices():
    model = _tiny()
    unpool = model.get_layer("bottleneck4_0_unpool")
    assert isinstance(unpool, MaxUnpooling2D)
    # bottleneck4.0 unpools with bottleneck2.0's argmax, bottleneck5.0 with bottleneck1.0's
    indices = model.get_layer("bottleneck2_0_pool").output[1]
    assert unpool.input[1] is indices or unpool.input[1].name == indices.name
    assert model.get_layer("bottleneck5_0_unpool").output.shape[-1] == 8


def test_initial_block_concatenates_conv_and_pool():
    model = _tiny()
    assert model.get_layer("initial_conv").filters == 8 - 3
    assert model.get_layer("initial_concat").output.shape[-1] == 8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(widths=(3, 16, 16)), "Received: widths"),
        (dict(widths=(8, 16, 12)), "Received: widths"),
        (dict(stage23_blocks=-1), "Received: stage23_blocks=-1"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kwargs)


def test_tiny_parameter_count():
    assert _tiny().count_params() == 3_889


@pytest.mark.slow
def test_full_size_parameters():
    # Paper, Table 3: ENet has 0.37M parameters. Our count with BN moving statistics (the
    # convention of Keras' count_params and of the FC-DenseNet paper) is 372,208 for the 12
    # CamVid classes of the released code; its trainable weights alone are 363,856.
    model = keras_seg.build_model("enet", 12)
    assert model.count_params() == 372_208
    assert round(model.count_params() / 1e6, 2) == 0.37
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 363_856
