"""U-Net: the paper's valid network, its size rule, and the same-padding default."""

import numpy as np
import pytest

import keras_seg
from keras_seg.models.unet import valid_unet_output_size, valid_unet_sizes


def _paper_param_count(in_ch, num_classes, widths=(64, 128, 256, 512, 1024)):
    """Independent arithmetic: 3x3 convs, 2x2 up-convs halving channels, 1x1 classifier."""
    def conv(k, i, o):
        return k * k * i * o + o
    total, prev = 0, in_ch
    for w in widths:
        total += conv(3, prev, w) + conv(3, w, w)
        prev = w
    for w in reversed(widths[:-1]):
        total += conv(2, prev, w) + conv(3, 2 * w, w) + conv(3, w, w)
        prev = w
    return total + conv(1, widths[0], num_classes)


def test_paper_network_572_gives_388_and_paper_param_count():
    model = keras_seg.build_model("unet", 2, input_shape=(572, 572, 1), padding="valid")
    assert model.output_shape == (None, 388, 388, 2)
    # 31,030,658 parameters for 1 input channel and 2 classes, as in the paper's figure 1.
    assert model.count_params() == _paper_param_count(1, 2) == 31_030_658


def test_valid_size_rule():
    assert valid_unet_output_size(572) == 388
    assert valid_unet_output_size(188) == 4  # the smallest input
    assert valid_unet_sizes(570) == (556, 572)
    assert valid_unet_sizes(100) == (None, 188)


def test_valid_refuses_static_size_with_nearest():
    with pytest.raises(ValueError, match=r"cannot take an input side of 570.*Nearest accepted sizes: \[556, 572\]"):
        keras_seg.build_model("unet", 2, input_shape=(570, 572, 1), padding="valid")


def test_valid_refuses_dynamic_size_at_run_time():
    model = keras_seg.build_model("unet", 2, input_shape=(None, None, 1), padding="valid", base_width=4)
    assert model.predict_on_batch(np.zeros((1, 188, 204, 1), "float32")).shape == (1, 4, 20, 2)
    with pytest.raises(Exception, match=r"must each be 60 \+ 16\*k and >= 188"):
        model.predict_on_batch(np.zeros((1, 190, 204, 1), "float32"))


@pytest.mark.parametrize("depth,size", [(2, (1, 1)), (3, (13, 50)), (4, (17, 33))])
def test_same_padding_returns_input_size(depth, size):
    model = keras_seg.build_model("unet", 3, base_width=4, depth=depth, batch_norm=True)
    out = model.predict_on_batch(np.zeros((1, *size, 3), "float32"))
    assert out.shape == (1, *size, 3)


def test_options_change_the_network():
    base = keras_seg.build_model("unet", 3, base_width=4, depth=2)
    wider = keras_seg.build_model("unet", 3, base_width=8, depth=2)
    deeper = keras_seg.build_model("unet", 3, base_width=4, depth=3)
    bn = keras_seg.build_model("unet", 3, base_width=4, depth=2, batch_norm=True)
    nodrop = keras_seg.build_model("unet", 3, base_width=4, depth=2, dropout=0.0)
    assert wider.count_params() > base.count_params() and deeper.count_params() > base.count_params()
    assert any("_bn" in l.name for l in bn.layers) and not any("_bn" in l.name for l in base.layers)
    assert any(l.name == "bottleneck_dropout" for l in base.layers)
    assert not any(l.name == "bottleneck_dropout" for l in nodrop.layers)
    for bad in (dict(depth=0), dict(base_width=0), dict(dropout=1.0), dict(padding="full")):
        with pytest.raises(ValueError, match="Received"):
            keras_seg.build_model("unet", 3, **bad)
