"""G-FRNet: Islam et al., "Gated Feedback Refinement Network for Dense Image Labeling",
CVPR 2017. http://www.cs.umanitoba.ca/~ywang/papers/cvpr17.pdf
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from keras_seg.models.backbones.vgg import VGG16_BLOCKS, check_backbone_weights, load_vgg16_weights, vgg16_features
from keras_seg.models.blocks import ResizeLike, batch_norm, check_common_args, load_weights_if_given, resize_logits
from keras_seg.registry import register

__all__ = ["build_gfrnet"]

_STAGES = 5  # refinement stages: strides 16, 8, 4, 2, 1 over a 5-block VGG encoder


def _conv3x3(x, filters, name, dtype=None):
    return keras.layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", dtype=dtype, name=name)(x)


def gate_unit(fine_feature, coarse_gate, num_classes, name):
    """Gate: a 3x3 convolution + BN of the finer encoder feature, times the upsampled coarser one, BN.

    Returns ``(gate, fine)``: the gated map and the finer feature's convolution, which gates
    the next stage.
    """
    fine = _conv3x3(fine_feature, num_classes, f"{name}_feature")
    fine = batch_norm(f"{name}_feature_bn")(fine)
    coarse = ResizeLike(name=f"{name}_coarse_up")(coarse_gate, fine)
    gate = keras.layers.Multiply(name=f"{name}_product")([fine, coarse])
    return batch_norm(f"{name}_bn")(gate), fine


def gated_refinement(gate, coarse_prediction, num_classes, name, dtype=None):
    """Gated refinement unit: the upsampled coarser prediction concatenated with the gate, 3x3 conv."""
    up = ResizeLike(name=f"{name}_up")(coarse_prediction, gate)
    x = keras.layers.Concatenate(name=f"{name}_concat")([gate, up])
    return _conv3x3(x, num_classes, name, dtype=dtype)


@register(
    "gfrnet",
    tiny=dict(blocks=((4, 1), (4, 1), (8, 1), (8, 1), (8, 1)), fc_filters=8),
    paper="Islam et al., G-FRNet, CVPR 2017, http://www.cs.umanitoba.ca/~ywang/papers/cvpr17.pdf",
    aux_weights={"aux_s32": 1.0, "aux_s16": 1.0, "aux_s8": 1.0, "aux_s4": 1.0, "aux_s2": 1.0},
)
def build_gfrnet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    backbone_weights: Optional[str] = None,
    blocks: Sequence[Sequence[int]] = VGG16_BLOCKS,
    fc_filters: int = 1024,
    dropout: float = 0.5,
    aux_outputs: bool = False,
    weights: Optional[str] = None,
    name: str = "gfrnet",
) -> keras.Model:
    """Builds G-FRNet, returning logits ``(B, H, W, num_classes)``.

    As the released CamVid model (mrochan/gfrnet ``train_camvid_gate.prototxt``): a VGG16
    encoder with batch norm, Caffe (ceil-mode) 2x2 pooling and dropout 0.5 after pools 3-5;
    ``conv6`` and ``conv7``, 3x3 convolutions with 1024 filters, batch norm, ReLU and dropout
    0.5; a coarse prediction ``pred_s32`` (3x3 convolution to the classes). Five gated
    refinement stages follow, at strides 16, 8, 4, 2 and 1: the gate unit multiplies a
    3x3 convolution + BN of the encoder block's last activation (conv5_3, conv4_3, ...,
    conv1_2) by the upsampled one of the coarser level (of pool5 for the first stage) and
    normalises the product; the refinement unit concatenates it with the upsampled previous
    prediction and predicts anew with a 3x3 convolution. The last prediction, at the input
    size, is ``logits``. Every coarser prediction is deeply supervised in the paper with the
    same loss weight: ``aux_outputs=True`` returns them bilinearly upsampled to the input size
    as ``aux_s32`` ... ``aux_s2``.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      backbone_weights: ``None``, ``"imagenet"`` or a VGG16 no-top weights file for the
        encoder convolutions (see :func:`keras_seg.models.backbones.vgg.load_vgg16_weights`).
      blocks: the five VGG ``(filters, convolutions)`` blocks (narrower ones for tests).
      fc_filters: filters of conv6 and conv7 (1024).
      dropout: dropout rate after pools 3-5, conv6 and conv7 (0.5); 0 disables it.
      aux_outputs: when True the model returns ``[logits, aux_s32, ..., aux_s2]``.
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    if len(tuple(blocks)) != _STAGES:
        raise ValueError(f"blocks must hold the 5 VGG blocks. Received: blocks={blocks!r}")
    check_backbone_weights(backbone_weights, blocks, input_shape)
    if isinstance(fc_filters, bool) or not isinstance(fc_filters, int) or fc_filters < 1:
        raise ValueError(f"fc_filters must be an int >= 1. Received: fc_filters={fc_filters!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if not isinstance(aux_outputs, bool):
        raise ValueError(f"aux_outputs must be a bool. Received: aux_outputs={aux_outputs!r}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    pooled, encoder = vgg16_features(
        inputs, blocks=blocks, batch_norm=True, pooling="ceil",
        pool_dropout={3: dropout, 4: dropout, 5: dropout}, pre_pool=True,
    )
    x = pooled[32]
    for layer in ("conv6", "conv7"):
        x = _conv3x3(x, fc_filters, layer)
        x = batch_norm(f"{layer}_bn")(x)
        x = keras.layers.Activation("relu", name=f"{layer}_relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{layer}_dropout")(x)
    prediction = _conv3x3(x, num_classes, "pred_s32")
    coarse = _conv3x3(pooled[32], num_classes, "gate_s32_feature")
    aux = [resize_logits(prediction, inputs, name="aux_s32")]
    for stride in (16, 8, 4, 2, 1):
        gate, coarse = gate_unit(encoder[stride], coarse, num_classes, name=f"gate_s{stride}")
        if stride > 1:
            prediction = gated_refinement(gate, prediction, num_classes, name=f"pred_s{stride}")
            aux.append(resize_logits(prediction, inputs, name=f"aux_s{stride}"))
        else:
            prediction = gated_refinement(gate, prediction, num_classes, name="logits", dtype="float32")
    outputs = [prediction, *aux] if aux_outputs else prediction
    model = keras.Model(inputs, outputs, name=name)
    load_vgg16_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)
