"""Inference modes shared by evaluate and predict: whole image, sliding window, multi-scale and flip.

* ``whole``: one forward pass over the whole (preprocessed) image.
* ``slide``: windows of ``window`` (H, W) every ``stride`` (H, W); the last window of a row
  or column is moved back to end at the image border, so every pixel is covered, and the
  softmax probabilities of overlapping windows are averaged (mmsegmentation's ``slide``). A
  side shorter than the window is taken whole. For models whose output is smaller than their
  input (the U-Net paper's unpadded network, 572 -> 388), windows are the model's fixed input
  size and the image is mirror-padded by the margin: the U-Net paper's overlap-tile strategy.
* ``scales`` and ``flip``: the probabilities of the image resized by each scale (bilinear),
  and of its horizontal mirror when ``flip``, brought back to the input size and averaged:
  the multi-scale + flip testing of DeepLab, PSPNet and RefineNet.

Everything works on preprocessed float32 images ``(B, H, W, 3)`` and returns probabilities
``(B, H, W, C)`` at exactly the input size.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

from keras_seg.litert import tile_starts as window_starts  # starts every stride, the last flush with the end

MODES = ("whole", "slide")


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """How a model is run over an image (TensorFlow-free, so flag parsing needs no TF).

    Attributes:
      mode: ``whole`` or ``slide``.
      window: ``slide``: window ``(H, W)``; ignored for overlap-tile models, whose window is
        their input size.
      stride: ``slide``: step ``(H, W)`` between windows (default: two thirds of the window).
      scales: resize factors whose probabilities are averaged (``(1.0,)``: the image as is).
      flip: also average the horizontally mirrored image's (mirrored back) probabilities.
    """

    mode: str = "whole"
    window: Optional[Tuple[int, int]] = None
    stride: Optional[Tuple[int, int]] = None
    scales: Tuple[float, ...] = (1.0,)
    flip: bool = False

    def validate(self) -> "InferenceConfig":
        """Returns self; raises ValueError naming the bad setting."""
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}. Received: mode={self.mode!r}")
        if self.mode == "slide" and self.window is None:
            raise ValueError("--mode=slide needs --window=H,W (e.g. the training crop). Received: window=None")
        for name in ("window", "stride"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or min(value) < 1):
                raise ValueError(f"--{name} must be H,W with H, W >= 1. Received: {name}={value!r}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"--scales must be positive factors, e.g. 0.5,0.75,1,1.25. Received: scales={self.scales!r}")
        return self

    @property
    def plain(self) -> bool:
        """One whole-image pass: the model's own output, nothing averaged."""
        return self.mode == "whole" and tuple(self.scales) == (1.0,) and not self.flip

    def tag(self) -> str:
        """A file-name suffix: ``""`` for one whole pass, else e.g. ``"-slide352x480-s0.5_1_1.5-flip"``."""
        if self.plain:
            return ""
        out = ""
        if self.mode == "slide":
            out += f"-slide{self.window[0]}x{self.window[1]}" + (f"_{self.stride[0]}x{self.stride[1]}" if self.stride else "")
        if tuple(self.scales) != (1.0,):
            out += "-s" + "_".join(f"{s:g}" for s in self.scales)
        return out + ("-flip" if self.flip else "")

    def describe(self) -> str:
        """A short label, e.g. ``slide 352x480/240x320, scales 0.75,1,1.25, flip``."""
        parts = [self.mode if self.mode == "whole" else
                 f"slide {self.window[0]}x{self.window[1]}" + (f"/{self.stride[0]}x{self.stride[1]}" if self.stride else "")]
        if tuple(self.scales) != (1.0,):
            parts.append("scales " + ",".join(f"{s:g}" for s in self.scales))
        if self.flip:
            parts.append("flip")
        return ", ".join(parts)


def parse_pair(values: Optional[Sequence[str]], name: str) -> Optional[Tuple[int, int]]:
    """``["H", "W"]`` from a list flag to ``(H, W)``; ValueError naming the flag."""
    if not values:
        return None
    try:
        pair = tuple(int(v) for v in values)
    except ValueError as e:
        raise ValueError(f"--{name} must be H,W integers. Received: {name}={','.join(values)!r}") from e
    if len(pair) != 2:
        raise ValueError(f"--{name} must be H,W. Received: {name}={','.join(values)!r}")
    return pair


def parse_scales(values: Optional[Sequence[str]]) -> Tuple[float, ...]:
    """``["0.5", "1"]`` to ``(0.5, 1.0)``; empty: ``(1.0,)``."""
    if not values:
        return (1.0,)
    try:
        return tuple(float(v) for v in values)
    except ValueError as e:
        raise ValueError(f"--scales must be comma-separated numbers. Received: scales={','.join(values)!r}") from e


