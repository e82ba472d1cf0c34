"""BiSeNet V2: Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time
Semantic Segmentation", IJCV 2021. https://arxiv.org/abs/2004.02147

Where the paper leaves a detail open, this follows the widely used PyTorch implementation,
CoinCheung/BiSeNet ``lib/models/bisenetv2.py`` (commit fdcfdc3420509a6d6aa951ac7617823342513506),
whose parameters the inference model matches (tests/models/test_bisenet.py):

- a GE layer's 3x3 convolution keeps the input width and its depthwise convolution expands
  it six times (depth multiplier 6); the expanding depthwise convolution of a stride-1 GE
  layer and the second one of a stride-2 layer are followed by ReLU;
- the context embedding block's 1x1 and 3x3 convolutions and the aggregation layer's last 3x3
  convolution are convolution + batch norm + ReLU;
- the last batch norm of every GE layer's residual branch starts with gamma 0, and every
  convolution starts from He-normal weights scaled by its fan-out.

Differences that carry no parameters: TF's ``same`` padding (stride-2 layers pad bottom/right
on even sizes, PyTorch pads both sides), average pooling that excludes the padding (PyTorch's
``count_include_pad=True`` includes it) and bilinear, not nearest, 4x upsampling inside the
aggregation layer. The booster heads are the paper's segmentation head (Fig. 7) with
``booster_channels`` maps, not the reference's heavier auxiliary heads.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import keras

from keras_seg.models.blocks import (
    CropLike,
    PadToMultiple,
    ResizeLike,
    batch_norm,
    check_common_args,
    check_positive_ints,
    load_weights_if_given,
)
from keras_seg.registry import register

__all__ = ["build_bisenet_v2"]

#: Booster (auxiliary) outputs, in output order: the stem and semantic stages S3, S4 and S5.
BOOSTER_STRIDES: Tuple[int, ...] = (4, 8, 16, 32)


def _fan_out_init(groups: int = 1):
    """PyTorch's ``kaiming_normal_(mode="fan_out")``: std ``sqrt(2 / (k * k * out_channels))``.

    A depthwise kernel ``(k, k, C, m)`` has Keras fan-out ``k * k * m`` but PyTorch's is
    ``k * k * C * m``; ``groups=C`` rescales it.
    """
    return keras.initializers.VarianceScaling(2.0 / groups, mode="fan_out", distribution="untruncated_normal")


def _conv_bn(x, prefix, k, *, filters=None, kernel=3, strides=1, depth_multiplier=None, bn=True,
             relu=True, zero_gamma=False):
    """Conv (``{prefix}_conv{k}``, or depthwise ``_dwconv{k}``), optional BN (``_bn{k}``) and ReLU (``_relu{k}``)."""
    if depth_multiplier is None:
        x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                                kernel_initializer=_fan_out_init(), name=f"{prefix}_conv{k}")(x)
    else:
        x = keras.layers.DepthwiseConv2D(kernel, strides=strides, padding="same", depth_multiplier=depth_multiplier,
                                         use_bias=False, depthwise_initializer=_fan_out_init(x.shape[-1]),
                                         name=f"{prefix}_dwconv{k}")(x)
    if bn:
        x = batch_norm(f"{prefix}_bn{k}", gamma_initializer="zeros" if zero_gamma else "ones")(x)
    if relu:
        x = keras.layers.Activation("relu", name=f"{prefix}_relu{k}")(x)
    return x


def detail_branch(x, widths, depths, name="detail"):
    """Stages S1-S3 of Table 1: ``depths[i]`` 3x3 conv + BN + ReLU layers, the first of stride 2."""
    for i, (filters, depth) in enumerate(zip(widths, depths), start=1):
        for j in range(1, depth + 1):
            x = _conv_bn(x, f"{name}_s{i}", j, filters=filters, strides=2 if j == 1 else 1)
    return x


def stem_block(x, filters, name="stem"):
    """Stem (Fig. 4a): 3x3/2 conv, then a 1x1 + 3x3/2 conv branch and 3x3/2 max pooling, concatenated, 3x3 conv."""
    x = _conv_bn(x, name, 1, filters=filters, strides=2)
    left = _conv_bn(x, f"{name}_left", 1, filters=max(1, filters // 2), kernel=1)
    left = _conv_bn(left, f"{name}_left", 2, filters=filters, strides=2)
    right = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    x = keras.layers.Concatenate(name=f"{name}_concat")([left, right])
    return _conv_bn(x, name, 2, filters=filters)


def ge_layer(x, filters, expansion, name, *, strides=1):
    """Gather-and-expand layer (Fig. 5b, stride 1; Fig. 5c, stride 2 with a depthwise-separable shortcut).

    3x3 conv + BN + ReLU at the input width; a 3x3 depthwise convolution expanding it
    ``expansion`` times (stride 2: then a second 3x3 depthwise convolution); a 1x1
    projection to ``filters`` with BN; added to the input (or the shortcut), ReLU.
    """
    y = _conv_bn(x, name, 1, filters=x.shape[-1])
    if strides == 1:
        y = _conv_bn(y, name, 2, depth_multiplier=expansion)
        k = 3
    else:
        y = _conv_bn(y, name, 2, depth_multiplier=expansion, strides=2, relu=False)
        y = _conv_bn(y, name, 3, depth_multiplier=1)
        k = 4
    y = _conv_bn(y, name, k, filters=filters, kernel=1, relu=False, zero_gamma=True)
    if strides == 1:
        shortcut = x
    else:
        shortcut = _conv_bn(x, f"{name}_shortcut", 1, depth_multiplier=1, strides=2, relu=False)
        shortcut = _conv_bn(shortcut, f"{name}_shortcut", 2, filters=filters, kernel=1, relu=False)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.Activation("relu", name=f"{name}_relu")(y)


def context_embedding(x, name="ce"):
    """Context embedding block (Fig. 4b): global average pooling, BN, 1x1 conv, added to ``x``, 3x3 conv."""
    filters = x.shape[-1]
    y = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_gap")(x)
    y = batch_norm(f"{name}_bn1")(y)
    y = _conv_bn(y, name, 2, filters=filters, kernel=1)
    x = keras.layers.Add(name=f"{name}_add")([x, y])  # broadcasts the pooled 1x1 map
    return _conv_bn(x, name, 3, filters=filters)


def semantic_branch(x, widths, depths, expansion):
    """Stem, stages S3-S5 of GE layers (the first of each of stride 2) and the CE block.

    Returns ``{stride: feature}`` of the stem (4) and stages S3 (8), S4 (16) and S5 before the
    context embedding (32), and the context-embedded S5 features.
    """
    x = stem_block(x, widths[0])
    features = {4: x}
    for stage, (filters, depth) in enumerate(zip(widths[1:], depths), start=3):
        for j in range(1, depth + 1):
            x = ge_layer(x, filters, expansion, f"s{stage}_ge{j}", strides=2 if j == 1 else 1)
        features[2**stage] = x
    return features, context_embedding(x)


def guided_aggregation(detail, semantic, name="bga"):
    """Bilateral guided aggregation layer (Fig. 6): each branch gates the other, at strides 8 and 32."""
    filters = detail.shape[-1]
    # Detail at stride 8: 3x3 depthwise + BN + 1x1, gated by the upsampled semantic features.
    d_keep = _conv_bn(detail, f"{name}_detail", 1, depth_multiplier=1, relu=False)
    d_keep = _conv_bn(d_keep, f"{name}_detail", 2, filters=filters, kernel=1, bn=False, relu=False)
    # Detail down to stride 32: 3x3/2 conv + BN, 3x3/2 average pooling.
    d_down = _conv_bn(detail, f"{name}_detail_down", 1, filters=filters, strides=2, relu=False)
    d_down = keras.layers.AveragePooling2D(3, strides=2, padding="same", name=f"{name}_detail_down_pool")(d_down)
    # Semantic at stride 32: 3x3 conv + BN, upsampled x4; and 3x3 depthwise + BN + 1x1.
    s_up = _conv_bn(semantic, f"{name}_semantic_up", 1, filters=filters, relu=False)
    s_up = ResizeLike(name=f"{name}_semantic_up")(s_up, detail)
    s_up = keras.layers.Activation("sigmoid", name=f"{name}_semantic_up_sigmoid")(s_up)
    s_keep = _conv_bn(semantic, f"{name}_semantic", 1, depth_multiplier=1, relu=False)
    s_keep = _conv_bn(s_keep, f"{name}_semantic", 2, filters=filters, kernel=1, bn=False, relu=False)
    s_keep = keras.layers.Activation("sigmoid", name=f"{name}_semantic_sigmoid")(s_keep)

    low = keras.layers.Multiply(name=f"{name}_detail_mul")([d_keep, s_up])
    high = keras.layers.Multiply(name=f"{name}_semantic_mul")([d_down, s_keep])
    high = ResizeLike(name=f"{name}_semantic_mul_up")(high, detail)
    x = keras.layers.Add(name=f"{name}_add")([low, high])
    return _conv_bn(x, name, 1, filters=filters)


def seg_head(x, channels, num_classes, dropout, padded, inputs, name, out_name):
    """Segmentation head (Fig. 7): 3x3 conv + BN + ReLU, dropout, 1x1 classifier, bilinear upsampling.

    The float32 class scores are upsampled to ``padded`` (the input padded to a multiple of
    32, an exact integer factor) and cropped to ``inputs``' size as layer ``out_name``.
    """
    x = _conv_bn(x, name, 1, filters=channels)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, dtype="float32", kernel_initializer=_fan_out_init(),
                            name=f"{name}_classifier")(x)
    x = ResizeLike(name=f"{out_name}_up", dtype="float32")(x, padded)
    return CropLike(name=out_name, dtype="float32")(x, inputs)


def _check_stages(arg, values, length, minimum):
    values = tuple(values)
    if len(values) != length or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values):
        raise ValueError(f"{arg} must be {length} ints >= {minimum}. Received: {arg}={values!r}")
    return values


@register(
    "bisenet_v2",
    tiny=dict(
        detail_widths=(8, 8, 16), detail_depths=(1, 1, 1), semantic_widths=(4, 8, 8, 16),
        semantic_depths=(1, 1, 1), head_channels=16, booster_channels=8,
    ),
    paper="Yu et al., BiSeNet V2, IJCV 2021, https://arxiv.org/abs/2004.02147",
    aux_weights={f"aux_s{s}": 1.0 for s in BOOSTER_STRIDES},
)
def build_bisenet_v2(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    detail_widths: Sequence[int] = (64, 64, 128),
    detail_depths: Sequence[int] = (2, 3, 3),
    semantic_widths: Sequence[int] = (16, 32, 64, 128),
    semantic_depths: Sequence[int] = (2, 2, 4),
    expansion: int = 6,
    head_channels: int = 1024,
    booster_channels: int = 128,
    dropout: float = 0.1,
    aux_outputs: bool = False,
    weights: Optional[str] = None,
    name: str = "bisenet_v2",
) -> keras.Model:
    """Builds BiSeNet V2, returning logits ``(B, H, W, num_classes)``.

    As the paper's Table 1: the Detail Branch, stages S1-S3 of 3x3 conv + BN + ReLU layers
    (64, 64, 128 maps; the first layer of each stage of stride 2), at stride 8; the Semantic
    Branch, the stem block (16 maps, stride 4), stages S3-S5 of gather-and-expand layers
    (32, 64, 128 maps at strides 8, 16, 32; expansion 6; the first layer of each stage of
    stride 2 with a depthwise-separable shortcut) and the context embedding block; the
    bilateral guided aggregation layer; the segmentation head (3x3 conv + BN + ReLU to
    ``head_channels``, dropout, 1x1 classifier) and bilinear upsampling x8. The input is
    zero-padded to a multiple of 32 and the logits cropped back to the input size. See the
    module docstring for the details taken from the reference implementation.

    Booster training (Sec. 4.4): ``aux_outputs=True`` adds a segmentation head with
    ``booster_channels`` maps on the stem and on S3, S4 and S5 (before the context
    embedding), upsampled to the input size as ``aux_s4``, ``aux_s8``, ``aux_s16`` and
    ``aux_s32``; their loss weights (1.0 each) are the registry's ``aux_weights``.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      detail_widths: maps of Detail Branch stages S1-S3 (64, 64, 128).
      detail_depths: conv layers of stages S1-S3 (2, 3, 3).
      semantic_widths: maps of the stem and of Semantic Branch stages S3-S5 (16, 32, 64,
        128); the last must equal the last of ``detail_widths``, which the aggregation
        layer multiplies with it.
      semantic_depths: GE layers of stages S3-S5 (2, 2, 4).
      expansion: expansion ratio of the GE layers (6).
      head_channels: maps of the segmentation head's 3x3 convolution (1024, as the
        reference implementation).
      booster_channels: maps of the booster heads' 3x3 convolution (128).
      dropout: dropout rate before the classifiers (0.1); 0 disables it.
      aux_outputs: when True the model returns ``[logits, aux_s4, aux_s8, aux_s16, aux_s32]``
        (for training); when False only ``logits``.
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    detail_widths = _check_stages("detail_widths", detail_widths, 3, 1)
    detail_depths = _check_stages("detail_depths", detail_depths, 3, 1)
    semantic_widths = _check_stages("semantic_widths", semantic_widths, 4, 1)
    semantic_depths = _check_stages("semantic_depths", semantic_depths, 3, 1)
    if detail_widths[-1] != semantic_widths[-1]:
        raise ValueError(
            "The last of detail_widths and of semantic_widths must be equal: the aggregation layer "
            f"multiplies the two branches. Received: detail_widths={detail_widths!r}, "
            f"semantic_widths={semantic_widths!r}"
        )
    check_positive_ints(expansion=expansion, head_channels=head_channels, booster_channels=booster_channels)
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if not isinstance(aux_outputs, bool):
        raise ValueError(f"aux_outputs must be a bool. Received: aux_outputs={aux_outputs!r}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    padded = PadToMultiple(32, name="pad")(inputs)
    detail = detail_branch(padded, detail_widths, detail_depths)
    features, semantic = semantic_branch(padded, semantic_widths, semantic_depths, expansion)
    x = guided_aggregation(detail, semantic)
    outputs = seg_head(x, head_channels, num_classes, dropout, padded, inputs, name="head", out_name="logits")
    if aux_outputs:
        boosters = [
            seg_head(features[s], booster_channels, num_classes, dropout, padded, inputs,
                     name=f"aux_s{s}_head", out_name=f"aux_s{s}")
            for s in BOOSTER_STRIDES
        ]
        outputs = [outputs, *boosters]
    return load_weights_if_given(keras.Model(inputs, outputs, name=name), weights)
