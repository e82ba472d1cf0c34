"""DeepLab v1, v2 and v3: atrous convolution, and atrous spatial pyramid pooling.

* DeepLab v1: Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and
  Fully Connected CRFs", ICLR 2015, https://arxiv.org/abs/1412.7062
* DeepLab v2: Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional
  Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017,
  https://arxiv.org/abs/1606.00915
* DeepLab v3: Chen et al., "Rethinking Atrous Convolution for Semantic Image
  Segmentation", 2017, https://arxiv.org/abs/1706.05587
* DeepLab v3+: Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
  Image Segmentation", ECCV 2018, https://arxiv.org/abs/1802.02611: the DeepLab v3 encoder
  and a decoder that refines its output with the stride-4 backbone features; optionally
  depthwise-separable 3x3 convolutions in ASPP and the decoder.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from keras_seg.models.backbones.registry import get_backbone
from keras_seg.models.backbones.vgg import VGG16_BLOCKS, check_backbone_weights, load_vgg16_weights, vgg16_features
from keras_seg.models.blocks import (
    ResizeLike,
    aspp,
    check_common_args,
    check_positive_ints,
    conv_bn_act,
    load_weights_if_given,
    logits_layer,
    resize_logits,
    sep_conv_bn_act,
)
from keras_seg.registry import register

__all__ = ["build_deeplab_v1", "build_deeplab_v2", "build_deeplab_v3", "build_deeplab_v3plus"]

_TINY_RESNET = dict(backbone_blocks=(1, 1, 1, 1), backbone_width=8)


def _scaled_rates(rates, output_stride, reference_stride, arg_name):
    """The paper's rates at ``reference_stride`` rescaled to ``output_stride`` (x2 at 8 vs 16)."""
    if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
        raise ValueError(f"{arg_name} must be ints >= 1. Received: {arg_name}={rates!r}")
    return tuple(max(1, r * reference_stride // output_stride) for r in rates)


@register(
    "deeplab_v1",
    tiny=dict(blocks=((8, 1), (8, 1), (16, 1), (16, 1)), fc_filters=16),
    paper="Chen et al., DeepLab v1 (LargeFOV), ICLR 2015, https://arxiv.org/abs/1412.7062",
)
def build_deeplab_v1(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    backbone_weights: Optional[str] = None,
    blocks: Sequence[Sequence[int]] = VGG16_BLOCKS,
    fc_filters: int = 1024,
    fc6_rate: int = 12,
    dropout: float = 0.5,
    weights: Optional[str] = None,
    name: str = "deeplab_v1",
) -> keras.Model:
    """Builds DeepLab-LargeFOV (VGG16), returning logits ``(B, H, W, num_classes)``.

    The paper's DeepLab-LargeFOV (Table 2: 20.5M parameters): VGG16 with Caffe 3x3 max
    pooling, pool4 and pool5 at stride 1 and block 5 dilated by 2 (output stride 8); ``fc6``
    a 3x3 convolution with 1024 filters at rate 12, ``fc7`` a 1x1 convolution with 1024
    filters, each with ReLU and dropout 0.5; ``fc8`` the 1x1 classifier; bilinear upsampling
    to the input size. The CRF post-processing is not part of the model.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      backbone_weights: ``None``, ``"imagenet"`` or a VGG16 no-top weights file for the
        convolutions (see :func:`keras_seg.models.backbones.vgg.load_vgg16_weights`); the
        paper's fc6/fc7 came from VGG16's subsampled fully connected layers, which that file
        lacks.
      blocks: VGG ``(filters, convolutions)`` per block, at least 4 (test-size variants).
      fc_filters: filters of fc6 and fc7 (1024).
      fc6_rate: atrous rate of fc6 (12: the large field of view).
      dropout: dropout rate after fc6 and fc7 (0.5); 0 disables it.
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    if len(tuple(blocks)) < 4:
        raise ValueError(f"blocks needs at least 4 VGG blocks for output stride 8. Received: blocks={blocks!r}")
    check_backbone_weights(backbone_weights, blocks, input_shape)
    check_positive_ints(fc_filters=fc_filters, fc6_rate=fc6_rate)
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = vgg16_features(inputs, blocks=blocks, pooling="caffe3x3", output_stride=8)[8]
    for layer, kernel, rate in (("fc6", 3, fc6_rate), ("fc7", 1, 1)):
        x = keras.layers.Conv2D(
            fc_filters, kernel, padding="same", dilation_rate=rate, activation="relu", name=layer
        )(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{layer}_dropout")(x)
    x = logits_layer(x, num_classes, name="fc8")
    model = keras.Model(inputs, resize_logits(x, inputs), name=name)
    load_vgg16_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)


@register(
    "deeplab_v2",
    tiny=_TINY_RESNET,
    paper="Chen et al., DeepLab v2, TPAMI 2017, https://arxiv.org/abs/1606.00915",
)
def build_deeplab_v2(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    backbone: str = "resnet101",
    backbone_weights: Optional[str] = None,
    backbone_blocks: Optional[Sequence[int]] = None,
    backbone_width: int = 64,
    output_stride: int = 8,
    atrous_rates: Optional[Sequence[int]] = None,
    weights: Optional[str] = None,
    name: str = "deeplab_v2",
) -> keras.Model:
    """Builds DeepLab v2 (ResNet-101, ASPP-L), returning logits ``(B, H, W, num_classes)``.

    The paper's ResNet-101 model: the backbone at output stride 8 (stages 4 and 5 dilated by
    2 and 4), then ASPP-L, four parallel 3x3 convolutions straight to the class scores at
    rates 6, 12, 18 and 24 (layers ``aspp_r{rate}_conv``), whose outputs are summed and
    bilinearly upsampled to the input size. The CRF post-processing is not part of the model.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      backbone: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"`` (paper).
      backbone_weights: ``None``, ``"imagenet"`` or a path; see
        :func:`keras_seg.models.backbones.resnet.load_resnet_weights`.
      backbone_blocks: per-stage block counts overriding the backbone's (test-size variants).
      backbone_width: stem filters of the backbone (64 in the paper).
      output_stride: 8 (paper), 16 or 32.
      atrous_rates: ASPP rates; default (6, 12, 18, 24) at output stride 8, scaled by
        ``8 / output_stride`` otherwise.
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    encoder = get_backbone(backbone, family="resnet")
    encoder.check(output_stride=output_stride, blocks=backbone_blocks, width=backbone_width, weights=backbone_weights)
    if atrous_rates is None:
        atrous_rates = _scaled_rates((6, 12, 18, 24), output_stride, 8, "atrous_rates")
    else:
        atrous_rates = _scaled_rates(tuple(atrous_rates), 1, 1, "atrous_rates")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    features = encoder.features(inputs, output_stride=output_stride, blocks=backbone_blocks,
                                width=backbone_width)[output_stride]
    scores = [
        logits_layer(features, num_classes, name=f"aspp_r{rate}_conv", kernel_size=3, dilation_rate=rate)
        for rate in atrous_rates
    ]
    x = keras.layers.Add(name="aspp_add", dtype="float32")(scores)
    outputs = resize_logits(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    encoder.load_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)


def _v3_encoder(input_shape, backbone, backbone_blocks, backbone_width, backbone_weights, output_stride, multi_grid,
                atrous_rates, aspp_filters, image_pooling, separable=False):
    """DeepLab v3's encoder, shared by v3 and v3+: checks its options, then builds the backbone at
    ``output_stride`` and ASPP (rates 6/12/18 at stride 16, doubled at 8, unless ``atrous_rates``).

    Returns:
      ``(inputs, backbone features by stride, ASPP output)``.
    """
    encoder = get_backbone(backbone, family="resnet")
    encoder.check(output_stride=output_stride, multi_grid=multi_grid, blocks=backbone_blocks, width=backbone_width,
                  weights=backbone_weights)
    check_positive_ints(aspp_filters=aspp_filters)
    _check_bool(image_pooling=image_pooling, separable=separable)
    if atrous_rates is None:
        atrous_rates = _scaled_rates((6, 12, 18), output_stride, 16, "atrous_rates")
    else:
        atrous_rates = _scaled_rates(tuple(atrous_rates), 1, 1, "atrous_rates")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    features = encoder.features(inputs, output_stride=output_stride, multi_grid=multi_grid, blocks=backbone_blocks,
                                width=backbone_width)
    x = aspp(features[output_stride], aspp_filters, atrous_rates, image_pooling=image_pooling,
             separable=separable, name="aspp")
    return inputs, features, x


@register(
    "deeplab_v3",
    tiny=dict(_TINY_RESNET, multi_grid=(2,), aspp_filters=16),
    paper="Chen et al., DeepLab v3, arXiv 2017, https://arxiv.org/abs/1706.05587",
)
def build_deeplab_v3(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    backbone: str = "resnet101",
    backbone_weights: Optional[str] = None,
    backbone_blocks: Optional[Sequence[int]] = None,
    backbone_width: int = 64,
    output_stride: int = 16,
    multi_grid: Optional[Sequence[int]] = (1, 2, 4),
    atrous_rates: Optional[Sequence[int]] = None,
    aspp_filters: int = 256,
    image_pooling: bool = True,
    weights: Optional[str] = None,
    name: str = "deeplab_v3",
) -> keras.Model:
    """Builds DeepLab v3 (ResNet-101, multi-grid, ASPP), returning logits ``(B, H, W, num_classes)``.

    The paper's ASPP model (Sec. 3.3, 4.3): the backbone at output stride 16 with block4's
    three units at dilation ``2 * (1, 2, 4)`` (multi-grid); ASPP with a 1x1 convolution, three
    3x3 convolutions at rates 6, 12 and 18 and image-level pooling, each 256 filters with batch
    norm; concatenation, a 1x1 convolution (256, batch norm), the 1x1 classifier and bilinear
    upsampling to the input size. At output stride 8 the rates double (12, 24, 36).

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      backbone: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"`` (paper).
      backbone_weights: ``None``, ``"imagenet"`` or a path; see
        :func:`keras_seg.models.backbones.resnet.load_resnet_weights`.
      backbone_blocks: per-stage block counts overriding the backbone's (test-size variants).
      backbone_width: stem filters of the backbone (64 in the paper).
      output_stride: 16 (paper's training setting), 8 or 32.
      multi_grid: dilation multipliers of the units of the last stage, one per unit; ``None``
        for none.
      atrous_rates: ASPP rates; default (6, 12, 18) at output stride 16, scaled by
        ``16 / output_stride`` otherwise.
      aspp_filters: filters of every ASPP branch and of the projection (256).
      image_pooling: add the image-level pooling branch.
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    inputs, _, x = _v3_encoder(input_shape, backbone, backbone_blocks, backbone_width, backbone_weights, output_stride,
                               multi_grid, atrous_rates, aspp_filters, image_pooling)
    x = logits_layer(x, num_classes, name="classifier")
    outputs = resize_logits(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    get_backbone(backbone).load_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)


def _check_bool(**values) -> None:
    """Raises ``ValueError("x must be a bool. Received: x=...")`` for the first non-bool value."""
    for arg, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"{arg} must be a bool. Received: {arg}={value!r}")


def deeplab_v3plus_decoder(x, low_level, low_level_filters, filters, *, separable=False, name="decoder"):
    """DeepLab v3+'s decoder (Sec. 3.1, Fig. 2), before the classifier.

    The low-level features get a 1x1 convolution to ``low_level_filters`` + batch norm + ReLU
    (``{name}_low_level_proj``); the encoder output is bilinearly resized to their size
    (``{name}_up``, x4 at output stride 16) and concatenated with them (``{name}_concat``);
    two 3x3 convolutions with ``filters`` maps + batch norm + ReLU (``{name}_conv1``,
    ``{name}_conv2``), depthwise-separable with ``separable``, refine the result.
    """
    low = conv_bn_act(low_level, low_level_filters, f"{name}_low_level_proj", kernel_size=1)
    x = ResizeLike(name=f"{name}_up")(x, low)
    x = keras.layers.Concatenate(name=f"{name}_concat")([x, low])
    for i in (1, 2):
        if separable:
            x = sep_conv_bn_act(x, filters, f"{name}_conv{i}")
        else:
            x = conv_bn_act(x, filters, f"{name}_conv{i}")
    return x


@register(
    "deeplab_v3plus",
    tiny=dict(_TINY_RESNET, multi_grid=(2,), aspp_filters=16, low_level_filters=8, decoder_filters=16),
    paper="Chen et al., DeepLab v3+, ECCV 2018, https://arxiv.org/abs/1802.02611",
)
def build_deeplab_v3plus(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    backbone: str = "resnet101",
    backbone_weights: Optional[str] = None,
    backbone_blocks: Optional[Sequence[int]] = None,
    backbone_width: int = 64,
    output_stride: int = 16,
    multi_grid: Optional[Sequence[int]] = (1, 2, 4),
    atrous_rates: Optional[Sequence[int]] = None,
    aspp_filters: int = 256,
    image_pooling: bool = True,
    low_level_filters: int = 48,
    decoder_filters: int = 256,
    separable: bool = False,
    weights: Optional[str] = None,
    name: str = "deeplab_v3plus",
) -> keras.Model:
    """Builds DeepLab v3+ (ResNet-101 encoder, decoder), returning logits ``(B, H, W, num_classes)``.

    The encoder is DeepLab v3's (see :func:`build_deeplab_v3`): the backbone at output stride
    16 (or 8), ASPP with a 1x1 convolution, 3x3 convolutions at rates 6, 12 and 18 (doubled
    at output stride 8) and image pooling, each 256 filters with batch norm and ReLU, and the
    1x1 projection to 256. The decoder (Sec. 3.1, Fig. 2) takes the backbone's stride-4
    features (the output of ResNet stage conv2, the paper's "Conv2 before striding"; the
    authors' TensorFlow code taps the same stage's last-but-one unit before its residual
    addition, with the same 256 channels), reduces them to 48 channels by a 1x1
    convolution + batch norm + ReLU, concatenates them with the encoder output bilinearly
    resized to their size (x4 at output stride 16), and refines the result with two 3x3
    convolutions of 256 filters + batch norm + ReLU; the 1x1 classifier follows and the
    logits are bilinearly resized to the input size. With ``separable`` the 3x3 convolutions
    of ASPP and the decoder are depthwise-separable, as in the paper's Xception model: a
    depthwise 3x3 convolution + batch norm + ReLU, then a pointwise 1x1 convolution + batch
    norm + ReLU (``split_separable_conv2d`` of the authors' TensorFlow code). The paper's
    ResNet-101 results use plain convolutions (``separable=False``).

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      backbone: ``"resnet101"`` (paper), ``"resnet50"``, ``"resnet34"`` or ``"resnet18"``.
      backbone_weights: ``None``, ``"imagenet"`` or a path; see
        :func:`keras_seg.models.backbones.resnet.load_resnet_weights`.
      backbone_blocks: per-stage block counts overriding the backbone's (test-size variants).
      backbone_width: stem filters of the backbone (64 in the paper).
      output_stride: 16 (paper's default) or 8: the stride of the encoder output.
      multi_grid: dilation multipliers of the units of the last stage, one per unit (DeepLab
        v3's (1, 2, 4)); ``None`` for none.
      atrous_rates: ASPP rates; default (6, 12, 18) at output stride 16, (12, 24, 36) at 8.
      aspp_filters: filters of every ASPP branch and of the projection (256).
      image_pooling: add ASPP's image-level pooling branch.
      low_level_filters: channels the stride-4 features are reduced to (48).
      decoder_filters: filters of the decoder's two 3x3 convolutions (256).
      separable: depthwise-separable 3x3 convolutions in ASPP and the decoder.
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16. Received: output_stride={output_stride!r}")
    check_positive_ints(low_level_filters=low_level_filters, decoder_filters=decoder_filters)
    inputs, features, x = _v3_encoder(input_shape, backbone, backbone_blocks, backbone_width, backbone_weights,
                                      output_stride, multi_grid, atrous_rates, aspp_filters, image_pooling, separable)
    x = deeplab_v3plus_decoder(x, features[4], low_level_filters, decoder_filters, separable=separable)
    x = logits_layer(x, num_classes, name="classifier")
    outputs = resize_logits(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    get_backbone(backbone).load_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)
