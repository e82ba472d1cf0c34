"""Shared building blocks and the custom layers every architecture uses.

Custom layers are registered with ``keras.saving.register_keras_serializable`` so that
every model saves and loads as a ``.keras`` file without ``custom_objects``; each is
registered as ``keras_seg>ClassName`` whichever module below defines it.

- :mod:`~keras_seg.models.blocks.builder`: argument checks and weight loading of the builders;
- :mod:`~keras_seg.models.blocks.norm`: :class:`BatchNorm` (fused kernel), :func:`batch_norm`,
  :class:`LocalResponseNorm`;
- :mod:`~keras_seg.models.blocks.conv`: :func:`conv_bn_act`, :func:`sep_conv_bn_act`, the
  ``logits`` layer and the bilinear initialiser of transposed convolutions;
- :mod:`~keras_seg.models.blocks.shape`: :class:`ResizeLike` (the one resize primitive),
  padding and cropping to a reference or a multiple, input size checks;
- :mod:`~keras_seg.models.blocks.context`: adaptive average pooling, pyramid pooling, ASPP;
- :mod:`~keras_seg.models.blocks.unpool`: max pooling with argmax indices and max unpooling,
  in TFLite builtin ops.
"""

from keras_seg.models.blocks.builder import (
    check_common_args,
    check_positive_ints,
    copy_weights_by_name,
    load_weights_if_given,
    static_hw,
)
from keras_seg.models.blocks.context import AdaptiveAvgPool2D, aspp, pyramid_pool
from keras_seg.models.blocks.conv import BilinearUpsampling, bilinear_kernel, conv_bn_act, logits_layer, sep_conv_bn_act
from keras_seg.models.blocks.norm import FUSED_BATCH_NORM_ENV, BatchNorm, LocalResponseNorm, batch_norm
from keras_seg.models.blocks.shape import (
    CenterCropLike,
    CropLike,
    InputSizeCheck,
    PadChannels,
    PadToMultiple,
    ResizeLike,
    resize_logits,
)
from keras_seg.models.blocks.unpool import MaxPoolingWithArgmax2D, MaxUnpooling2D

__all__ = [
    "ResizeLike",
    "PadToMultiple",
    "CropLike",
    "CenterCropLike",
    "InputSizeCheck",
    "check_common_args",
    "check_positive_ints",
    "load_weights_if_given",
    "copy_weights_by_name",
    "static_hw",
    "conv_bn_act",
    "sep_conv_bn_act",
    "logits_layer",
    "batch_norm",
    "BatchNorm",
    "FUSED_BATCH_NORM_ENV",
    "AdaptiveAvgPool2D",
    "pyramid_pool",
    "aspp",
    "resize_logits",
    "PadChannels",
    "MaxPoolingWithArgmax2D",
    "MaxUnpooling2D",
    "LocalResponseNorm",
    "BilinearUpsampling",
    "bilinear_kernel",
]
