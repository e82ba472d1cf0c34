"""ENet: Paszke et al., "ENet: A Deep Neural Network Architecture for Real-Time Semantic
Segmentation", 2016. https://arxiv.org/abs/1606.02147
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import keras

from keras_seg.models.blocks import (
    CropLike,
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    PadChannels,
    PadToMultiple,
    batch_norm,
    check_common_args,
    load_weights_if_given,
)
from keras_seg.registry import register

__all__ = ["build_enet", "check_enet_options", "stage23_plan"]

#: Main convolutions of bottlenecks 2.1-2.8 (and 3.1-3.8): ("regular" | "dilated" | "asymmetric", size).
STAGE2_PATTERN: Tuple[Tuple[str, int], ...] = (
    ("regular", 3),
    ("dilated", 2),
    ("asymmetric", 5),
    ("dilated", 4),
    ("regular", 3),
    ("dilated", 8),
    ("asymmetric", 5),
    ("dilated", 16),
)


def check_enet_options(widths: Sequence[int], in_channels: int, **stage_blocks: int) -> Tuple[int, int, int]:
    """Validates ENet's ``widths`` and ``stage*_blocks`` options; returns ``widths`` as a tuple.

    Shared by :func:`build_enet` and the PyTorch twin of ``benchmarks/torch_models.py``.

    Raises:
      ValueError: naming the offending option and the value received.
    """
    widths = tuple(widths)
    if (
        len(widths) != 3
        or any(isinstance(w, bool) or not isinstance(w, int) or w < 4 or w % 4 for w in widths)
        or widths[0] <= in_channels
        or not widths[0] <= widths[1] <= widths[2]
    ):
        raise ValueError(
            "widths must be three non-decreasing multiples of 4, the first above the input "
            f"channels. Received: widths={widths!r}"
        )
    for arg, value in stage_blocks.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{arg} must be an int >= 0. Received: {arg}={value!r}")
    return widths


def stage23_plan(blocks: int) -> List[Tuple[str, str, int]]:
    """``(name, kind, size)`` of the ``blocks`` bottlenecks after bottleneck2.0, in order.

    They cycle through :data:`STAGE2_PATTERN`: ``bottleneck2_1`` ... ``bottleneck2_8``, then
    ``bottleneck3_1`` and so on.
    """
    n = len(STAGE2_PATTERN)
    return [(f"bottleneck{2 + i // n}_{1 + i % n}",) + STAGE2_PATTERN[i % n] for i in range(blocks)]


def _bn(x, name):
    return batch_norm(name, epsilon=1e-3)(x)


def _act(x, name, prelu):
    if prelu:  # one slope per channel, as Torch's nn.PReLU(n)
        return keras.layers.PReLU(shared_axes=[1, 2], name=f"{name}_prelu")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _conv(x, filters, kernel, name, *, strides=1, dilation=1, use_bias=True):
    return keras.layers.Conv2D(
        filters, kernel, strides=strides, dilation_rate=dilation, padding="same", use_bias=use_bias, name=name
    )(x)


def initial_block(x, filters, name="initial"):
    """3x3 stride-2 convolution to ``filters - C`` maps, concatenated with 2x2 max pooling; BN, PReLU."""
    conv = _conv(x, filters - x.shape[-1], 3, f"{name}_conv", strides=2)
    pool = keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = keras.layers.Concatenate(name=f"{name}_concat")([conv, pool])
    return _act(_bn(x, f"{name}_bn"), name, prelu=True)


def encoder_bottleneck(x, filters, name, *, kind="regular", size=3, downsample=False, dropout=0.1):
    """Encoder bottleneck: 1x1 (2x2 stride 2 when downsampling) -> main conv -> 1x1, plus shortcut.

    The extension branch projects to ``filters / 4`` maps, applies the main convolution
    (3x3 regular or dilated, or ``size x 1`` after ``1 x size`` when asymmetric), expands
    to ``filters`` and applies spatial dropout; each convolution is followed by BN, the first
    two by PReLU. The shortcut is the input or, when downsampling, its 2x2 max pooling
    zero-padded to ``filters`` channels. Returns ``(output, argmax indices or None)``.
    """
    internal = filters // 4
    stride = 2 if downsample else 1
    y = _conv(x, internal, stride, f"{name}_conv1", strides=stride, use_bias=False)
    y = _act(_bn(y, f"{name}_bn1"), f"{name}_1", prelu=True)
    if kind == "asymmetric":
        y = _conv(y, internal, (1, size), f"{name}_conv2a", use_bias=False)
        y = _conv(y, internal, (size, 1), f"{name}_conv2b")
    else:
        y = _conv(y, internal, 3, f"{name}_conv2", dilation=size if kind == "dilated" else 1)
    y = _act(_bn(y, f"{name}_bn2"), f"{name}_2", prelu=True)
    y = _conv(y, filters, 1, f"{name}_conv3", use_bias=False)
    y = _bn(y, f"{name}_bn3")
    if dropout:
        y = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(y)
    indices = None
    if downsample:
        x, indices = MaxPoolingWithArgmax2D(2, name=f"{name}_pool")(x)
        x = PadChannels(filters, name=f"{name}_pad")(x)
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return _act(x, f"{name}_out", prelu=True), indices


def decoder_bottleneck(x, filters, name, *, indices=None):
    """Decoder bottleneck (ReLU, no dropout); with ``indices`` it upsamples by 2.

    Extension: 1x1 to ``filters / 4``, a 3x3 convolution (3x3 stride-2 transposed when
    upsampling), 1x1 to ``filters``, each with BN (and ReLU but the last). Shortcut: the
    input or, when upsampling, a 1x1 convolution + BN to ``filters`` max-unpooled with the
    encoder's argmax ``indices``.
    """
    internal = filters // 4
    y = _conv(x, internal, 1, f"{name}_conv1", use_bias=False)
    y = _act(_bn(y, f"{name}_bn1"), f"{name}_1", prelu=False)
    if indices is None:
        y = _conv(y, internal, 3, f"{name}_conv2")
    else:
        y = keras.layers.Conv2DTranspose(internal, 3, strides=2, padding="same", name=f"{name}_conv2")(y)
    y = _act(_bn(y, f"{name}_bn2"), f"{name}_2", prelu=False)
    y = _conv(y, filters, 1, f"{name}_conv3", use_bias=False)
    y = _bn(y, f"{name}_bn3")
    if indices is not None or x.shape[-1] != filters:
        x = _conv(x, filters, 1, f"{name}_main_conv", use_bias=False)
        x = _bn(x, f"{name}_main_bn")
        if indices is not None:
            x = MaxUnpooling2D(2, name=f"{name}_unpool")(x, indices)
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return _act(x, f"{name}_out", prelu=False)


@register(
    "enet",
    tiny=dict(widths=(8, 16, 16), stage1_blocks=0, stage23_blocks=3, stage4_blocks=1, stage5_blocks=0),
    paper="Paszke et al., ENet, 2016, https://arxiv.org/abs/1606.02147",
)
def build_enet(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    widths: Sequence[int] = (16, 64, 128),
    stage1_blocks: int = 4,
    stage23_blocks: int = 16,
    stage4_blocks: int = 2,
    stage5_blocks: int = 1,
    weights: Optional[str] = None,
    name: str = "enet",
) -> keras.Model:
    """Builds ENet, returning logits ``(B, H, W, num_classes)``.

    As the paper's Table 1 and the released Torch code (e-lab/ENet-training): the initial
    block (16 maps, stride 2); bottleneck1.0 downsampling to 64 and four bottlenecks (spatial
    dropout 0.01); bottleneck2.0 downsampling to 128, then bottlenecks 2.1-2.8 and 3.1-3.8
    (regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated
    16; dropout 0.1); the decoder bottleneck4.0 upsampling to 64 with the argmax indices of
    bottleneck2.0, two bottlenecks, bottleneck5.0 upsampling to 16 with those of
    bottleneck1.0, one bottleneck; a 2x2 stride-2 transposed convolution to the classes.
    The encoder uses PReLU and the decoder ReLU, as released.

    Max pooling with argmax and max unpooling are :class:`MaxPoolingWithArgmax2D` and
    :class:`MaxUnpooling2D`, made of builtin TFLite ops. The input is zero-padded to a
    multiple of 8 and the logits cropped back to the input size.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``.
      widths: maps after the initial block, stage 1 and stages 2-3 (16, 64, 128); the
        decoder mirrors them.
      stage1_blocks: bottlenecks after bottleneck1.0 (4).
      stage23_blocks: bottlenecks after bottleneck2.0, cycling through the 8-bottleneck
        pattern of stage 2 (16 = stages 2 and 3).
      stage4_blocks: bottlenecks after bottleneck4.0 (2).
      stage5_blocks: bottlenecks after bottleneck5.0 (1).
      weights: ``None`` or a path to a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for invalid arguments.
    """
    check_common_args(num_classes, input_shape, weights)
    widths = check_enet_options(
        widths, input_shape[-1], stage1_blocks=stage1_blocks, stage23_blocks=stage23_blocks,
        stage4_blocks=stage4_blocks, stage5_blocks=stage5_blocks,
    )

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = PadToMultiple(8, name="pad")(inputs)
    x = initial_block(x, widths[0])
    x, indices1 = encoder_bottleneck(x, widths[1], "bottleneck1_0", downsample=True, dropout=0.01)
    for i in range(1, stage1_blocks + 1):
        x, _ = encoder_bottleneck(x, widths[1], f"bottleneck1_{i}", dropout=0.01)
    x, indices2 = encoder_bottleneck(x, widths[2], "bottleneck2_0", downsample=True)
    for block, kind, size in stage23_plan(stage23_blocks):
        x, _ = encoder_bottleneck(x, widths[2], block, kind=kind, size=size)
    x = decoder_bottleneck(x, widths[1], "bottleneck4_0", indices=indices2)
    for i in range(1, stage4_blocks + 1):
        x = decoder_bottleneck(x, widths[1], f"bottleneck4_{i}")
    x = decoder_bottleneck(x, widths[0], "bottleneck5_0", indices=indices1)
    for i in range(1, stage5_blocks + 1):
        x = decoder_bottleneck(x, widths[0], f"bottleneck5_{i}")
    x = keras.layers.Conv2DTranspose(num_classes, 2, strides=2, dtype="float32", name="fullconv")(x)
    outputs = CropLike(name="logits", dtype="float32")(x, inputs)
    return load_weights_if_given(keras.Model(inputs, outputs, name=name), weights)