def make_probabilities(model) -> Callable[[tf.Tensor], tf.Tensor]:
    """``probs(x)``: the softmax of the model's logits (its first output), traced once per
    input rank and dtype, not per image size (``reduce_retracing``)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    @tf.function(reduce_retracing=True)
    def probs(x):
        out = model(x, training=False)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return tf.nn.softmax(tf.cast(out, tf.float32), axis=-1)

    return probs


def output_margin(model, size: Tuple[int, int]) -> Tuple[int, int]:
    """Per-side margin ``(mh, mw)`` the model crops off an input of ``size`` (0 for same-size models)."""
    shape = model.compute_output_shape((1, size[0], size[1], model.input_shape[-1]))
    shape = shape[0] if isinstance(shape, list) else shape
    return (size[0] - shape[1]) // 2, (size[1] - shape[2]) // 2


def _slide(probs, x, window: Tuple[int, int], stride: Tuple[int, int]) -> tf.Tensor:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    h, w = int(x.shape[1]), int(x.shape[2])
    wh, ww = min(window[0], h), min(window[1], w)
    sh, sw = stride
    acc, count = None, None
    for y in window_starts(h, wh, sh):
        for x0 in window_starts(w, ww, sw):
            p = probs(x[:, y : y + wh, x0 : x0 + ww])
            pad = [[0, 0], [y, h - y - wh], [x0, w - x0 - ww], [0, 0]]
            acc = tf.pad(p, pad) if acc is None else acc + tf.pad(p, pad)
            ones = tf.pad(tf.ones((1, wh, ww, 1)), pad)
            count = ones if count is None else count + ones
    return acc / count


def _mirror_pad(x, top: int, bottom: int, left: int, right: int) -> tf.Tensor:
    """Mirror padding of any width (repeated where it exceeds the image side)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    while top or bottom or left or right:
        h, w = int(x.shape[1]), int(x.shape[2])
        t, b, l, r = min(top, h), min(bottom, h), min(left, w), min(right, w)
        x = tf.pad(x, [[0, 0], [t, b], [l, r], [0, 0]], mode="SYMMETRIC")
        top, bottom, left, right = top - t, bottom - b, left - l, right - r
    return x


def _overlap_tile(probs, x, tile: Tuple[int, int], margin: Tuple[int, int]) -> tf.Tensor:
    """The U-Net paper's overlap-tile: output tiles of ``tile - 2 margin`` from mirror-padded input tiles."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    h, w = int(x.shape[1]), int(x.shape[2])
    mh, mw = margin
    oh, ow = tile[0] - 2 * mh, tile[1] - 2 * mw
    rows, cols = -(-h // oh) * oh, -(-w // ow) * ow  # output canvas: whole tiles
    padded = _mirror_pad(x, mh, mh + rows - h, mw, mw + cols - w)
    out = []
    for y in range(0, rows, oh):
        out.append(tf.concat([probs(padded[:, y : y + tile[0], x0 : x0 + tile[1]]) for x0 in range(0, cols, ow)], axis=2))
    return tf.concat(out, axis=1)[:, :h, :w]


def _one_pass(probs, model, x, cfg: InferenceConfig) -> tf.Tensor:
    if cfg.mode == "whole":
        return probs(x)
    fixed = model.input_shape[1:3]
    if None not in fixed:
        margin = output_margin(model, fixed)
        if margin != (0, 0):
            return _overlap_tile(probs, x, tuple(fixed), margin)
    window = cfg.window
    stride = cfg.stride or (max(1, 2 * window[0] // 3), max(1, 2 * window[1] // 3))
    return _slide(probs, x, window, stride)


def predict_probabilities(model, images, cfg: InferenceConfig = InferenceConfig(),
                          probs: Optional[Callable[[tf.Tensor], tf.Tensor]] = None) -> tf.Tensor:
    """Class probabilities ``(B, H, W, C)`` of preprocessed ``images`` ``(B, H, W, 3)`` under ``cfg``.

    ``probs`` is a :func:`make_probabilities` of ``model`` to reuse across calls (one trace).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    cfg.validate()
    probs = probs or make_probabilities(model)
    x = tf.convert_to_tensor(images, tf.float32)
    h, w = int(x.shape[1]), int(x.shape[2])
    total, n = None, 0
    for scale in cfg.scales:
        size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
        xs = x if size == (h, w) else tf.image.resize(x, size, method="bilinear")
        for flipped in ((False, True) if cfg.flip else (False,)):
            p = _one_pass(probs, model, tf.reverse(xs, [2]) if flipped else xs, cfg)
            if flipped:
                p = tf.reverse(p, [2])
            if size != (h, w):
                p = tf.image.resize(p, (h, w), method="bilinear")
            total = p if total is None else total + p
            n += 1
    return total / float(n)
