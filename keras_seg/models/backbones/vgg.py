"""VGG16 feature extractor (Simonyan and Zisserman, 2015, https://arxiv.org/abs/1409.1556).

Layer names are those of ``keras.applications.VGG16`` (``block1_conv1`` ... ``block5_pool``),
so :func:`load_vgg16_weights` copies that application's no-top weights by layer name. The
same function builds the three encoders of the VGG family:

* FCN (``conv1_pad=100``, ``pooling="ceil"``): Caffe's VGG16 with ceil-mode pooling;
* SegNet / DeconvNet (``batch_norm=True``, ``pooling="argmax"``): VGG16-BN whose pooling
  also returns the argmax indices the decoder unpools with;
* plain VGG16 (defaults);
* DeepLab v1 (``pooling="caffe3x3", output_stride=8``): 3x3 stride-2 pooling, the last two
  pools at stride 1 and block 5 dilated by 2;
* G-FRNet (``batch_norm=True, pooling="ceil", pool_dropout=..., pre_pool=True``): also the
  last activation of every block, before its pooling.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from keras_seg.models.blocks import MaxPoolingWithArgmax2D, batch_norm, copy_weights_by_name

__all__ = [
    "VGG16_BLOCKS",
    "vgg16_features",
    "load_vgg16_weights",
    "check_vgg_blocks",
    "check_backbone_weights",
]

#: ``(filters, number of 3x3 convolutions)`` of VGG16's five blocks.
VGG16_BLOCKS: Tuple[Tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

_POOLINGS = ("max", "ceil", "argmax", "caffe3x3")
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


def _vgg_conv(x, filters: int, name: str, use_bn: bool, padding: str = "same", dilation: int = 1):
    """3x3 convolution with bias, then (BN and) ReLU: ``name``, ``name_bn``, ``name_relu``."""
    if not use_bn:  # exactly keras.applications.VGG16's layer
        return keras.layers.Conv2D(
            filters, 3, padding=padding, dilation_rate=dilation, activation="relu", name=name
        )(x)
    x = keras.layers.Conv2D(
        filters, 3, padding=padding, dilation_rate=dilation, kernel_initializer="he_normal", name=name
    )(x)
    x = batch_norm(f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _check_vgg_options(blocks, pooling, conv1_pad, output_stride, pool_dropout, pre_pool):
    """Validates :func:`vgg16_features`' options; returns ``(blocks, output_stride, pool_dropout)`` resolved."""
    blocks = check_vgg_blocks(blocks)
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}. Received: pooling={pooling!r}")
    if isinstance(conv1_pad, bool) or not isinstance(conv1_pad, int) or conv1_pad < 0:
        raise ValueError(f"conv1_pad must be an int >= 0. Received: conv1_pad={conv1_pad!r}")
    full_stride = 2 ** len(blocks)
    if output_stride is None:
        output_stride = full_stride
    valid_strides = [2**k for k in range(len(blocks) + 1)]
    if output_stride not in valid_strides or (output_stride != full_stride and pooling != "caffe3x3"):
        raise ValueError(
            f"output_stride must be a power of two up to {full_stride}, below it only with "
            f"pooling='caffe3x3'. Received: output_stride={output_stride!r}"
        )
    pool_dropout = dict(pool_dropout or {})
    for block, rate in pool_dropout.items():
        if block not in range(1, len(blocks) + 1) or not 0.0 <= float(rate) < 1.0:
            raise ValueError(
                "pool_dropout maps block indices (1-based) to rates in [0, 1). "
                f"Received: pool_dropout={pool_dropout!r}"
            )
    if pre_pool and pooling == "argmax":
        raise ValueError("pre_pool is not available with pooling='argmax'. Received: pre_pool=True")
    return blocks, output_stride, pool_dropout


