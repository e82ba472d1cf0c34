"""Backbones: functions from an input tensor to ``{stride: feature tensor}``.

Builders pick one by name through :func:`get_backbone` (:mod:`.registry`), which gives each
backbone's option checks, features and pretrained-weight loading behind one interface.

``resnet()`` itself is imported from :mod:`keras_seg.models.backbones.resnet`: re-exporting it
here would shadow that submodule.
"""

from keras_seg.models.backbones.resnet import (  # noqa: F401
    RESNET_ARCHS,
    build_resnet_backbone,
    check_resnet_args,
    load_resnet_weights,
    resnet_stages,
)
from keras_seg.models.backbones.registry import BACKBONES, Backbone, get_backbone, list_backbones  # noqa: F401
from keras_seg.models.backbones.vgg import (  # noqa: F401
    VGG16_BLOCKS,
    check_backbone_weights,
    check_vgg_blocks,
    load_vgg16_weights,
    vgg16_features,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "get_backbone",
    "list_backbones",
    "RESNET_ARCHS",
    "resnet_stages",
    "build_resnet_backbone",
    "check_resnet_args",
    "load_resnet_weights",
    "VGG16_BLOCKS",
    "vgg16_features",
    "load_vgg16_weights",
    "check_vgg_blocks",
    "check_backbone_weights",
]
