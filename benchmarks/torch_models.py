"""PyTorch twins of keras_seg's U-Net, FCN-8s and ENet, for side-by-side speed comparisons.

:class:`TorchUNet` mirrors :func:`keras_seg.models.unet.build_unet`, :class:`TorchFCN8s`
:func:`keras_seg.models.fcn.build_fcn8s` and :class:`TorchENet`
:func:`keras_seg.models.enet.build_enet`: the same layers with the same shapes, in the same
order, with the same padding and crops, so both hold the same parameters and
:func:`copy_keras_weights` makes them compute the same logits (NCHW here, NHWC in Keras).

Every module that holds weights is an attribute named like the Keras layer it mirrors
(``enc1_1_conv``, ``block1_conv1``, ``upscore2``, ``bottleneck2_2_conv2``, ...): the copy
matches them by name.

Where PyTorch writes the same computation differently, the twin is written as a PyTorch
user would, with numerically identical results:

* FCN's ``block1_conv1`` pads by 100 inside the convolution (``padding=100``, Caffe's
  ``pad: 100``); Keras has a ``ZeroPadding2D(100)`` layer and then a valid convolution.
* Ceil-mode pooling is ``nn.MaxPool2d(2, 2, ceil_mode=True)``; Keras uses
  ``MaxPooling2D(2, 2, padding="same")``. Both give ``ceil(n / 2)`` outputs and the last
  window of an odd side covers the last element only (TF's padding never wins a max).
* Batch norm: PyTorch's ``momentum`` weights the new batch statistic, Keras' the old moving
  value, so Keras 0.9 is PyTorch 0.1; ``eps`` is set to keras_seg's 1e-3 (PyTorch's
  default is 1e-5). Keras' ``synchronized=True`` is plain batch norm on one device.
* ReLUs run in place, as in torchvision; the values are the same.
* TensorFlow's ``"same"`` padding puts the odd extra pixel of a strided convolution at the
  bottom/right, which ``nn.Conv2d(padding=...)`` cannot express: :class:`Conv2dSame` pads
  like TensorFlow (timm's ``Conv2dSame``), and :class:`ConvTranspose2dSame` crops the full
  transposed convolution as ``Conv2DTranspose(padding="same")`` does.
* ENet's argmax pooling and unpooling are ``F.max_pool2d(return_indices=True)`` and
  ``F.max_unpool2d``. Their indices count positions within one channel (``y * W + x``);
  keras_seg's also fold in the channel (``(y * W + x) * C + c``). Both take the first
  maximum of a window in row-major order, so ties pick the same position; the channel
  zero-padding of the downsampling shortcut is ``F.pad``.
* ``PReLU(shared_axes=[1, 2])`` (Keras alpha ``(1, 1, C)``) is ``nn.PReLU(C)`` (weight ``(C,)``).
  Keras initialises the slopes to 0, PyTorch to 0.25; the copy overwrites them.
* ``SpatialDropout2D`` is ``nn.Dropout2d``: whole channels per image, the same rate and
  scaling; the random masks differ, so only inference and dropout-free training match.
* In training, PyTorch's batch norm updates ``running_var`` with the unbiased batch
  variance (``n / (n - 1)`` times Keras' biased one). The normalisation itself, and so the
  loss and gradients, use the biased variance on both sides.

Keras' ``count_params`` also counts batch norm's moving mean and variance (non-trainable
weights), which PyTorch keeps as buffers: :func:`keras_style_param_count` counts them too.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import keras
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keras_seg.models.backbones.vgg import VGG16_BLOCKS, check_vgg_blocks
from keras_seg.models.blocks import bilinear_kernel
from keras_seg.models.enet import check_enet_options, stage23_plan
from keras_seg.models.fcn import FCN_CROP_OFFSETS
from keras_seg.models.unet import valid_unet_output_size

__all__ = [
    "TorchUNet", "TorchFCN8s", "TorchENet", "Conv2dSame", "ConvTranspose2dSame", "copy_keras_weights",
    "keras_style_param_count",
]

# keras_seg.models.blocks.batch_norm: Keras momentum 0.9 (PyTorch 0.1), epsilon 1e-3.
_BN_MOMENTUM = 0.1
_BN_EPS = 1e-3


def keras_style_param_count(module: nn.Module) -> int:
    """Parameters plus batch-norm running mean and variance: what Keras' ``count_params`` counts."""
    total = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            total += m.running_mean.numel() + m.running_var.numel()
    return total