def vgg16_features(
    inputs,
    *,
    blocks: Sequence[Tuple[int, int]] = VGG16_BLOCKS,
    batch_norm: bool = False,  # pylint: disable=redefined-outer-name
    pooling: str = "max",
    conv1_pad: int = 1,
    output_stride: Optional[int] = None,
    pool_dropout: Optional[Mapping[int, float]] = None,
    pre_pool: bool = False,
):
    """Applies the VGG16 convolutional blocks to ``inputs``.

    VGG16: Simonyan and Zisserman, ICLR 2015, https://arxiv.org/abs/1409.1556.

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
        ``"caffe3x3"``: DeepLab's Caffe pooling, 3x3 windows with stride 2 over the input
        zero-padded by 1 (layers ``block{i}_pool_pad``, ``block{i}_pool``; the padding never
        wins a max after ReLU): ``ceil(n / 2)`` outputs, Caffe's count for odd ``n``.
      conv1_pad: Caffe ``pad`` of ``block1_conv1``: 1 is "same" (VGG16); FCN uses 100, so that
        ``block1_conv1`` is a valid convolution over the input zero-padded by 100 (layer
        ``block1_pad``).
      output_stride: ``None`` (every pool has stride 2) or a power of two below ``2**n``
        (``pooling="caffe3x3"`` only): the pools that would exceed it get stride 1 and the
        convolutions after each of them double their dilation (DeepLab v1: 8, so pool4 and
        pool5 keep the size and block 5 is dilated by 2).
      pool_dropout: ``{block index: rate}``: dropout after those blocks' pooling (layer
        ``block{i}_pool_dropout``), e.g. G-FRNet's ``{3: 0.5, 4: 0.5, 5: 0.5}``.
      pre_pool: also return ``{stride: activation}`` of every block's last convolution
        before its pooling (``{1: block1_conv2, 2: block2_conv2, ..., 16: block5_conv3}`` for
        VGG16); not with ``pooling="argmax"``.

    Returns:
      ``{2: pool1, 4: pool2, ..., 2**n: pool_n}``, the output of every block by its stride
      (where pools keep the stride, the deepest one). With ``pooling="argmax"``, a pair
      ``(features, indices)`` where ``indices`` has the same keys and holds each pooling's
      int32 argmax indices, for :class:`MaxUnpooling2D`. With ``pre_pool``, a pair
      ``(features, pre_pool_features)``.

    Raises:
      ValueError: for an invalid option.
    """
    blocks, output_stride, pool_dropout = _check_vgg_options(blocks, pooling, conv1_pad, output_stride,
                                                             pool_dropout, pre_pool)

    x = inputs
    features: Dict[int, tf.Tensor] = {}
    indices: Dict[int, tf.Tensor] = {}
    before_pool: Dict[int, tf.Tensor] = {}
    stride, dilation = 1, 1
    for i, (filters, convs) in enumerate(blocks, start=1):
        for j in range(1, convs + 1):
            name = f"block{i}_conv{j}"
            if (i, j) == (1, 1) and conv1_pad != 1:
                if conv1_pad:
                    x = keras.layers.ZeroPadding2D(conv1_pad, name="block1_pad")(x)
                x = _vgg_conv(x, filters, name, batch_norm, padding="valid")
            else:
                x = _vgg_conv(x, filters, name, batch_norm, dilation=dilation)
        before_pool[stride] = x
        pool_stride = 2 if stride < output_stride else 1
        if pooling == "argmax":
            x, indices[2 * stride] = MaxPoolingWithArgmax2D(2, name=f"block{i}_pool")(x)
        elif pooling == "caffe3x3":
            x = keras.layers.ZeroPadding2D(1, name=f"block{i}_pool_pad")(x)
            x = keras.layers.MaxPooling2D(3, strides=pool_stride, name=f"block{i}_pool")(x)
        else:
            pad = "same" if pooling == "ceil" else "valid"
            x = keras.layers.MaxPooling2D(2, strides=2, padding=pad, name=f"block{i}_pool")(x)
        if pool_dropout.get(i):
            x = keras.layers.Dropout(pool_dropout[i], name=f"block{i}_pool_dropout")(x)
        stride *= pool_stride
        dilation *= 2 // pool_stride
        features[stride] = x
    if pooling == "argmax":
        return features, indices
    return (features, before_pool) if pre_pool else features


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
    copy_weights_by_name(
        model, _reference_vgg16(weights), weights,
        missing_hint=f": backbone weights need the full VGG16 blocks {VGG16_BLOCKS}",
        shape_hint=" (VGG16 weights need 3-channel input and the full VGG16 blocks)",
    )
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
