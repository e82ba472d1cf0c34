"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer and Darrell, CVPR 2015).

Paper: https://arxiv.org/abs/1411.4038. The builders follow the reference Caffe models
(https://github.com/shelhamer/fcn.berkeleyvision.org, ``voc-fcn{32,16,8}s/net.py``):

* VGG16 with Caffe ceil-mode pooling; ``conv1_1`` pads its input by 100 pixels.
* ``fc6`` as a 7x7 valid convolution with 4096 filters and ``fc7`` as a 1x1 convolution with
  4096 filters, each followed by ReLU and dropout 0.5; ``score_fr``, a 1x1 class scorer.
* Transposed convolutions without bias and initialised to bilinear interpolation:
  ``upscore`` (64x64, stride 32) for FCN-32s; ``upscore2`` (4x4, stride 2) and ``upscore16``
  (32x32, stride 16) for FCN-16s; ``upscore2``, ``upscore_pool4`` (4x4, stride 2) and
  ``upscore8`` (16x16, stride 8) for FCN-8s.
* Skips ``score_pool4`` / ``score_pool3`` (1x1 convolutions on pool4 / pool3), cropped
  and summed; the crop offsets are the reference ones: FCN-32s 19; FCN-16s 5 and 27;
  FCN-8s 5, 9 and 31.

Why every input size works. With ``n = H + 198`` after ``conv1_1``, ceil-mode pooling gives
``p_k = ceil(n / 2**k)`` at pool ``k``, and ``fc6`` gives ``f = p_5 - 6 >= 1`` (``n >= 199``
so ``p_5 >= 7``). Since ``2 * p_5 <= p_4 + 1`` and ``4 * p_5 <= p_3 + 3``:

* ``upscore2`` has ``2f + 2`` rows and ``score_pool4`` needs ``2f + 2 + 5 <= p_4``: true as
  ``2f + 7 = 2 p_5 - 5 <= p_4 - 4``;
* ``upscore_pool4`` has ``4f + 6`` rows and ``score_pool3`` needs ``4f + 6 + 9 <= p_3``: true
  as ``4f + 15 = 4 p_5 - 9 <= p_3 - 6``;
* the final maps have ``32f + 32`` (32s), ``32f + 48`` (16s), ``32f + 56`` (8s) rows and
  ``32 f >= 32 (n / 32 - 6) = H + 6``, so each covers its offset (19, 27, 31) plus ``H``.

So the logits are cropped to exactly ``H x W`` for every ``H, W >= 1``; the crops check this
at run time as well (:class:`~keras_seg.models.blocks.CropLike`).
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
    BilinearUpsampling,
    CropLike,
    check_common_args,
    load_weights_if_given,
)
from keras_seg.registry import register, variant

__all__ = ["build_fcn", "build_fcn32s", "build_fcn16s", "build_fcn8s", "FCN_CROP_OFFSETS"]

_PAPER = (
    "Long, Shelhamer and Darrell, Fully Convolutional Networks, CVPR 2015, "
    "https://arxiv.org/abs/1411.4038"
)

#: Crop offsets of the reference Caffe models, in the order the crops are applied.
FCN_CROP_OFFSETS = {32: (19,), 16: (5, 27), 8: (5, 9, 31)}

_UPSAMPLING_TRAINABLE = ("intermediate", "none", "all")

# Test size: the same five pooling stages (the crop offsets depend on them), one narrow
# convolution per block and narrow fc6/fc7. Random score layers keep the outputs non-zero.
_TINY = dict(blocks=((8, 1), (8, 1), (16, 1), (16, 1), (16, 1)), fc_channels=16, zero_init_scores=False)


def _score(x, num_classes: int, name: str, zero_init: bool):
    """1x1 class-scoring convolution (Caffe's default filler, used by FCN, is zero)."""
    init = "zeros" if zero_init else "glorot_uniform"
    return keras.layers.Conv2D(num_classes, 1, kernel_initializer=init, name=name)(x)


def _fuse(x, pool_feature, num_classes: int, pool: str, offset: int, zero_init: bool):
    """Adds ``score_{pool}`` (1x1 scores of a pooling output, cropped at the reference ``offset``
    to ``x``'s size, layer ``score_{pool}c``) to the upsampled scores ``x`` (layer ``fuse_{pool}``)."""
    skip = _score(pool_feature, num_classes, f"score_{pool}", zero_init)
    skip = CropLike((offset,) * 2, name=f"score_{pool}c")(skip, x)
    return keras.layers.Add(name=f"fuse_{pool}")([x, skip])


def _upscore(x, num_classes: int, stride: int, name: str, trainable: bool, final: bool):
    """Transposed convolution with kernel ``2 * stride``, no bias, bilinear initialisation."""
    return keras.layers.Conv2DTranspose(
        num_classes,
        2 * stride,
        strides=stride,
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        trainable=trainable,
        dtype="float32" if final else None,
        name=name,
    )(x)


