"""DeconvNet (Noh, Hong and Han, "Learning Deconvolution Network for Semantic Segmentation",
ICCV 2015). Paper: https://arxiv.org/abs/1505.04366.

Follows the official deploy model (https://github.com/HyeonwooNoh/DeconvNet,
``model/DeconvNet/DeconvNet_inference_deploy.prototxt``):

* VGG16 convolutions, each with bias, BatchNorm and ReLU, and 2x2 max pooling that keeps
  its switches (argmax indices);
* ``fc6`` as a 7x7 valid convolution with 4096 filters and ``fc7`` as a 1x1 convolution
  with 4096 filters, each with BN and ReLU (no dropout in the prototxts);
* ``fc6-deconv`` (here ``dec6``), a 7x7 valid transposed convolution back to 512 channels,
  BN, ReLU;
* a mirrored decoder: every stage unpools with its encoder stage's switches, then applies
  as many 3x3 transposed convolutions (bias, BN, ReLU) as the encoder stage had
  convolutions, the last narrowing to the next stage's width (64 in stage 1);
* ``seg-score``, a 1x1 convolution to the classes.

The network was trained on 224x224 object proposals, where pool5 is 7x7 and fc6 gives 1x1.
Here the input is zero-padded at the bottom/right to a multiple of 32 and to at least 224
(``fc_kernel * 2 ** stages``) and the logits are cropped back, so every input size works.
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
    MaxUnpooling2D,
    PadToMultiple,
    batch_norm,
    check_common_args,
    load_weights_if_given,
    logits_layer,
)
from keras_seg.registry import register

__all__ = ["build_deconvnet"]


def _bn_relu(x, name: str):
    x = batch_norm(f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _deconv_bn_relu(x, filters: int, kernel_size: int, name: str, padding: str = "same"):
    """Caffe Deconvolution (with bias), BN, ReLU: ``name_deconv/_bn/_relu``."""
    x = keras.layers.Conv2DTranspose(
        filters, kernel_size, padding=padding, kernel_initializer="he_normal", name=f"{name}_deconv"
    )(x)
    return _bn_relu(x, name)


@register(
    "deconvnet",
    tiny=dict(blocks=((8, 2), (16, 1)), fc_channels=16, fc_kernel=3),
    paper="Noh, Hong and Han, Learning Deconvolution Network for Semantic Segmentation, "
    "ICCV 2015, https://arxiv.org/abs/1505.04366",
)
def build_deconvnet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    blocks: Sequence[Tuple[int, int]] = VGG16_BLOCKS,
    fc_channels: int = 4096,
    fc_kernel: int = 7,
    backbone_weights: Optional[str] = None,
    weights: Optional[str] = None,
    name: str = "deconvnet",
) -> keras.Model:
    """Builds DeconvNet: VGG16-BN, fc6/fc7 convolutions, and a mirrored unpooling/deconvolution decoder.

    With 21 classes (PASCAL VOC) it has 251,839,061 parameters, of which 33,408 are BatchNorm
    moving statistics (non-trainable); the paper reports 252M.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``. Every size works: inputs are
        padded to a multiple of ``2 ** len(blocks)`` and to at least
        ``fc_kernel * 2 ** len(blocks)`` (224), and the logits are cropped back.
      blocks: encoder ``(filters, convolutions)`` per stage; :data:`VGG16_BLOCKS` is DeconvNet.
      fc_channels: filters of ``fc6`` and ``fc7``; 4096 in the paper.
      fc_kernel: kernel of ``fc6`` and ``fc6-deconv``; 7 in the paper.
      backbone_weights: ``None``, ``"imagenet"`` or a path to the Keras VGG16 no-top weights,
        loaded into the encoder convolutions (the paper starts from VGG16).
      weights: ``None`` or a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A ``keras.Model`` returning float32 logits ``(B, H, W, num_classes)``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    blocks = check_vgg_blocks(blocks)
    check_positive_ints(fc_channels=fc_channels, fc_kernel=fc_kernel)
    check_backbone_weights(backbone_weights, blocks, input_shape)

    stride = 2 ** len(blocks)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = PadToMultiple(stride, minimum=fc_kernel * stride, name="pad")(inputs)
    features, indices = vgg16_features(x, blocks=blocks, batch_norm=True, pooling="argmax")
    x = features[stride]
    x = keras.layers.Conv2D(fc_channels, fc_kernel, kernel_initializer="he_normal", name="fc6_conv")(x)
    x = _bn_relu(x, "fc6")
    x = keras.layers.Conv2D(fc_channels, 1, kernel_initializer="he_normal", name="fc7_conv")(x)
    x = _bn_relu(x, "fc7")
    x = _deconv_bn_relu(x, blocks[-1][0], fc_kernel, "dec6", padding="valid")  # fc6-deconv
    for i in range(len(blocks), 0, -1):  # decoder stage i mirrors encoder block i
        filters, convs = blocks[i - 1]
        x = MaxUnpooling2D(2, name=f"dec{i}_unpool")(x, indices[2**i])
        for j in range(1, convs + 1):  # deconv{i}_{j} in the prototxt
            last_width = blocks[i - 2][0] if i > 1 else filters
            x = _deconv_bn_relu(x, filters if j < convs else last_width, 3, f"dec{i}_{j}")
    x = logits_layer(x, num_classes, name="logits_full")  # seg-score, 1x1
    outputs = CropLike(dtype="float32", name="logits")(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    load_vgg16_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)
