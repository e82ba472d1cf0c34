"""LinkNet: Chaurasia and Culurciello, "LinkNet: Exploiting Encoder Representations for
Efficient Semantic Segmentation", VCIP 2017. https://arxiv.org/abs/1707.03718
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from keras_seg.models.backbones.registry import get_backbone
from keras_seg.models.blocks import CropLike, PadToMultiple, batch_norm, check_common_args, load_weights_if_given
from keras_seg.registry import register

__all__ = ["build_linknet"]


def _bn_relu(x, name):
    x = batch_norm(f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _full_conv(x, filters, kernel, name, dtype=None):
    """Stride-2 transposed ("full") convolution: exactly doubles H and W."""
    return keras.layers.Conv2DTranspose(
        filters, kernel, strides=2, padding="same", use_bias=dtype is not None, dtype=dtype, name=name
    )(x)


def decoder_block(x, out_filters, name):
    """LinkNet decoder block (m -> n): 1x1 conv to m/4, 3x3 full-conv x2, 1x1 conv to n; each BN + ReLU."""
    mid = max(1, x.shape[-1] // 4)
    x = keras.layers.Conv2D(mid, 1, use_bias=False, name=f"{name}_conv1")(x)
    x = _bn_relu(x, f"{name}_1")
    x = _full_conv(x, mid, 3, f"{name}_up")
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

    The encoder is ResNet-18: the 7x7 stride-2 convolution and 3x3 max pooling, then encoder
    blocks 1-4 (64, 128, 256, 512 filters; strides 4 ... 32). Decoder block ``i`` maps the
    encoder ``i`` width ``m`` to the encoder ``i-1`` width ``n`` (64 for block 1) through a 1x1
    convolution to ``m/4``, a 3x3 stride-2 full convolution and a 1x1 convolution to ``n``, each
    with batch norm and ReLU; its output is added to encoder ``i-1``'s output. The classifier
    is a 3x3 full convolution (32), a 3x3 convolution (32) and a 2x2 full convolution to the
    classes. The input is zero-padded to a multiple of 32 and the logits cropped back, so any
    input size gives logits of exactly that size.

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
    encoders = [features[s] for s in (4, 8, 16, 32)]
    x = encoders[3]
    for i in (4, 3, 2, 1):
        out_filters = encoders[i - 2].shape[-1] if i > 1 else encoders[0].shape[-1]
        x = decoder_block(x, out_filters, name=f"dec{i}")
        if i > 1:
            x = keras.layers.Add(name=f"dec{i}_add")([x, encoders[i - 2]])
    x = _full_conv(x, 32, 3, "final_up1")
    x = _bn_relu(x, "final_up1")
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="final_conv")(x)
    x = _bn_relu(x, "final_conv")
    x = _full_conv(x, num_classes, 2, "logits_full", dtype="float32")
    outputs = CropLike(name="logits", dtype="float32")(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    encoder.load_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)
