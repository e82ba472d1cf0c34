"""RefineNet: Lin et al., "RefineNet: Multi-Path Refinement Networks for High-Resolution
Semantic Segmentation", CVPR 2017. https://arxiv.org/abs/1611.06612
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from keras_seg.models.backbones.registry import get_backbone
from keras_seg.models.blocks import (
    ResizeLike,
    check_common_args,
    load_weights_if_given,
    logits_layer,
    resize_logits,
)
from keras_seg.registry import register

__all__ = ["build_refinenet"]


# PyTorch's default convolution initialisation (kaiming_uniform with a=sqrt(5): uniform with
# variance 1 / (3 fan_in)), which the released model's port (DrSleep/refinenet-pytorch) trains
# from. Without batch norm the refine path sums ~20 residual branches per block; Keras's
# Glorot default (variance 1 / fan_in here) gave random-weight ResNet-101 RefineNet logits up
# to |36| at 64x64 (|100| at 128x128), a first loss of 686 and NaN at the third SGD step at
# the released learning rate 5e-4; with this init: logits |0.53|, loss 4.53 -> 3.56 in 4 steps
# (256x256: 5.44 -> 3.20 in 9 steps; 20x that rate, 0.01, still diverges from random weights).
# A new initializer per layer: Keras 3 gives every call of one unseeded instance the same values.
def _refine_init():
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")


def _conv(x, filters, name, use_bias):
    return keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=use_bias, kernel_initializer=_refine_init(), name=name
    )(x)


def residual_conv_unit(x, name):
    """RCU: ReLU -> 3x3 conv -> ReLU -> 3x3 conv, plus the identity (no batch norm)."""
    filters = x.shape[-1]
    y = keras.layers.Activation("relu", name=f"{name}_relu1")(x)
    y = _conv(y, filters, f"{name}_conv1", use_bias=True)
    y = keras.layers.Activation("relu", name=f"{name}_relu2")(y)
    y = _conv(y, filters, f"{name}_conv2", use_bias=False)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def chained_residual_pooling(x, num_blocks, name):
    """ReLU, then a chain of (5x5 stride-1 max pooling -> 3x3 conv) blocks whose outputs are summed."""
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    total, path = x, x
    for i in range(1, num_blocks + 1):
        path = keras.layers.MaxPooling2D(5, strides=1, padding="same", name=f"{name}_pool{i}")(path)
        path = _conv(path, x.shape[-1], f"{name}_conv{i}", use_bias=False)
        total = keras.layers.Add(name=f"{name}_add{i}")([total, path])
    return total


def refine_block(backbone_feature, previous, filters, adapt_rcus, crp_blocks, output_rcus, dropout, name):
    """One RefineNet block on a backbone feature and, except for RefineNet-4, the coarser block output.

    Adaptive convolution: (dropout,) a 3x3 convolution to ``filters`` and ``adapt_rcus`` RCUs
    on the backbone path. Multi-resolution fusion: a 3x3 convolution of each path to the smallest
    width, bilinear upsampling of the coarse path to the fine resolution, summation. Then
    chained residual pooling and ``output_rcus`` RCUs (the output convolution).
    """
    x = backbone_feature
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = _conv(x, filters, f"{name}_adapt_conv", use_bias=False)
    for i in range(1, adapt_rcus + 1):
        x = residual_conv_unit(x, f"{name}_adapt_rcu{i}")
    if previous is not None:
        width = min(filters, previous.shape[-1])
        fine = _conv(x, width, f"{name}_fuse_conv", use_bias=False)
        coarse = _conv(previous, width, f"{name}_fuse_prev_conv", use_bias=False)
        coarse = ResizeLike(name=f"{name}_fuse_up")(coarse, fine)
        x = keras.layers.Add(name=f"{name}_fuse_add")([fine, coarse])
    x = chained_residual_pooling(x, crp_blocks, f"{name}_crp")
    for i in range(1, output_rcus + 1):
        x = residual_conv_unit(x, f"{name}_out_rcu{i}")
    return x


@register(
    "refinenet",
    tiny=dict(
        backbone="resnet50", backbone_blocks=(1, 1, 1, 1), backbone_width=8, filters=(8, 8, 8, 8),
        adapt_rcus=1, crp_blocks=1, output_rcus=1,
    ),
    paper="Lin et al., RefineNet, CVPR 2017, https://arxiv.org/abs/1611.06612",
)
def build_refinenet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    backbone: str = "resnet101",
    backbone_weights: Optional[str] = None,
    backbone_blocks: Optional[Sequence[int]] = None,
    backbone_width: int = 64,
    filters: Sequence[int] = (512, 256, 256, 256),
    adapt_rcus: int = 2,
    crp_blocks: int = 4,
    output_rcus: int = 3,
    dropout: float = 0.5,
    weights: Optional[str] = None,
    name: str = "refinenet",
) -> keras.Model:
    """Builds the 4-cascaded RefineNet, returning logits ``(B, H, W, num_classes)``.

    ResNet stages 5, 4, 3, 2 (strides 32 ... 4) feed RefineNet-4 ... RefineNet-1; each block
    also takes the output of the previous, coarser block. The defaults are the released
    ResNet-101 model (guosheng/refinenet, ported as DrSleep/refinenet-pytorch ``rf101``):
    dropout 0.5 on stages 5 and 4; an adaptive 3x3 convolution to 512 filters (RefineNet-4)
    or 256 (the others) followed by two residual conv units (ReLU-conv-ReLU-conv plus
    identity, no batch norm); multi-resolution fusion by a 3x3 convolution of each path to
    the smallest width, bilinear upsampling and summation; chained residual pooling with four
    blocks of 5x5 stride-1 max pooling + 3x3 convolution after a ReLU; three RCUs as output
    convolution; dropout 0.5, a 3x3 classifier at stride 4 and bilinear upsampling to the
    input size. The paper's figures show two pooling blocks and one output RCU
    (``crp_blocks=2, output_rcus=1``). The refine-path convolutions start from PyTorch's
    default initialisation, as the port trains from; Keras's Glorot default diverges.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      backbone: ``"resnet101"`` (paper), ``"resnet50"``, ``"resnet34"`` or ``"resnet18"``.
      backbone_weights: ``None``, ``"imagenet"`` or a path; see
        :func:`keras_seg.models.backbones.resnet.load_resnet_weights`.
      backbone_blocks: per-stage block counts overriding the backbone's (test-size variants).
      backbone_width: stem filters of the backbone (64 in the paper).
      filters: widths of RefineNet-4, -3, -2, -1 (512, 256, 256, 256).
      adapt_rcus: RCUs of the adaptive convolution of each backbone path (2).
      crp_blocks: pooling blocks in each chained residual pooling (4 as released).
      output_rcus: RCUs after each chained residual pooling (3 as released).
      dropout: dropout rate on backbone stages 5 and 4 and before the classifier (0.5); 0
        disables it.
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
    filters = tuple(filters)
    if len(filters) != 4 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in filters):
        raise ValueError(f"filters must be four ints >= 1. Received: filters={filters!r}")
    for arg, value, low in (
        ("adapt_rcus", adapt_rcus, 0), ("crp_blocks", crp_blocks, 1), ("output_rcus", output_rcus, 0)
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}. Received: {arg}={value!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    features = encoder.features(inputs, blocks=backbone_blocks, width=backbone_width)
    x = None
    for level, (stride, width) in enumerate(zip((32, 16, 8, 4), filters)):
        x = refine_block(
            features[stride], x, width, adapt_rcus, crp_blocks, output_rcus,
            dropout if stride >= 16 else 0.0,
            name=f"refine{4 - level}",
        )
    if dropout:
        x = keras.layers.Dropout(dropout, name="classifier_dropout")(x)
    x = logits_layer(x, num_classes, name="classifier", kernel_size=3)
    model = keras.Model(inputs, resize_logits(x, inputs), name=name)
    encoder.load_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)
