"""The backbone registry: one entry per encoder, each a function to ``{stride: feature}``.

Every entry offers the same three operations, so a model builder takes any backbone of the
family it needs by name, with one spelling of ``backbone_weights`` and ``output_stride``:

* ``check(**options, weights=...)``: validate the options and the weights source before
  anything is built (the errors name the flag and the value);
* ``features(x, **options)``: apply the encoder; returns ``{stride: feature tensor}``, the
  deepest feature at each stride relative to the input;
* ``load_weights(model, weights)``: copy pretrained weights into the model's backbone layers
  by layer name (``None``: nothing to do).

ResNets take ``output_stride`` (8, 16 or 32, by dilating the last stages), ``multi_grid``,
``blocks`` and ``width``; VGG16 takes ``blocks``, ``batch_norm``, ``pooling`` and
``output_stride`` (:func:`~keras_seg.models.backbones.vgg.vgg16_features`, whose argmax and
pre-pool modes also return indices, for SegNet / DeconvNet / G-FRNet).

    >>> from keras_seg.models.backbones import get_backbone, list_backbones
    >>> list_backbones()
    ['resnet101', 'resnet18', 'resnet34', 'resnet50', 'vgg16']
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Callable, Dict, List, Optional

from keras_seg.models.backbones.resnet import RESNET_ARCHS, check_resnet_args, load_resnet_weights, resnet
from keras_seg.models.backbones.vgg import (
    VGG16_BLOCKS,
    check_backbone_weights,
    check_vgg_blocks,
    load_vgg16_weights,
    vgg16_features,
)

__all__ = ["Backbone", "BACKBONES", "get_backbone", "list_backbones"]


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One registered encoder.

    Attributes:
      name: registry key, e.g. ``"resnet50"``; the value of a builder's ``backbone`` option.
      family: ``"resnet"`` or ``"vgg"``: builders that rely on a family's stage layout
        (PSPNet's auxiliary head on ResNet stage 4) accept only that family.
      paper: citation of the encoder.
      features: ``(x, **options) -> {stride: tensor}``.
      check: ``(**options, weights=None) -> None``; raises ValueError.
      load_weights: ``(model, weights) -> model``.
      imagenet: whether ``weights="imagenet"`` is available (through keras.applications).
    """

    name: str
    family: str
    paper: str
    features: Callable[..., Dict[int, Any]]
    check: Callable[..., None]
    load_weights: Callable[[Any, Any], Any]
    imagenet: bool


_RESNET_PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016, https://arxiv.org/abs/1512.03385"
_VGG_PAPER = "Simonyan and Zisserman, Very Deep Convolutional Networks, ICLR 2015, https://arxiv.org/abs/1409.1556"


def _check_resnet(arch: str, *, weights=None, **options) -> None:
    check_resnet_args(arch, weights=weights, **options)


def _check_vgg(*, weights=None, blocks=VGG16_BLOCKS, input_shape=(None, None, 3), **_options) -> None:
    check_vgg_blocks(blocks)
    check_backbone_weights(weights, blocks, input_shape)


def _resnet_entry(arch: str) -> Backbone:
    return Backbone(
        name=arch, family="resnet", paper=_RESNET_PAPER,
        features=functools.partial(resnet, arch=arch),
        check=functools.partial(_check_resnet, arch),
        load_weights=lambda model, weights: load_resnet_weights(model, arch, weights),
        imagenet=RESNET_ARCHS[arch].keras_app is not None,
    )


BACKBONES: Dict[str, Backbone] = {
    **{arch: _resnet_entry(arch) for arch in RESNET_ARCHS},
    "vgg16": Backbone(
        name="vgg16", family="vgg", paper=_VGG_PAPER, features=vgg16_features, check=_check_vgg,
        load_weights=load_vgg16_weights, imagenet=True,
    ),
}


def list_backbones(family: Optional[str] = None) -> List[str]:
    """Sorted names of the registered backbones (of ``family`` only, if given)."""
    return sorted(n for n, b in BACKBONES.items() if family is None or b.family == family)


def get_backbone(name: str, *, family: Optional[str] = None, option: str = "backbone") -> Backbone:
    """The :class:`Backbone` registered as ``name``.

    Args:
      name: a key of :data:`BACKBONES`.
      family: the family the caller needs (``"resnet"``), or ``None`` for any.
      option: the caller's option name, used in the error message.

    Raises:
      ValueError: for an unknown name, or one of another family; the message lists the
        names that would work.
    """
    valid = list_backbones(family)
    if name not in valid:
        close = difflib.get_close_matches(str(name), valid, n=2)
        hint = f" Did you mean {close}?" if close else ""
        what = f"a {family} backbone" if family else "a backbone"
        raise ValueError(f"{option} must be {what}, one of {valid}. Received: {option}={name!r}.{hint}")
    return BACKBONES[name]
