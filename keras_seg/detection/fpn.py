"""Feature Pyramid Network (Lin et al., 2017, https://arxiv.org/abs/1612.03144) for Mask R-CNN.

``fpn`` turns the ResNet stage outputs ``{4: C2, 8: C3, 16: C4, 32: C5}`` into the pyramid
``{2: P2, ..., 6: P6}`` of section 3 of the paper: a 1x1 lateral convolution on each ``Cl``,
a top-down pathway that upsamples the coarser merged map by nearest neighbour and adds it,
a 3x3 output convolution on each sum, and ``P6`` as a stride-2 subsampling of ``P5``
(Detectron's and torchvision's ``LastLevelMaxPool``: ``max_pool2d(P5, 1, stride=2)``).

The top-down upsampling resizes to the lateral's exact size (:class:`ResizeLike`, nearest),
never by a fixed factor, so any input size works: level ``l`` is
``ceil(H / 2**l) x ceil(W / 2**l)``, matching :func:`keras_seg.detection.boxes.fpn_anchors`.
At sizes where a level is exactly twice the next one (inputs divisible by 32) this is
torchvision's ``F.interpolate(mode="nearest")``; otherwise TF's half-pixel nearest rule picks
the other of two equidistant source cells on some rows.
"""

from __future__ import annotations

from typing import Dict

import keras

from keras_seg.models.blocks import ResizeLike

__all__ = ["FPN_INPUT_LEVELS", "fpn"]

#: Backbone levels the pyramid reads: C2..C5, at strides 4, 8, 16 and 32.
FPN_INPUT_LEVELS = (2, 3, 4, 5)
# Detectron's c2_xavier_fill (kaiming_uniform with a=1) is LeCun's uniform initialiser.
_INIT = "lecun_uniform"


def _check_features(features) -> None:
    """Raises ValueError unless every stride 4, 8, 16 and 32 is a key of ``features``."""
    strides = [2**level for level in FPN_INPUT_LEVELS]
    if not isinstance(features, dict) or any(s not in features for s in strides):
        keys = sorted(features) if isinstance(features, dict) else type(features).__name__
        raise ValueError(f"features must be a dict holding strides {strides}. Received: features keys={keys}")


def fpn(
    features: Dict[int, "keras.KerasTensor"], width: int = 256, name: str = "fpn"
) -> Dict[int, "keras.KerasTensor"]:
    """Feature Pyramid Network: ``{stride: C}`` to ``{level: P}`` for levels 2..6.

    Lin et al., 2017, https://arxiv.org/abs/1612.03144. Layers: ``{name}_lateral{l}`` (1x1),
    ``{name}_top_down{l}_up`` (nearest resize to the lateral), ``{name}_top_down{l}_add``,
    ``{name}_output{l}`` (3x3) for ``l`` in 2..5, and ``{name}_p6_pool``. All convolutions
    have biases, as in torchvision's ``FeaturePyramidNetwork``.

    Args:
      features: backbone outputs ``{stride: [B, H/stride, W/stride, C]}`` with strides 4, 8,
        16 and 32 (others, such as the stem's 2, are ignored).
      width: channels of every pyramid level (256 in the paper).
      name: prefix of every layer.

    Returns:
      ``{level: [B, ceil(H / 2**level), ceil(W / 2**level), width]}`` for levels 2..6.

    Raises:
      ValueError: if a stride is missing or ``width`` is not a positive int.
    """
    _check_features(features)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an int >= 1. Received: width={width!r}")
    laterals = {
        level: keras.layers.Conv2D(width, 1, kernel_initializer=_INIT, name=f"{name}_lateral{level}")(
            features[2**level]
        )
        for level in FPN_INPUT_LEVELS
    }
    top = max(FPN_INPUT_LEVELS)
    merged = {top: laterals[top]}
    for level in sorted(FPN_INPUT_LEVELS, reverse=True)[1:]:
        up = ResizeLike("nearest", name=f"{name}_top_down{level}_up")(merged[level + 1], laterals[level])
        merged[level] = keras.layers.Add(name=f"{name}_top_down{level}_add")([laterals[level], up])
    outputs = {
        level: keras.layers.Conv2D(
            width, 3, padding="same", kernel_initializer=_INIT, name=f"{name}_output{level}"
        )(merged[level])
        for level in FPN_INPUT_LEVELS
    }
    outputs[top + 1] = keras.layers.MaxPooling2D(1, strides=2, name=f"{name}_p{top + 1}_pool")(outputs[top])
    return outputs
