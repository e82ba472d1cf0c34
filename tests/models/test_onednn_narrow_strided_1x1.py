"""No registry model, at its default options, has the layer that TF 2.21's oneDNN mis-trains on CPU.

The weight gradient of a 1x1 stride-2 convolution with fewer input channels than oneDNN's SIMD
block (16 on AVX-512, 8 on AVX2) is written past its workspace: an abort or a wrong gradient
(uxlfoundation/oneDNN#6035; README, Known issues). The README states that no model has such a layer
at its default options and that the ResNet backbones do with ``width`` under 16; these tests check
both claims.
"""
import keras
import pytest

import keras_seg
from keras_seg.models.backbones import get_backbone

SIMD_BLOCK = 16  # AVX-512; AVX2's is 8, so a layer clear of 16 is clear of both


def narrow_strided_pointwise(model):
    """(layer name, input channels, strides) of every 1x1 strided Conv2D with < SIMD_BLOCK inputs."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose):
            inputs = layer.kernel.shape[-2] * layer.groups
            if tuple(layer.kernel_size) == (1, 1) and max(layer.strides) > 1 and inputs < SIMD_BLOCK:
                found.append((layer.name, inputs, tuple(layer.strides)))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", keras_seg.list_models())
def test_no_default_model_has_a_narrow_strided_pointwise_conv(name):
    model = keras_seg.build_model(name, 11, input_shape=(256, 256, 3))
    assert narrow_strided_pointwise(model) == []


def test_the_scan_finds_the_resnet_shortcut_at_width_8():
    """The README's warning, and a check that the scan above can fail."""
    x = keras.Input((64, 64, 3))
    for width, expected in ((8, 1), (16, 0)):
        feats = get_backbone("resnet18").features(x, output_stride=32, blocks=(1, 1, 1, 1), width=width)
        found = narrow_strided_pointwise(keras.Model(x, feats[32]))
        assert len(found) == expected, (width, found)
        assert all(inputs == width and strides == (2, 2) for _, inputs, strides in found)
