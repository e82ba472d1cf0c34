"""VGG16 feature extractor (Simonyan and Zisserman, 2015, https://arxiv.org/abs/1409.1556).

Layer names are those of ``keras.applications.VGG16`` (``block1_conv1`` ... ``block5_pool``),
so :func:`load_vgg16_weights` copies that application's no-top weights by layer name. The
same function builds the three encoders of the VGG family:

* FCN (``conv1_pad=100``, ``pooling="ceil"``): Caffe's VGG16 with ceil-mode pooling;
* SegNet / DeconvNet (``batch_norm=True``, ``pooling="argmax"``): VGG16-BN whose pooling
  also returns the argmax indices the decoder unpools with;
* plain VGG16 (defaults), for DeepLab v1 or G-FRNet later.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from keras_seg.models.blocks import MaxPoolingWithArgmax2D, batch_norm

__all__ = [
    "VGG16_BLOCKS",
    "vgg16_features",
    "load_vgg16_weights",
    "check_vgg_blocks",
    "check_backbone_weights",
]

#: ``(filters, number of 3x3 convolutions)`` of VGG16's five blocks.
VGG16_BLOCKS: Tuple[Tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

_POOLINGS = ("max", "ceil", "argmax")
_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def check_vgg_blocks(blocks) -> Tuple[Tuple[int, int], ...]:
    """Validates a ``blocks`` option and returns it as a tuple of int pairs.

    Raises:
      ValueError: unless ``blocks`` is a non-empty sequence of ``(filters >= 1, convs >= 1)``.
    """
    ok = (
        isinstance(blocks, (list, tuple))
        and len(blocks) >= 1
        and all(
            isinstance(b, (list, tuple))
            and len(b) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in b)
            for b in blocks
        )
    )
    if not ok:
        raise ValueError(
            "blocks must be a non-empty sequence of (filters, convolutions) int pairs, e.g. "
            f"{VGG16_BLOCKS}. Received: blocks={blocks!r}"
        )
    return tuple((f, n) for f, n in blocks)


def _vgg_conv(x, filters: int, name: str, use_bn: bool, padding: str = "same"):
    """3x3 convolution with bias, then (BN and) ReLU: ``name``, ``name_bn``, ``name_relu``."""
    if not use_bn:  # exactly keras.applications.VGG16's layer
        return keras.layers.Conv2D(filters, 3, padding=padding, activation="relu", name=name)(x)
    x = keras.layers.Conv2D(filters, 3, padding=padding, kernel_initializer="he_normal", name=name)(x)
    x = batch_norm(f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def vgg16_features(
    inputs,
    *,
    blocks: Sequence[Tuple[int, int]] = VGG16_BLOCKS,
    batch_norm: bool = False,  # pylint: disable=redefined-outer-name
    pooling: str = "max",
    conv1_pad: int = 1,
):
    """Applies the VGG16 convolutional blocks to ``inputs``.

    Block ``i`` is ``blocks[i-1][1]`` 3x3 convolutions with bias (``block{i}_conv{j}``), each
    followed by ReLU, or by BatchNorm and ReLU (``_bn``, ``_relu``) when ``batch_norm``, then a
    2x2 stride-2 max pooling ``block{i}_pool``.

    Args:
      inputs: ``(B, H, W, C)`` tensor.
      blocks: ``(filters, convolutions)`` per block; :data:`VGG16_BLOCKS` is VGG16. Fewer or
        narrower blocks give test-size variants (their weights cannot be loaded).
      batch_norm: add BatchNorm after every convolution (SegNet's and DeconvNet's VGG16-BN).
      pooling: ``"max"``: floor-mode max pooling, as ``keras.applications.VGG16``.
        ``"ceil"``: Caffe's ceil-mode pooling (``ceil(n / 2)`` outputs, the last window
        clipped), as the FCN reference models. ``"argmax"``: :class:`MaxPoolingWithArgmax2D`;
        H and W must be multiples of ``2 ** len(blocks)``.
      conv1_pad: Caffe ``pad`` of ``block1_conv1``: 1 is "same" (VGG16); FCN uses 100, so that
        ``block1_conv1`` is a valid convolution over the input zero-padded by 100 (layer
        ``block1_pad``).

    Returns:
      ``{2: pool1, 4: pool2, ..., 2**n: pool_n}``, the output of every block by its stride.
      With ``pooling="argmax"``, a pair ``(features, indices)`` where ``indices`` has the same
      keys and holds each pooling's int32 argmax indices, for :class:`MaxUnpooling2D`.

    Raises:
      ValueError: for an invalid option.
    """
    blocks = check_vgg_blocks(blocks)
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}. Received: pooling={pooling!r}")
    if isinstance(conv1_pad, bool) or not isinstance(conv1_pad, int) or conv1_pad < 0:
        raise ValueError(f"conv1_pad must be an int >= 0. Received: conv1_pad={conv1_pad!r}")

    x = inputs
    features: Dict[int, tf.Tensor] = {}
    indices: Dict[int, tf.Tensor] = {}
    for i, (filters, convs) in enumerate(blocks, start=1):
        for j in range(1, convs + 1):
            name = f"block{i}_conv{j}"
            if (i, j) == (1, 1) and conv1_pad != 1:
                if conv1_pad:
                    x = keras.layers.ZeroPadding2D(conv1_pad, name="block1_pad")(x)
                x = _vgg_conv(x, filters, name, batch_norm, padding="valid")
            else:
                x = _vgg_conv(x, filters, name, batch_norm)
        stride = 2**i
        if pooling == "argmax":
            x, indices[stride] = MaxPoolingWithArgmax2D(2, name=f"block{i}_pool")(x)
        else:
            pad = "same" if pooling == "ceil" else "valid"
            x = keras.layers.MaxPooling2D(2, strides=2, padding=pad, name=f"block{i}_pool")(x)
        features[stride] = x
    return (features, indices) if pooling == "argmax" else features


def _reference_vgg16(weights: str) -> keras.Model:
    """``keras.applications.VGG16`` without top, holding ``weights`` ("imagenet" or a file)."""
    if weights == "imagenet":
        try:
            return keras.applications.VGG16(
                include_top=False, weights="imagenet", input_shape=(None, None, 3)
            )
        except Exception as err:  # no network, proxy, disk: say how to do without it
            raise RuntimeError(
                "Could not fetch the ImageNet VGG16 weights through Keras "
                f"({type(err).__name__}: {err}). Without network access, download "
                f"'{_NOTOP_FILE}' (the file keras.applications.VGG16(include_top=False) uses) "
                "on a connected machine and pass its path: backbone_weights='/path/to/"
                f"{_NOTOP_FILE}'. Received: backbone_weights='imagenet'"
            ) from err
    if not tf.io.gfile.exists(weights):
        raise ValueError(f"backbone_weights file not found. Received: backbone_weights={weights!r}")
    return keras.applications.VGG16(include_top=False, weights=weights, input_shape=(None, None, 3))


def load_vgg16_weights(model: keras.Model, weights: Optional[str]) -> keras.Model:
    """Copies VGG16 convolution weights into the layers of ``model`` with the same names.

    Args:
      model: a model built with :func:`vgg16_features` and the default :data:`VGG16_BLOCKS`
        on 3-channel input.
      weights: ``None`` (nothing to do), ``"imagenet"`` (fetched through Keras, needs network
        the first time) or the path of a file that ``keras.applications.VGG16(
        include_top=False)`` loads: the application's
        ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` or a ``.weights.h5`` saved
        from that model. The ImageNet weights expect
        ``keras.applications.vgg16.preprocess_input`` ("caffe" mode) inputs.

    Returns:
      ``model``, with ``block{i}_conv{j}`` kernels and biases replaced.

    Raises:
      ValueError: for a missing file or a model whose VGG layers do not match VGG16.
      RuntimeError: when ``"imagenet"`` cannot be fetched; the message says how to pass a file.
    """
    if weights is None:
        return model
    reference = _reference_vgg16(weights)
    for ref_layer in reference.layers:
        values = ref_layer.get_weights()
        if not values:
            continue
        try:
            layer = model.get_layer(ref_layer.name)
        except ValueError as err:
            raise ValueError(
                f"model has no VGG16 layer {ref_layer.name!r}: backbone weights need the full "
                f"VGG16 blocks {VGG16_BLOCKS}. Received: backbone_weights={weights!r}"
            ) from err
        shapes = [tuple(v.shape) for v in layer.get_weights()]
        if shapes != [v.shape for v in values]:
            raise ValueError(
                f"layer {ref_layer.name!r} has weight shapes {shapes}, VGG16 has "
                f"{[v.shape for v in values]} (VGG16 weights need 3-channel input and the full "
                f"VGG16 blocks). Received: backbone_weights={weights!r}"
            )
        layer.set_weights(values)
    return model


def check_backbone_weights(backbone_weights, blocks, input_shape) -> None:
    """Raises ValueError when ``backbone_weights`` cannot apply to this configuration."""
    if backbone_weights is None:
        return
    if not isinstance(backbone_weights, str):
        raise ValueError(
            "backbone_weights must be None, 'imagenet' or a path to VGG16 no-top weights. "
            f"Received: backbone_weights={backbone_weights!r}"
        )
    if backbone_weights != "imagenet" and not tf.io.gfile.exists(backbone_weights):
        raise ValueError(
            f"backbone_weights file not found. Received: backbone_weights={backbone_weights!r}"
        )
    if check_vgg_blocks(blocks) != VGG16_BLOCKS or input_shape[-1] != 3:
        raise ValueError(
            f"backbone_weights need the VGG16 blocks {VGG16_BLOCKS} and 3 input channels; "
            f"got blocks={tuple(blocks)} and input_shape={tuple(input_shape)}. "
            f"Received: backbone_weights={backbone_weights!r}"
        )
