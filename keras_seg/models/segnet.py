"""SegNet and SegNet-Basic (Badrinarayanan, Kendall and Cipolla, TPAMI 2017).

Paper: https://arxiv.org/abs/1511.00561. The builders follow the reference Caffe models of
SegNet-Tutorial (https://github.com/alexgkendall/SegNet-Tutorial, ``Models/
segnet_train.prototxt`` and ``segnet_basic_train.prototxt``):

* SegNet: the 13 convolutions of VGG16, each with bias, BatchNorm and ReLU, and 2x2 max
  pooling that keeps its argmax indices; a mirrored decoder in which every stage unpools
  with the indices of its encoder stage, then applies as many 3x3 convolutions (bias, BN,
  ReLU) as the encoder stage had, the last one narrowing to the next stage's width; the
  very last convolution (``conv1_1_D``, 3x3) outputs the class scores.
* SegNet-Basic: LRN on the input, 4 encoders of one 7x7 convolution with 64 filters (bias,
  BN, ReLU) and pooling, 4 decoders of unpooling and one 7x7 convolution with 64 filters
  with BN and no ReLU, and a 1x1 classifier.

Unpooling is :class:`~keras_seg.models.blocks.MaxUnpooling2D` (builtin-only TFLite). Inputs are
zero-padded at the bottom/right to a multiple of ``2 ** stages`` and the logits are cropped
back, so every input size works and nothing is resized. (Caffe used ceil-mode pooling and
unpooled to the encoder's odd size instead.)
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import keras

from keras_seg.models.backbones.vgg import (
    VGG16_BLOCKS,
    check_backbone_weights,
    check_vgg_blocks,
    load_vgg16_weights,
    vgg16_features,
)
from keras_seg.models.blocks import (
    check_positive_ints,
    CropLike,
    LocalResponseNorm,
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    PadToMultiple,
    batch_norm,
    check_common_args,
    load_weights_if_given,
    logits_layer,
)
from keras_seg.registry import register

__all__ = ["build_segnet", "build_segnet_basic"]

_PAPER = (
    "Badrinarayanan, Kendall and Cipolla, SegNet, TPAMI 2017, https://arxiv.org/abs/1511.00561"
)


def _conv_bias_bn(x, filters: int, kernel_size: int, name: str, relu: bool = True):
    """Caffe's Convolution (with bias), BN and optional ReLU: ``name_conv/_bn/_relu``."""
    x = keras.layers.Conv2D(
        filters, kernel_size, padding="same", kernel_initializer="he_normal", name=f"{name}_conv"
    )(x)
    x = batch_norm(f"{name}_bn")(x)
    if relu:
        x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    return x


@register(
    "segnet",
    tiny=dict(blocks=((8, 2), (16, 1))),
    paper=_PAPER,
)
def build_segnet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    blocks: Sequence[Tuple[int, int]] = VGG16_BLOCKS,
    backbone_weights: Optional[str] = None,
    weights: Optional[str] = None,
    name: str = "segnet",
) -> keras.Model:
    """Builds SegNet: a VGG16-BN encoder and a mirrored decoder that unpools with its indices.

    With 11 classes (CamVid) it has 29,465,227 parameters, of which 15,872 are BatchNorm
    moving statistics (non-trainable): the prototxt's 29,449,355 learned parameters.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``. Every size works (padded to a
        multiple of ``2 ** len(blocks)`` and cropped back).
      blocks: encoder ``(filters, convolutions)`` per stage; :data:`VGG16_BLOCKS` is SegNet.
        The decoder mirrors it.
      backbone_weights: ``None``, ``"imagenet"`` or a path to the Keras VGG16 no-top weights,
        loaded into the encoder convolutions (the paper initialises the encoder from VGG16).
      weights: ``None`` or a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A ``keras.Model`` returning float32 logits ``(B, H, W, num_classes)``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    blocks = check_vgg_blocks(blocks)
    check_backbone_weights(backbone_weights, blocks, input_shape)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = PadToMultiple(2 ** len(blocks), name="pad")(inputs)
    features, indices = vgg16_features(x, blocks=blocks, batch_norm=True, pooling="argmax")
    x = features[2 ** len(blocks)]
    for i in range(len(blocks), 0, -1):  # decoder stage i mirrors encoder block i
        filters, convs = blocks[i - 1]
        x = MaxUnpooling2D(2, name=f"dec{i}_unpool")(x, indices[2**i])
        for j in range(convs, 0, -1):  # conv{i}_{j}_D in the prototxt, j counting down
            if j > 1:
                x = _conv_bias_bn(x, filters, 3, f"dec{i}_{j}")
            elif i > 1:
                x = _conv_bias_bn(x, blocks[i - 2][0], 3, f"dec{i}_{j}")
            else:  # conv1_1_D: the 3x3 classifier
                x = logits_layer(x, num_classes, name="logits_full", kernel_size=3)
    outputs = CropLike(dtype="float32", name="logits")(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    load_vgg16_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)


@register(
    "segnet_basic",
    tiny=dict(depth=2, filters=8, kernel_size=3),
    paper=_PAPER,
)
def build_segnet_basic(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    depth: int = 4,
    filters: int = 64,
    kernel_size: int = 7,
    input_lrn: bool = True,
    weights: Optional[str] = None,
    name: str = "segnet_basic",
) -> keras.Model:
    """Builds SegNet-Basic, the smaller SegNet of the paper's decoder study.

    With 11 classes (CamVid) it has 1,417,611 parameters, of which 1,024 are BatchNorm
    moving statistics (non-trainable): the prototxt's 1,416,587 learned parameters.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``. Every size works (padded to a
        multiple of ``2 ** depth`` and cropped back).
      depth: number of encoder (and decoder) stages; 4 in the paper.
      filters: filters of every convolution; 64 in the paper.
      kernel_size: size of every encoder/decoder convolution; 7 in the paper.
      input_lrn: apply the prototxt's LRN (``local_size 5, alpha 1e-4, beta 0.75``) to the
        input, the paper's local contrast normalisation.
      weights: ``None`` or a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A ``keras.Model`` returning float32 logits ``(B, H, W, num_classes)``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    check_positive_ints(depth=depth, filters=filters, kernel_size=kernel_size)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = PadToMultiple(2**depth, name="pad")(inputs)
    if input_lrn:
        x = LocalResponseNorm(5, alpha=1e-4, beta=0.75, name="input_lrn")(x)
    indices = []
    for i in range(1, depth + 1):
        x = _conv_bias_bn(x, filters, kernel_size, f"enc{i}")
        x, index = MaxPoolingWithArgmax2D(2, name=f"enc{i}_pool")(x)
        indices.append(index)
    for i in range(depth, 0, -1):
        x = MaxUnpooling2D(2, name=f"dec{i}_unpool")(x, indices[i - 1])
        x = _conv_bias_bn(x, filters, kernel_size, f"dec{i}", relu=False)  # no ReLU (prototxt)
    x = logits_layer(x, num_classes, name="logits_full")
    outputs = CropLike(dtype="float32", name="logits")(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    return load_weights_if_given(model, weights)
