"""ResNet-18/34/50/101 backbones with dilation (He et al., CVPR 2016, https://arxiv.org/abs/1512.03385).

ResNet-50 and ResNet-101 reproduce ``keras.applications.ResNet50/101(include_top=False)``
layer for layer, with the same layer names (``conv1_conv``, ``conv2_block1_1_conv``, ...) and
the same variables (Caffe-style stride in the first 1x1 convolution, convolutions with bias,
batch-norm epsilon 1.001e-5), so their weights are copied from a ``keras.applications`` weights
file by layer name. ResNet-18 and ResNet-34 use basic blocks named the same way and, like the
original networks, convolutions without bias.

``output_stride`` 16 or 8 replaces the stride of the last one or two stages by dilation
(DeepLab, https://arxiv.org/abs/1606.00915), and ``multi_grid`` multiplies the dilation of the
units of the last stage (DeepLab v3, https://arxiv.org/abs/1706.05587).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import keras

from keras_seg.models.blocks import batch_norm, copy_weights_by_name

__all__ = [
    "RESNET_ARCHS",
    "resnet",
    "resnet_stages",
    "stem_pool",
    "build_resnet_backbone",
    "check_resnet_args",
    "load_resnet_weights",
]

_BN_EPS = 1.001e-5  # keras.applications.resnet
_KERAS_APPS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


@dataclasses.dataclass(frozen=True)
class _Arch:
    block: str  # "basic" or "bottleneck"
    blocks: Tuple[int, int, int, int]
    use_bias: bool
    keras_app: Optional[str] = None  # keras.applications constructor with the same layers
    notop_hash: Optional[str] = None  # md5 of keras.applications' notop ImageNet file


RESNET_ARCHS: Dict[str, _Arch] = {
    "resnet18": _Arch("basic", (2, 2, 2, 2), use_bias=False),
    "resnet34": _Arch("basic", (3, 4, 6, 3), use_bias=False),
    "resnet50": _Arch(
        "bottleneck", (3, 4, 6, 3), True, "ResNet50", "4d473c1dd8becc155b73f8504c6f6626"
    ),
    "resnet101": _Arch(
        "bottleneck", (3, 4, 23, 3), True, "ResNet101", "88cf7a10940856eca736dc7b7e228a21"
    ),
}

# Stride and dilation of stages conv3, conv4, conv5 for each output stride.
_STRIDES = {32: (2, 2, 2), 16: (2, 2, 1), 8: (2, 1, 1)}
_DILATIONS = {32: (1, 1, 1), 16: (1, 1, 2), 8: (1, 2, 4)}


def check_resnet_args(
    arch: str,
    *,
    output_stride: int = 32,
    multi_grid: Optional[Sequence[int]] = None,
    blocks: Optional[Sequence[int]] = None,
    width: int = 64,
    weights=None,
) -> Tuple[int, int, int, int]:
    """Validates backbone arguments; returns the per-stage block counts to build.

    Args:
      arch: a key of :data:`RESNET_ARCHS`.
      output_stride: 8, 16 or 32.
      multi_grid: per-unit dilation multipliers of the last stage, one per unit, or ``None``.
      blocks: four per-stage block counts overriding the architecture's (test-size variants).
      width: filters of the stem; stage ``i`` has ``width * 2**i`` (64 in the paper).
      weights: ``None``, ``"imagenet"`` or a path to a weights file.

    Raises:
      ValueError: naming the offending argument and the value received.
    """
    if arch not in RESNET_ARCHS:
        raise ValueError(f"Unknown ResNet. Expected one of {sorted(RESNET_ARCHS)}. Received: backbone={arch!r}")
    if output_stride not in _STRIDES:
        raise ValueError(f"output_stride must be 8, 16 or 32. Received: output_stride={output_stride!r}")
    spec = RESNET_ARCHS[arch]
    stage_blocks = spec.blocks if blocks is None else tuple(blocks)
    if len(stage_blocks) != 4 or any(not isinstance(b, int) or b < 1 for b in stage_blocks):
        raise ValueError(f"blocks must be four ints >= 1. Received: backbone_blocks={blocks!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an int >= 1. Received: backbone_width={width!r}")
    if multi_grid is not None:
        mg = tuple(multi_grid)
        if len(mg) != stage_blocks[3] or any(not isinstance(r, int) or r < 1 for r in mg):
            raise ValueError(
                f"multi_grid needs one int >= 1 per unit of the last stage ({stage_blocks[3]} "
                f"units). Received: multi_grid={multi_grid!r}"
            )
    if weights is not None:
        if weights != "imagenet" and not (
            isinstance(weights, (str, os.PathLike)) and str(weights).endswith(".h5")
        ):
            raise ValueError(
                "backbone_weights must be None, 'imagenet' or a path to a '.weights.h5' / '.h5' "
                f"file. Received: backbone_weights={weights!r}"
            )
        if weights == "imagenet" and spec.keras_app is None:
            raise ValueError(
                f"No ImageNet weights are published for {arch} in keras.applications; train "
                f"from scratch or pass a path to weights saved from build_resnet_backbone("
                f"{arch!r}). Received: backbone_weights='imagenet'"
            )
        if stage_blocks != spec.blocks or width != 64:
            raise ValueError(
                f"backbone_weights only fit the standard {arch} (blocks={spec.blocks}, width=64). "
                f"Received: backbone_blocks={blocks!r}, backbone_width={width!r}"
            )
    return stage_blocks


def _conv(x, filters, kernel, name, *, strides=1, dilation=1, use_bias=True, padding="same"):
    return keras.layers.Conv2D(
        filters, kernel, strides=strides, dilation_rate=dilation, padding=padding,
        use_bias=use_bias, name=name,
    )(x)


def _bottleneck(x, filters, name, *, stride, dilation, shortcut_conv, use_bias):
    """keras.applications ``block1``: 1x1 (stride) -> 3x3 (dilation) -> 1x1 (4x), plus shortcut."""
    if shortcut_conv:
        shortcut = _conv(x, 4 * filters, 1, f"{name}_0_conv", strides=stride, use_bias=use_bias, padding="valid")
        shortcut = batch_norm(f"{name}_0_bn", epsilon=_BN_EPS)(shortcut)
    else:
        shortcut = x
    x = _conv(x, filters, 1, f"{name}_1_conv", strides=stride, use_bias=use_bias, padding="valid")
    x = batch_norm(f"{name}_1_bn", epsilon=_BN_EPS)(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv(x, filters, 3, f"{name}_2_conv", dilation=dilation, use_bias=use_bias)
    x = batch_norm(f"{name}_2_bn", epsilon=_BN_EPS)(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = _conv(x, 4 * filters, 1, f"{name}_3_conv", use_bias=use_bias, padding="valid")
    x = batch_norm(f"{name}_3_bn", epsilon=_BN_EPS)(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _basic(x, filters, name, *, stride, dilation, shortcut_conv, use_bias):
    """Basic block: 3x3 (stride) -> 3x3, plus shortcut; named like the bottleneck blocks."""
    if shortcut_conv:
        shortcut = _conv(x, filters, 1, f"{name}_0_conv", strides=stride, use_bias=use_bias, padding="valid")
        shortcut = batch_norm(f"{name}_0_bn", epsilon=_BN_EPS)(shortcut)
    else:
        shortcut = x
    x = _conv(x, filters, 3, f"{name}_1_conv", strides=stride, dilation=dilation, use_bias=use_bias)
    x = batch_norm(f"{name}_1_bn", epsilon=_BN_EPS)(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv(x, filters, 3, f"{name}_2_conv", dilation=dilation, use_bias=use_bias)
    x = batch_norm(f"{name}_2_bn", epsilon=_BN_EPS)(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def stem_pool(x, name: str = "pool1"):
    """The stem's 3x3 stride-2 max pooling (padding 1) that takes ``conv1`` (stride 2) to stride 4.

    :func:`resnet_stages` applies it as ``pool1``; LinkNet applies it once more to the returned
    ``conv1`` to recover the input of encoder block 1 (the op has no weights, so the two agree
    exactly). Zero padding equals PyTorch's -inf padding here because ``conv1`` is post-ReLU.
    """
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)


def resnet_stages(
    x,
    arch: str = "resnet50",
    *,
    output_stride: int = 32,
    multi_grid: Optional[Sequence[int]] = None,
    blocks: Optional[Sequence[int]] = None,
    width: int = 64,
) -> List[Tuple[int, "keras.KerasTensor"]]:
    """Applies a ResNet to ``x`` and returns every stage output with its stride.

    Heads that need a particular stage of a dilated network (PSPNet's auxiliary head on stage
    4) use this; everything else uses :func:`resnet`.

    Args:
      x: image tensor ``(B, H, W, 3)``.
      arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
      output_stride: 32 (plain), 16 (stage 5 dilated by 2) or 8 (stages 4 and 5 dilated by 2, 4).
      multi_grid: multipliers of the dilation of each unit of stage 5 (DeepLab v3 uses (1, 2, 4)).
      blocks: per-stage block counts overriding the architecture's (test-size variants).
      width: stem filters; 64 in the paper.

    Returns:
      ``[(2, conv1), (4, conv2), (s3, conv3), (s4, conv4), (s5, conv5)]``: the stem after ReLU
      and the outputs of stages 2-5, with their strides relative to the input.

    Raises:
      ValueError: for an unknown ``arch``, an ``output_stride`` other than 8, 16 or 32, or a
        ``multi_grid`` whose length is not the number of units of stage 5.
    """
    stage_blocks = check_resnet_args(
        arch, output_stride=output_stride, multi_grid=multi_grid, blocks=blocks, width=width
    )
    spec = RESNET_ARCHS[arch]
    block_fn = _bottleneck if spec.block == "bottleneck" else _basic
    expansion = 4 if spec.block == "bottleneck" else 1

    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = _conv(x, width, 7, "conv1_conv", strides=2, use_bias=spec.use_bias, padding="valid")
    x = batch_norm("conv1_bn", epsilon=_BN_EPS)(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    outputs = [(2, x)]
    x = stem_pool(x, "pool1")

    strides = (1,) + _STRIDES[output_stride]
    dilations = (1,) + _DILATIONS[output_stride]
    grid = tuple(multi_grid) if multi_grid is not None else (1,) * stage_blocks[3]
    stride_so_far, in_channels = 4, width
    for stage in range(4):
        filters = width * 2**stage
        stride_so_far *= strides[stage]
        for unit in range(stage_blocks[stage]):
            rate = dilations[stage] * (grid[unit] if stage == 3 else 1)
            x = block_fn(
                x,
                filters,
                f"conv{stage + 2}_block{unit + 1}",
                stride=strides[stage] if unit == 0 else 1,
                dilation=rate,
                shortcut_conv=unit == 0 and (strides[stage] != 1 or in_channels != filters * expansion),
                use_bias=spec.use_bias,
            )
            in_channels = filters * expansion
        outputs.append((stride_so_far, x))
    return outputs


def resnet(x, arch: str = "resnet50", **kwargs) -> Dict[int, "keras.KerasTensor"]:
    """Applies a ResNet to ``x``; returns ``{stride: feature}``.

    With dilation several stages share a stride; the dict holds the deepest feature at each
    stride, e.g. ``{2: conv1, 4: conv2, 8: conv5}`` at ``output_stride=8`` and
    ``{2: .., 4: .., 8: .., 16: .., 32: conv5}`` at 32. Arguments are those of
    :func:`resnet_stages`.
    """
    return dict(resnet_stages(x, arch, **kwargs))


def build_resnet_backbone(
    arch: str = "resnet50", input_shape=(None, None, 3), **kwargs
) -> keras.Model:
    """A standalone ResNet backbone model whose outputs are the five entries of :func:`resnet_stages`.

    Its weights file (``model.save_weights("r18.weights.h5")``) is what ``backbone_weights``
    takes for ResNet-18/34, which keras.applications does not provide.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    stages = resnet_stages(inputs, arch, **kwargs)
    return keras.Model(inputs, [t for _, t in stages], name=arch)


