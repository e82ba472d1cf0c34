"""PSPNet: Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017. https://arxiv.org/abs/1612.01105"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from keras_seg.models.backbones.registry import get_backbone
from keras_seg.models.backbones.resnet import resnet_stages
from keras_seg.models.blocks import (
    check_positive_ints,
    check_common_args,
    conv_bn_act,
    load_weights_if_given,
    logits_layer,
    pyramid_pool,
    resize_logits,
)
from keras_seg.registry import register

__all__ = ["build_pspnet"]


def _head(x, filters, num_classes, dropout, name):
    """3x3 conv + BN + ReLU, channel dropout, 1x1 classifier: PSPNet's final and auxiliary heads."""
    x = conv_bn_act(x, filters, name)
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return logits_layer(x, num_classes, name=f"{name}_classifier")


@register(
    "pspnet",
    tiny=dict(
        backbone="resnet50", backbone_blocks=(1, 1, 1, 1), backbone_width=8, head_filters=16,
        aux_filters=8,
    ),
    paper="Zhao et al., PSPNet, CVPR 2017, https://arxiv.org/abs/1612.01105",
    aux_weights={"aux": 0.4},
)
def build_pspnet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    backbone: str = "resnet101",
    backbone_weights: Optional[str] = None,
    backbone_blocks: Optional[Sequence[int]] = None,
    backbone_width: int = 64,
    output_stride: int = 8,
    bins: Sequence[int] = (1, 2, 3, 6),
    head_filters: int = 512,
    aux_filters: int = 256,
    dropout: float = 0.1,
    aux_outputs: bool = False,
    weights: Optional[str] = None,
    name: str = "pspnet",
) -> keras.Model:
    """Builds PSPNet, returning logits ``(B, H, W, num_classes)``.

    As in the paper and its released code: a dilated ResNet at output stride 8; the pyramid
    pooling module with bins 1, 2, 3 and 6, each pooled map reduced by a 1x1 convolution to
    ``C / 4`` channels (512 for ResNet-50/101), upsampled and concatenated with the features;
    a 3x3 convolution (512, batch norm, ReLU), channel dropout 0.1, the 1x1 classifier and bilinear
    upsampling to the input size. The auxiliary head (3x3 convolution with 256 filters, batch
    norm, ReLU, dropout, 1x1 classifier) sits on stage 4 (``res4b22`` of ResNet-101); its loss
    weight 0.4 is the registry's ``aux_weights["aux"]``.

    The released models use a ResNet with a three-convolution stem; this builder uses the
    keras.applications ResNet so that its ImageNet weights load.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      backbone: ``"resnet50"``, ``"resnet101"`` (paper's VOC/Cityscapes model) or a basic-block
        ResNet (``"resnet18"``, ``"resnet34"``).
      backbone_weights: ``None``, ``"imagenet"`` or a path; see
        :func:`keras_seg.models.backbones.resnet.load_resnet_weights`.
      backbone_blocks: per-stage block counts overriding the backbone's (test-size variants).
      backbone_width: stem filters of the backbone (64 in the paper).
      output_stride: 8 (paper), 16 or 32.
      bins: output sizes of the pyramid pooling branches.
      head_filters: filters of the 3x3 convolution after pyramid pooling (512).
      aux_filters: filters of the auxiliary head's 3x3 convolution (256).
      dropout: channel-dropout rate before both classifiers (0.1); 0 disables it.
      aux_outputs: when True the model returns ``[logits, aux]``, ``aux`` being the auxiliary
        logits at the input size (for training); when False only ``logits``.
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
    bins = tuple(bins)
    if not bins or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins):
        raise ValueError(f"bins must be ints >= 1. Received: bins={bins!r}")
    check_positive_ints(head_filters=head_filters, aux_filters=aux_filters)
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if not isinstance(aux_outputs, bool):
        raise ValueError(f"aux_outputs must be a bool. Received: aux_outputs={aux_outputs!r}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    stages = resnet_stages(
        inputs, backbone, output_stride=output_stride, blocks=backbone_blocks, width=backbone_width
    )
    stage4, stage5 = stages[3][1], stages[4][1]
    x = pyramid_pool(stage5, bins, name="ppm")
    x = _head(x, head_filters, num_classes, dropout, name="head")
    outputs = resize_logits(x, inputs, name="logits")
    if aux_outputs:
        aux = _head(stage4, aux_filters, num_classes, dropout, name="aux_head")
        outputs = [outputs, resize_logits(aux, inputs, name="aux")]
    model = keras.Model(inputs, outputs, name=name)
    encoder.load_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)