def _check_fcn_args(num_classes, input_shape, stride, blocks, fc_channels, dropout, upsampling_trainable,
                    backbone_weights, weights):
    """Validates :func:`build_fcn`'s arguments; returns the checked VGG ``blocks``."""
    if stride not in FCN_CROP_OFFSETS:
        raise ValueError(f"stride must be one of {sorted(FCN_CROP_OFFSETS)}. Received: stride={stride!r}")
    check_common_args(num_classes, input_shape, weights)
    blocks = check_vgg_blocks(blocks)
    if len(blocks) != 5:
        raise ValueError(
            "FCN needs VGG16's five pooling stages (its crop offsets depend on them); use "
            f"fewer convolutions or filters per block instead. Received: blocks={blocks!r}"
        )
    if isinstance(fc_channels, bool) or not isinstance(fc_channels, int) or fc_channels < 1:
        raise ValueError(f"fc_channels must be an int >= 1. Received: fc_channels={fc_channels!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if upsampling_trainable not in _UPSAMPLING_TRAINABLE:
        raise ValueError(
            f"upsampling_trainable must be one of {_UPSAMPLING_TRAINABLE}. "
            f"Received: upsampling_trainable={upsampling_trainable!r}"
        )
    check_backbone_weights(backbone_weights, blocks, input_shape)
    return blocks


def build_fcn(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    stride: int = 8,
    blocks: Sequence[Tuple[int, int]] = VGG16_BLOCKS,
    fc_channels: int = 4096,
    dropout: float = 0.5,
    upsampling_trainable: str = "intermediate",
    zero_init_scores: bool = True,
    backbone_weights: Optional[str] = None,
    weights: Optional[str] = None,
    name: str = "fcn",
) -> keras.Model:
    """Builds FCN-32s, FCN-16s or FCN-8s (``stride``): the body of the three registered variants.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``. Every size >= 1 works.
      stride: 32 (one 32x transposed convolution), 16 (``upscore2`` fused with
        ``score_pool4``, then 16x) or 8 (that fused map upsampled 2x, fused with
        ``score_pool3``, then 8x).
      blocks: VGG ``(filters, convolutions)`` per block; five blocks are required.
      fc_channels: filters of ``fc6`` (7x7) and ``fc7`` (1x1); 4096 in the paper.
      dropout: dropout rate after ``fc6`` and ``fc7`` (0.5); 0 removes the layers.
      upsampling_trainable: which transposed convolutions learn. ``"intermediate"``: the
        paper's choice (the 2x layers learn from their bilinear start, the final one stays
        bilinear; FCN-32s has only the final one, so it is frozen). ``"none"``: all frozen,
        as the reference Caffe models (``lr_mult: 0``). ``"all"``: all learn.
      zero_init_scores: zero-initialise the 1x1 scoring layers, as the paper and reference
        models; ``False`` uses Glorot-uniform.
      backbone_weights: ``None``, ``"imagenet"`` or a path to the Keras VGG16 no-top weights
        (see :func:`~keras_seg.models.backbones.vgg.load_vgg16_weights`).
      weights: ``None`` or a ``.weights.h5`` file for the whole model.
      name: model name.

    Returns:
      A ``keras.Model`` returning float32 logits ``(B, H, W, num_classes)``.

    Raises:
      ValueError: for invalid arguments.
    """
    blocks = _check_fcn_args(num_classes, input_shape, stride, blocks, fc_channels, dropout,
                             upsampling_trainable, backbone_weights, weights)
    learn_intermediate = upsampling_trainable in ("intermediate", "all")
    learn_final = upsampling_trainable == "all"

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    features = vgg16_features(inputs, blocks=blocks, pooling="ceil", conv1_pad=100)
    x = features[32]
    for i, kernel in ((6, 7), (7, 1)):
        x = keras.layers.Conv2D(fc_channels, kernel, name=f"fc{i}_conv")(x)
        x = keras.layers.Activation("relu", name=f"fc{i}_relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    x = _score(x, num_classes, "score_fr", zero_init_scores)

    offsets = FCN_CROP_OFFSETS[stride]
    if stride == 32:
        x = _upscore(x, num_classes, 32, "upscore", learn_final, final=True)
    else:
        x = _upscore(x, num_classes, 2, "upscore2", learn_intermediate, final=False)
        x = _fuse(x, features[16], num_classes, "pool4", offsets[0], zero_init_scores)
        if stride == 16:
            x = _upscore(x, num_classes, 16, "upscore16", learn_final, final=True)
        else:
            x = _upscore(x, num_classes, 2, "upscore_pool4", learn_intermediate, final=False)
            x = _fuse(x, features[8], num_classes, "pool3", offsets[1], zero_init_scores)
            x = _upscore(x, num_classes, 8, "upscore8", learn_final, final=True)
    outputs = CropLike((offsets[-1],) * 2, dtype="float32", name="logits")(x, inputs)
    model = keras.Model(inputs, outputs, name=name)
    load_vgg16_weights(model, backbone_weights)
    return load_weights_if_given(model, weights)


#: The three FCN variants of the paper, as data: (name, stride, docstring).
_VARIANTS = (
    ("fcn32s", 32, "Builds FCN-32s: VGG16, fc6/fc7, ``score_fr`` and one 32x transposed convolution."),
    ("fcn16s", 16, "Builds FCN-16s: FCN-32s's head upsampled 2x, fused with ``score_pool4``, then 16x."),
    ("fcn8s", 8, "Builds FCN-8s: FCN-16s's fused map upsampled 2x, fused with ``score_pool3``, then 8x.\n\n"
     "    With 19 classes on a 256x512 input it has 134,456,985 parameters."),
)
build_fcn32s, build_fcn16s, build_fcn8s = (
    register(name, tiny=_TINY, paper=_PAPER)(variant(build_fcn, name, doc, fixed={"stride": stride}))
    for name, stride, doc in _VARIANTS
)