def _reference_model(arch: str, weights) -> keras.Model:
    """The full-size reference backbone with ``weights`` loaded: keras.applications or ours."""
    spec = RESNET_ARCHS[arch]
    if weights == "imagenet":
        fname = f"{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5"
        try:
            weights = keras.utils.get_file(
                fname, _KERAS_APPS_URL + fname, cache_subdir="models", file_hash=spec.notop_hash
            )
        except Exception as err:  # pylint: disable=broad-except  (any download failure)
            raise ValueError(
                f"Could not download the ImageNet weights of {arch} from {_KERAS_APPS_URL + fname} "
                f"(is there network access?). Download that file where there is network and pass its "
                f"path, or use backbone_weights=None. Received: backbone_weights='imagenet'. "
                f"Cause: {err}"
            ) from err
    elif not os.path.exists(str(weights)):
        raise ValueError(f"backbone weights file not found. Received: backbone_weights={weights!r}")
    if spec.keras_app is not None:
        ref = getattr(keras.applications, spec.keras_app)(include_top=False, weights=None)
    else:
        ref = build_resnet_backbone(arch)
    try:
        ref.load_weights(str(weights))
    except Exception as err:  # pylint: disable=broad-except  (h5py / keras mismatch errors)
        source = f"keras.applications.{spec.keras_app}(include_top=False)" if spec.keras_app else (
            f"build_resnet_backbone({arch!r})"
        )
        raise ValueError(
            f"backbone_weights is not a weights file of {source}. "
            f"Received: backbone_weights={weights!r}. Cause: {err}"
        ) from err
    return ref


def load_resnet_weights(model: keras.Model, arch: str, weights) -> keras.Model:
    """Copies backbone weights into ``model``'s ResNet layers, matching layers by name.

    Args:
      model: a model containing a :func:`resnet` backbone built with the standard blocks/width.
      arch: the backbone's architecture key.
      weights: ``None`` (no-op); ``"imagenet"`` (ResNet-50/101: the keras.applications notop
        file, downloaded once into ``~/.keras/models``; inputs then follow
        ``keras.applications.resnet.preprocess_input``); or a path to a weights file of
        ``keras.applications.ResNet50/101(include_top=False)`` (``.weights.h5`` or the legacy
        ``.h5``) or, for ResNet-18/34, of :func:`build_resnet_backbone`.

    Returns:
      ``model``, with every weighted backbone layer set.

    Raises:
      ValueError: if the weights cannot be obtained or a layer is missing or mis-shaped.
    """
    if weights is None:
        return model
    return copy_weights_by_name(model, _reference_model(arch, weights), weights, f" ({arch})")
