"""FC-DenseNet56/67/103: the paper's layer counts and parameter counts, tiny golden counts."""

import keras
import pytest

import keras_seg


def _convolutions(model):
    return [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]


@pytest.mark.parametrize("name, params", [("fc_densenet56", 7_682), ("fc_densenet67", 10_843), ("fc_densenet103", 10_771)])
def test_tiny_parameter_counts(name, params):
    assert keras_seg.build_model(name, 3, **keras_seg.tiny_options(name)).count_params() == params


def test_transition_up_upsamples_only_the_new_maps():
    model = keras_seg.build_model("fc_densenet103", 3, **keras_seg.tiny_options("fc_densenet103"))
    # tiny: blocks (1, 2, 3), growth 4: the 3-layer bottleneck's 12 new maps go up, not its input.
    assert model.get_layer("tu2_conv").input.shape[-1] == 3 * 4
    assert model.get_layer("tu2_conv").filters == 3 * 4
    assert model.get_layer("tu1_conv").input.shape[-1] == 2 * 4


def test_bad_layers_per_block_raise():
    with pytest.raises(ValueError, match="Received: layers_per_block=\\(4,\\)"):
        keras_seg.build_model("fc_densenet56", 3, layers_per_block=(4,))


# Paper (Jégou et al., Table 2 / Sec. 4.1) on CamVid's 11 classes: FC-DenseNet56 1.4M, 67 3.5M and
# 103 9.4M parameters; the names count the convolutions (first conv, dense-block layers,
# transitions down and up, classifier). Lasagne's count in the released code includes the BN
# mean / inv_std like Keras' count_params().
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, depth, millions, exact",
    [
        ("fc_densenet56", 56, 1.4, 1_397_963),
        ("fc_densenet67", 67, 3.5, 3_502_923),
        ("fc_densenet103", 103, 9.4, 9_425_163),
    ],
)
def test_full_size_matches_the_paper(name, depth, millions, exact):
    model = keras_seg.build_model(name, 11)
    assert len(_convolutions(model)) == depth
    assert round(model.count_params() / 1e6, 1) == millions
    assert model.count_params() == exact
