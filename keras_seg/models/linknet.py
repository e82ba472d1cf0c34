"""LinkNet: Chaurasia and Culurciello, "LinkNet: Exploiting Encoder Representations for
Efficient Semantic Segmentation", VCIP 2017. https://arxiv.org/abs/1707.03718
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from keras_seg.models.backbones.registry import get_backbone
from keras_seg.models.backbones.resnet import stem_pool
from keras_seg.models.blocks import CropLike, PadToMultiple, batch_norm, check_common_args, load_weights_if_given
from keras_seg.registry import register

__all__ = ["build_linknet"]


def _bn_relu(x, name):
    x = batch_norm(f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _full_conv(x, filters, kernel, name, dtype=None, strides=2):
    """Transposed ("full") convolution; at ``strides=2`` it exactly doubles H and W."""
    return keras.layers.Conv2DTranspose(
        filters, kernel, strides=strides, padding="same", use_bias=dtype is not None, dtype=dtype, name=name
    )(x)


def decoder_block(x, out_filters, name, strides=2):
    """LinkNet decoder block (m -> n): 1x1 conv to m/4, 3x3 full-conv (x``strides``), 1x1 conv to n; each BN + ReLU.

    Block 1 mirrors encoder block 1, which does not downsample, so it runs at ``strides=1``.
    """
    mid = max(1, x.shape[-1] // 4)
    x = keras.layers.Conv2D(mid, 1, use_bias=False, name=f"{name}_conv1")(x)
    x = _bn_relu(x, f"{name}_1")
    x = _full_conv(x, mid, 3, f"{name}_up", strides=strides)
    x = _bn_relu(x, f"{name}_2")
    x = keras.layers.Conv2D(out_filters, 1, use_bias=False, name=f"{name}_conv3")(x)
    return _bn_relu(x, f"{name}_3")


@register(
    "linknet",
    tiny=dict(backbone_blocks=(1, 1, 1, 1), backbone_width=8),
    paper="Chaurasia and Culurciello, LinkNet, VCIP 2017, https://arxiv.org/abs/1707.03718",
)
def build_linknet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    backbone: str = "resnet18",
    backbone_weights: Optional[str] = None,
    backbone_blocks: Optional[Sequence[int]] = None,
    backbone_width: int = 64,
    weights: Optional[str] = None,
    name: str = "linknet",
) -> keras.Model:
    """Builds LinkNet, returning logits ``(B, H, W, num_classes)``.

    The encoder is ResNet-18: the initial block (7x7 stride-2 convolution and 3x3 stride-2 max
    pooling, stride 4), then encoder blocks 1-4 (64, 128, 256, 512 filters; strides 4, 8, 16,
    32). Decoder block ``i`` maps the encoder ``i`` width ``m`` to the width ``n`` of encoder
    ``i``'s input (64 for block 1) through a 1x1 convolution to ``m/4``, a 3x3 full convolution
    and a 1x1 convolution to ``n``, each with batch norm and ReLU. The full convolution doubles
    H and W in blocks 2-4 and keeps them in block 1, which mirrors encoder block 1 (no
    downsampling). Decoder ``i``'s output is added to encoder ``i``'s input (the paper's
    "link"): encoder ``i-1``'s output, and the initial block's output for ``i = 1``. The
    classifier, at stride 4, is a 3x3 full convolution (32, x2), a 3x3 convolution (32) and a
    2x2 full convolution to the classes (x2), so the logits come out at the (padded) input size,
    as in the authors' code (e-lab/pytorch-linknet, ``models/linknet.py``). The input is
    zero-padded to a multiple of 32 and the logits cropped back to the input, so any input
    size gives logits of exactly that size.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      backbone: ``"resnet18"`` (paper), ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
      backbone_weights: ``None``, ``"imagenet"`` (ResNet-50/101 only) or a path; see
        :func:`keras_seg.models.backbones.resnet.load_resnet_weights`.
      backbone_blocks: per-stage block counts overriding the backbone's (test-size variants).
      backbone_width: stem filters of the backbone (64 in the paper).
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    encoder = get_backbone(backbone, family="resnet")
    encoder.check(blocks=backbone_blocks, width=backbone_width, weights=backbone_weights)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = PadToMultiple(32, name="pad")(inputs)
    features = encoder.features(x, blocks=backbone_blocks, width=backbone_width)
    # The input of encoder block i: the initial block's output (the stem's max pooling, applied
    # again to the returned conv1 since the backbone returns stage outputs only), then the
    # outputs of encoder blocks 1-3.
    links = [stem_pool(features[2], "link1")] + [features[s] for s in (4, 8, 16)]
    x = features[32]
    for i in (4, 3, 2, 1):
        x = decoder_block(x, links[i - 1].shape[-1], name=f"dec{i}", strides=1 if i == 1 else 2)
        x = keras.layers.Add(name=f"dec{i}_add")([x, links[i - 1]])
    x = _full_conv(x, 32, 3, "final_up1")
    x = _bn_relu(x, "final_up1")
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="final_conv")(x)
    x = _bn_relu(x, "final_conv")
    x = _full_conv(x, num_classes, 2, "logits_full", dtype="float32")
    outputs = CropLike(name="logits", dtype="float32")(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    encoder.load_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)