def _crop(x: torch.Tensor, top: int, left: int, height: int, width: int, name: str) -> torch.Tensor:
    """``x[..., top:top+height, left:left+width]``; raises like Keras' CropLike if ``x`` is too small."""
    if x.shape[-2] < top + height or x.shape[-1] < left + width:
        raise ValueError(
            f"{name}: tensor too small to crop to the reference size. Received: x shape "
            f"{tuple(x.shape)}, offset ({top}, {left}), size ({height}, {width})"
        )
    return x[..., top:top + height, left:left + width]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
    """TensorFlow's ``"same"`` padding of one side: ``(before, after)``, the extra pixel after."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``"same"`` padding at any stride and input size.

    Keras' ``Conv2D(padding="same", strides=2)`` pads an odd total with the extra row and
    column at the bottom/right; ``nn.Conv2d(padding=k // 2)`` pads both sides equally and
    so samples other windows. This module pads like TensorFlow before a valid convolution,
    as timm's ``Conv2dSame`` does; the padding is computed from the run-time size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (
            _same_pads(int(n), k, s, d)
            for n, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation)
        )
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvTranspose2dSame(nn.ConvTranspose2d):
    """Keras' ``Conv2DTranspose(padding="same")``: output ``stride`` times the input size.

    TensorFlow computes the full transposed convolution (``(n - 1) * s + k`` per side) and
    drops ``(k - s) // 2`` leading and the remaining trailing rows/columns (for ENet's 3x3
    stride-2 decoder convolution: the last one). ``nn.ConvTranspose2d(padding=1,
    output_padding=1)`` would drop the first instead, a one-pixel shift.

    Raises:
      ValueError: a kernel smaller than the stride (not needed here, not implemented).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        if any(k < s for k, s in zip(self.kernel_size, self.stride)):
            raise ValueError(f"kernel_size must be >= stride. Received: kernel_size={kernel_size!r}, stride={stride!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (sh, sw) = x.shape[-2:], self.stride
        top, left = ((k - s) // 2 for k, s in zip(self.kernel_size, self.stride))
        return super().forward(x)[..., top:top + h * sh, left:left + w * sw]


class TorchUNet(nn.Module):
    """U-Net (Ronneberger et al., 2015, https://arxiv.org/abs/1505.04597), as keras_seg builds it.

    Args:
      num_classes: number of classes of the logits.
      in_channels: channels of the input.
      base_width: filters of the first level; level ``i`` has ``base_width * 2**i``.
      depth: number of 2x2 poolings.
      batch_norm: batch norm after every 3x3 convolution (which then has no bias).
      dropout: dropout rate at the end of the contracting path; 0 disables it.
      padding: ``"same"``: the input is zero-padded at the bottom/right to a multiple of
        ``2**depth`` and the logits are cropped back; ``"valid"``: the paper's unpadded
        network with centre-cropped skips.

    Raises:
      ValueError: for invalid options.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, *, base_width: int = 64, depth: int = 4,
                 batch_norm: bool = False, dropout: float = 0.5, padding: str = "same"):
        super().__init__()
        for arg, value in (("num_classes", num_classes), ("in_channels", in_channels),
                           ("base_width", base_width), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1. Received: {arg}={value!r}")
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid'. Received: padding={padding!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
        self.depth, self.padding, self.batch_norm = depth, padding, batch_norm
        conv_pad = 1 if padding == "same" else 0

        def double_conv(name: str, c_in: int, c_out: int) -> int:
            for k in (1, 2):
                self.add_module(f"{name}_{k}_conv", nn.Conv2d(
                    c_in if k == 1 else c_out, c_out, 3, padding=conv_pad, bias=not batch_norm))
                if batch_norm:
                    self.add_module(f"{name}_{k}_bn", _bn(c_out))
            return c_out

        prev = in_channels
        for i in range(depth):
            prev = double_conv(f"enc{i + 1}", prev, base_width * 2**i)
        prev = double_conv("bottleneck", prev, base_width * 2**depth)
        self.bottleneck_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        for i in reversed(range(depth)):
            filters = base_width * 2**i
            self.add_module(f"dec{i + 1}_up", nn.ConvTranspose2d(prev, filters, 2, stride=2))
            prev = double_conv(f"dec{i + 1}", 2 * filters, filters)
        self.logits_name = "logits_full" if padding == "same" else "logits"
        self.add_module(self.logits_name, nn.Conv2d(prev, num_classes, 1))

    def _conv_bn_relu(self, x: torch.Tensor, name: str) -> torch.Tensor:
        x = getattr(self, f"{name}_conv")(x)
        if self.batch_norm:
            x = getattr(self, f"{name}_bn")(x)
        return F.relu(x, inplace=True)

    def _double_conv(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self._conv_bn_relu(self._conv_bn_relu(x, f"{name}_1"), f"{name}_2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes, H', W')``; ``H' = H`` with ``padding="same"``."""
        h, w = x.shape[-2:]
        if self.padding == "same":
            m = 2**self.depth
            x = F.pad(x, (0, -w % m, 0, -h % m))
        else:
            for side in (h, w):
                valid_unet_output_size(int(side), self.depth)  # raises with the nearest sizes
        skips: List[torch.Tensor] = []
        for i in range(1, self.depth + 1):
            x = self._double_conv(x, f"enc{i}")
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck_dropout(self._double_conv(x, "bottleneck"))
        for i in reversed(range(1, self.depth + 1)):
            x = F.relu(getattr(self, f"dec{i}_up")(x), inplace=True)
            skip = skips[i - 1]
            if self.padding == "valid":  # Keras' CenterCropLike
                top = (skip.shape[-2] - x.shape[-2]) // 2
                left = (skip.shape[-1] - x.shape[-1]) // 2
                skip = _crop(skip, top, left, x.shape[-2], x.shape[-1], f"dec{i}_crop")
            x = self._double_conv(torch.cat([skip, x], dim=1), f"dec{i}")
        x = getattr(self, self.logits_name)(x)
        return x[..., :h, :w] if self.padding == "same" else x


class TorchFCN8s(nn.Module):
    """FCN-8s (Long et al., 2015, https://arxiv.org/abs/1411.4038), as keras_seg builds it.

    VGG16 with ceil-mode pooling and 100 pixels of padding before ``block1_conv1``,
    ``fc6`` (7x7) and ``fc7`` (1x1) with ReLU and dropout, 1x1 class scorers and bias-free
    transposed convolutions initialised to bilinear upsampling; the skips are cropped at
    the reference offsets 5 and 9 and the logits at 31.

    Args:
      num_classes: number of classes of the logits.
      in_channels: channels of the input.
      blocks: VGG ``(filters, convolutions)`` per block; five blocks.
      fc_channels: filters of ``fc6`` and ``fc7``.
      dropout: dropout rate after ``fc6`` and ``fc7``; 0 disables it.
      upsampling_trainable: ``"intermediate"`` (``upscore2`` and ``upscore_pool4`` learn,
        ``upscore8`` is frozen), ``"none"`` or ``"all"``: which transposed convolutions
        have ``requires_grad``.
      zero_init_scores: zero-initialise the 1x1 scorers (else PyTorch's default init).

    Raises:
      ValueError: for invalid options.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, *,
                 blocks: Sequence[Tuple[int, int]] = VGG16_BLOCKS, fc_channels: int = 4096,
                 dropout: float = 0.5, upsampling_trainable: str = "intermediate",
                 zero_init_scores: bool = True):
        super().__init__()
        blocks = check_vgg_blocks(blocks)
        if len(blocks) != 5:
            raise ValueError(f"FCN needs VGG16's five pooling stages. Received: blocks={blocks!r}")
        if upsampling_trainable not in ("intermediate", "none", "all"):
            raise ValueError("upsampling_trainable must be 'intermediate', 'none' or 'all'. "
                             f"Received: upsampling_trainable={upsampling_trainable!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
        self.blocks = blocks
        prev = in_channels
        for i, (filters, convs) in enumerate(blocks, start=1):
            for j in range(1, convs + 1):
                pad = 100 if (i, j) == (1, 1) else 1  # Keras: ZeroPadding2D(100) + valid conv
                self.add_module(f"block{i}_conv{j}", nn.Conv2d(prev, filters, 3, padding=pad))
                prev = filters
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.fc6_conv = nn.Conv2d(prev, fc_channels, 7)
        self.fc6_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc7_conv = nn.Conv2d(fc_channels, fc_channels, 1)
        self.fc7_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.score_pool4 = nn.Conv2d(blocks[3][0], num_classes, 1)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.score_pool3 = nn.Conv2d(blocks[2][0], num_classes, 1)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, bias=False)

        with torch.no_grad():
            for up in (self.upscore2, self.upscore_pool4, self.upscore8):
                filt = torch.as_tensor(bilinear_kernel(up.kernel_size[0]), dtype=up.weight.dtype)
                up.weight.zero_()
                for c in range(num_classes):
                    up.weight[c, c].copy_(filt)
            if zero_init_scores:
                for score in (self.score_fr, self.score_pool4, self.score_pool3):
                    score.weight.zero_()
                    score.bias.zero_()
        self.upscore2.weight.requires_grad_(upsampling_trainable != "none")
        self.upscore_pool4.weight.requires_grad_(upsampling_trainable != "none")
        self.upscore8.weight.requires_grad_(upsampling_trainable == "all")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes, H, W)``, for every ``H, W >= 1``."""
        h, w = x.shape[-2:]
        pools: Dict[int, torch.Tensor] = {}
        for i, (_, convs) in enumerate(self.blocks, start=1):
            for j in range(1, convs + 1):
                x = F.relu(getattr(self, f"block{i}_conv{j}")(x), inplace=True)
            x = self.pool(x)
            pools[i] = x
        x = self.fc6_dropout(F.relu(self.fc6_conv(x), inplace=True))
        x = self.fc7_dropout(F.relu(self.fc7_conv(x), inplace=True))
        x = self.upscore2(self.score_fr(x))
        off4, off3, off_out = FCN_CROP_OFFSETS[8]
        skip = _crop(self.score_pool4(pools[4]), off4, off4, x.shape[-2], x.shape[-1], "score_pool4c")
        x = self.upscore_pool4(x + skip)
        skip = _crop(self.score_pool3(pools[3]), off3, off3, x.shape[-2], x.shape[-1], "score_pool3c")
        x = self.upscore8(x + skip)
        return _crop(x, off_out, off_out, h, w, "logits")


class TorchENet(nn.Module):
    """ENet (Paszke et al., 2016, https://arxiv.org/abs/1606.02147), as keras_seg builds it.

    The input is zero-padded at the bottom/right to a multiple of 8 and the logits cropped
    back. Initial block (3x3 stride-2 convolution concatenated with 2x2 max pooling, BN,
    PReLU); encoder bottlenecks with PReLU and spatial dropout (downsampling ones: 2x2
    stride-2 projection, and a shortcut of argmax max pooling zero-padded to the output
    channels); decoder bottlenecks with ReLU (upsampling ones: a 3x3 stride-2 transposed
    convolution, and a shortcut of 1x1 convolution + BN max-unpooled with the encoder's
    indices); a 2x2 stride-2 transposed convolution to the classes.

    Args:
      num_classes: number of classes of the logits.
      in_channels: channels of the input.
      widths: maps after the initial block, stage 1 and stages 2-3; the decoder mirrors them.
      stage1_blocks: bottlenecks after bottleneck1.0.
      stage23_blocks: bottlenecks after bottleneck2.0 (:func:`keras_seg.models.enet.stage23_plan`).
      stage4_blocks: bottlenecks after bottleneck4.0.
      stage5_blocks: bottlenecks after bottleneck5.0.

    Raises:
      ValueError: for invalid options, as :func:`keras_seg.models.enet.build_enet`.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, *, widths: Sequence[int] = (16, 64, 128),
                 stage1_blocks: int = 4, stage23_blocks: int = 16, stage4_blocks: int = 2, stage5_blocks: int = 1):
        super().__init__()
        for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1. Received: {arg}={value!r}")
        w0, w1, w2 = check_enet_options(widths, in_channels, stage1_blocks=stage1_blocks,
                                        stage23_blocks=stage23_blocks, stage4_blocks=stage4_blocks,
                                        stage5_blocks=stage5_blocks)
        self.initial_conv = Conv2dSame(in_channels, w0 - in_channels, 3, stride=2)
        self.initial_bn = _bn(w0)
        self.initial_prelu = nn.PReLU(w0)
        # (name, kind, size, downsample) and (name, upsample), in the order Keras builds them.
        self.encoder: List[Tuple[str, str, int, bool]] = []
        self.decoder: List[Tuple[str, bool]] = []
        prev = w0
        for name, filters, kind, size, down, dropout in (
            [("bottleneck1_0", w1, "regular", 3, True, 0.01)]
            + [(f"bottleneck1_{i}", w1, "regular", 3, False, 0.01) for i in range(1, stage1_blocks + 1)]
            + [("bottleneck2_0", w2, "regular", 3, True, 0.1)]
            + [(name, w2, kind, size, False, 0.1) for name, kind, size in stage23_plan(stage23_blocks)]
        ):
            self._add_encoder_bottleneck(name, prev, filters, kind, size, down, dropout)
            self.encoder.append((name, kind, size, down))
            prev = filters
        for name, filters, up in (
            [("bottleneck4_0", w1, True)] + [(f"bottleneck4_{i}", w1, False) for i in range(1, stage4_blocks + 1)]
            + [("bottleneck5_0", w0, True)] + [(f"bottleneck5_{i}", w0, False) for i in range(1, stage5_blocks + 1)]
        ):
            self._add_decoder_bottleneck(name, prev, filters, up)
            self.decoder.append((name, up))
            prev = filters
        self.fullconv = nn.ConvTranspose2d(prev, num_classes, 2, stride=2)

    def _add_encoder_bottleneck(self, name, c_in, filters, kind, size, downsample, dropout):
        internal = filters // 4
        if downsample:
            self.add_module(f"{name}_conv1", Conv2dSame(c_in, internal, 2, stride=2, bias=False))
        else:
            self.add_module(f"{name}_conv1", nn.Conv2d(c_in, internal, 1, bias=False))
        self.add_module(f"{name}_bn1", _bn(internal))
        self.add_module(f"{name}_1_prelu", nn.PReLU(internal))
        if kind == "asymmetric":
            pad = size // 2
            self.add_module(f"{name}_conv2a", nn.Conv2d(internal, internal, (1, size), padding=(0, pad), bias=False))
            self.add_module(f"{name}_conv2b", nn.Conv2d(internal, internal, (size, 1), padding=(pad, 0)))
        else:
            dilation = size if kind == "dilated" else 1
            self.add_module(f"{name}_conv2", nn.Conv2d(internal, internal, 3, padding=dilation, dilation=dilation))
        self.add_module(f"{name}_bn2", _bn(internal))
        self.add_module(f"{name}_2_prelu", nn.PReLU(internal))
        self.add_module(f"{name}_conv3", nn.Conv2d(internal, filters, 1, bias=False))
        self.add_module(f"{name}_bn3", _bn(filters))
        self.add_module(f"{name}_dropout", nn.Dropout2d(dropout))
        self.add_module(f"{name}_out_prelu", nn.PReLU(filters))

    def _add_decoder_bottleneck(self, name, c_in, filters, upsample):
        internal = filters // 4
        self.add_module(f"{name}_conv1", nn.Conv2d(c_in, internal, 1, bias=False))
        self.add_module(f"{name}_bn1", _bn(internal))
        if upsample:
            self.add_module(f"{name}_conv2", ConvTranspose2dSame(internal, internal, 3, stride=2))
        else:
            self.add_module(f"{name}_conv2", nn.Conv2d(internal, internal, 3, padding=1))
        self.add_module(f"{name}_bn2", _bn(internal))
        self.add_module(f"{name}_conv3", nn.Conv2d(internal, filters, 1, bias=False))
        self.add_module(f"{name}_bn3", _bn(filters))
        if upsample or c_in != filters:
            self.add_module(f"{name}_main_conv", nn.Conv2d(c_in, filters, 1, bias=False))
            self.add_module(f"{name}_main_bn", _bn(filters))

    def _run(self, x: torch.Tensor, name: str, *ops: str) -> torch.Tensor:
        """Applies the modules ``{name}_{op}`` in order."""
        for op in ops:
            x = getattr(self, f"{name}_{op}")(x)
        return x

    def _encoder_bottleneck(self, x, name, kind, downsample):
        y = self._run(x, name, "conv1", "bn1", "1_prelu")
        y = self._run(y, name, *(("conv2a", "conv2b") if kind == "asymmetric" else ("conv2",)))
        y = self._run(y, name, "bn2", "2_prelu", "conv3", "bn3", "dropout")
        indices = None
        if downsample:
            x, indices = F.max_pool2d(x, 2, return_indices=True)
            x = F.pad(x, (0, 0, 0, 0, 0, y.shape[1] - x.shape[1]))  # PadChannels
        return self._run(x + y, name, "out_prelu"), indices

    def _decoder_bottleneck(self, x, name, indices):
        y = F.relu(self._run(x, name, "conv1", "bn1"), inplace=True)
        y = F.relu(self._run(y, name, "conv2", "bn2"), inplace=True)
        y = self._run(y, name, "conv3", "bn3")
        if hasattr(self, f"{name}_main_conv"):
            x = self._run(x, name, "main_conv", "main_bn")
            if indices is not None:
                x = F.max_unpool2d(x, indices, 2)
        return F.relu(x + y, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes, H, W)``, for every ``H, W >= 1``."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 8, 0, -h % 8))
        x = torch.cat([self.initial_conv(x), F.max_pool2d(x, 2)], dim=1)
        x = self.initial_prelu(self.initial_bn(x))
        pooled: List[torch.Tensor] = []
        for name, kind, _, down in self.encoder:
            x, indices = self._encoder_bottleneck(x, name, kind, down)
            if down:
                pooled.append(indices)
        for name, up in self.decoder:
            x = self._decoder_bottleneck(x, name, pooled.pop() if up else None)
        return self.fullconv(x)[..., :h, :w]


def _torch_weights(layer, module: nn.Module, where: str) -> List[Tuple[str, torch.Tensor, np.ndarray, bool]]:
    """``(what, torch tensor, value in torch layout, learnable in Keras)`` of one Keras layer.

    Raises:
      ValueError: the module is not the Keras layer's counterpart.
    """

    def need(ok: bool, what: str):
        if not ok:
            raise ValueError(f"{where}: {what}")

    def kernel_and_bias(conv_kind: str):
        k = layer.kernel.numpy()
        # Conv2D kernel (kh, kw, in, out) -> (out, in, kh, kw); Conv2DTranspose kernel
        # (kh, kw, out, in) -> (in, out, kh, kw): the same permutation, no flip (both are
        # the gradient of a cross-correlation).
        out = [("kernel", module.weight, np.ascontiguousarray(k.transpose(3, 2, 0, 1)), layer.trainable)]
        need(layer.use_bias == (module.bias is not None),
             f"Keras use_bias={layer.use_bias}, torch {conv_kind} bias={module.bias is not None}")
        if layer.use_bias:
            out.append(("bias", module.bias, layer.bias.numpy(), layer.trainable))
        need(tuple(layer.strides) == tuple(module.stride),
             f"strides {tuple(layer.strides)} vs torch stride {tuple(module.stride)}")
        need(tuple(layer.dilation_rate) == tuple(module.dilation),
             f"dilation {tuple(layer.dilation_rate)} vs torch {tuple(module.dilation)}")
        return out

    if isinstance(layer, keras.layers.Conv2DTranspose):
        want = ConvTranspose2dSame if layer.padding == "same" else nn.ConvTranspose2d
        need(type(module) is want, f"Conv2DTranspose(padding={layer.padding!r}) needs {want.__name__}, "
             f"got {type(module).__name__}")
        need(tuple(module.padding) == (0, 0) and tuple(module.output_padding) == (0, 0)
             and tuple(module.dilation) == (1, 1) and layer.output_padding is None,
             f"padding {layer.padding!r}, output_padding {layer.output_padding} vs torch padding "
             f"{module.padding}, output_padding {module.output_padding}, dilation {module.dilation}")
        return kernel_and_bias(want.__name__)
    if isinstance(layer, keras.layers.Conv2D):
        need(type(module) in (nn.Conv2d, Conv2dSame),
             f"Conv2D needs nn.Conv2d or Conv2dSame, got {type(module).__name__}")
        need(layer.groups == module.groups, f"groups {layer.groups} vs torch {module.groups}")
        if type(module) is Conv2dSame:
            need(layer.padding == "same", f"Conv2dSame mirrors padding 'same', Keras has {layer.padding!r}")
        elif layer.padding == "same":  # a 'valid' one may have a ZeroPadding2D folded into torch's padding
            # Symmetric torch padding is TensorFlow's only at stride 1 with an even total (odd kernels).
            extent = tuple(d * (k - 1) for d, k in zip(layer.dilation_rate, layer.kernel_size))
            want = tuple(e // 2 for e in extent)
            need(tuple(module.padding) == want and max(layer.strides) == 1 and not any(e % 2 for e in extent),
                 f"padding 'same' needs torch padding {want} at stride 1 with odd kernels (else "
                 f"Conv2dSame), got padding {module.padding}, strides {layer.strides}, kernel {layer.kernel_size}")
        return kernel_and_bias(type(module).__name__)
    if isinstance(layer, keras.layers.PReLU):
        need(isinstance(module, nn.PReLU), f"PReLU needs nn.PReLU, got {type(module).__name__}")
        alpha = layer.alpha.numpy()
        need(sorted(layer.shared_axes or []) == [1, 2] and alpha.shape[:2] == (1, 1),
             f"only PReLU(shared_axes=[1, 2]), one slope per channel as nn.PReLU(C), has a torch "
             f"counterpart; Keras has shared_axes={layer.shared_axes}")
        return [("alpha", module.weight, np.ascontiguousarray(alpha.reshape(-1)), layer.trainable)]
    if isinstance(layer, keras.layers.BatchNormalization):
        need(isinstance(module, nn.BatchNorm2d), f"BatchNormalization needs nn.BatchNorm2d, got {type(module).__name__}")
        need(layer.axis in (-1, 3) and layer.center and layer.scale and module.affine and module.track_running_stats,
             "only channels-last batch norm with center, scale and running statistics is supported")
        need(abs(layer.epsilon - module.eps) < 1e-12, f"epsilon {layer.epsilon} vs torch eps {module.eps}")
        need(abs((1 - layer.momentum) - module.momentum) < 1e-9,
             f"momentum {layer.momentum} needs torch momentum {1 - layer.momentum:g}, got {module.momentum}")
        return [
            ("gamma", module.weight, layer.gamma.numpy(), layer.trainable),
            ("beta", module.bias, layer.beta.numpy(), layer.trainable),
            ("moving_mean", module.running_mean, layer.moving_mean.numpy(), False),
            ("moving_variance", module.running_var, layer.moving_variance.numpy(), False),
        ]
    raise ValueError(f"{where}: no PyTorch counterpart is known for Keras {type(layer).__name__} layers")


def copy_keras_weights(keras_model: keras.Model, torch_model: nn.Module) -> nn.Module:
    """Copies every weight of ``keras_model`` into the same-named modules of ``torch_model``.

    Convolution kernels go from Keras' HWIO (``Conv2DTranspose``: HW-out-in) to PyTorch's
    OIHW (``ConvTranspose2d``: in-out-HW); batch norm's gamma, beta, moving mean and
    variance go to ``weight``, ``bias``, ``running_mean``, ``running_var``; a per-channel
    PReLU's alpha ``(1, 1, C)`` goes to ``nn.PReLU``'s ``weight`` ``(C,)``. Everything is
    checked before anything is copied, so a mismatch leaves ``torch_model`` unchanged.

    Args:
      keras_model: a keras_seg model (``unet``, ``fcn8s``, ``enet``).
      torch_model: its twin (:class:`TorchUNet`, :class:`TorchFCN8s`, :class:`TorchENet`) built
        with the same options.

    Returns:
      ``torch_model``.

    Raises:
      ValueError: a Keras layer with weights has no same-named torch module or vice versa,
        a module of another kind, other shapes, strides, dilation, padding, batch-norm
        epsilon or momentum, or other trainability (``requires_grad``).
    """
    received = f"Received: keras_model={keras_model.name!r}, torch_model={type(torch_model).__name__}"
    layers = {layer.name: layer for layer in keras_model.layers if layer.weights}
    modules = {
        name: m for name, m in torch_model.named_modules()
        if name and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))
    }
    missing, extra = sorted(set(layers) - set(modules)), sorted(set(modules) - set(layers))
    if missing or extra:
        raise ValueError(
            f"The models do not have the same weighted layers: Keras only {missing}, torch only "
            f"{extra} (were they built with the same options?). {received}"
        )
    copies = []
    for name, layer in layers.items():
        where = f"Keras layer {name!r} ({type(layer).__name__}) vs torch module {type(modules[name]).__name__}"
        for what, target, value, learnable in _torch_weights(layer, modules[name], where):
            if tuple(target.shape) != value.shape:
                raise ValueError(
                    f"{where}: {what} has Keras shape {value.shape} (in torch layout), torch "
                    f"{tuple(target.shape)} (same num_classes, widths and input channels?). {received}"
                )
            if isinstance(target, nn.Parameter) and target.requires_grad != learnable:
                raise ValueError(
                    f"{where}: {what} is {'' if learnable else 'not '}trainable in Keras but has "
                    f"requires_grad={target.requires_grad} in torch. {received}"
                )
            copies.append((target, value))
    with torch.no_grad():
        for target, value in copies:
            target.copy_(torch.from_numpy(value))
    return torch_model
