"""keras_seg: semantic segmentation architectures, data, training and export for Keras 3.

Public API::

    import keras_seg
    model = keras_seg.build_model("unet", num_classes=12)
    keras_seg.list_models()
    keras_seg.tiny_options("unet")
    model = keras_seg.build_model("enet", num_classes=11, weights="camvid")  # shipped weights
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Before anything imports TensorFlow: glibc malloc without per-step mmap/munmap (keras_seg._alloc).
from keras_seg import _alloc

_alloc.configure()

from keras_seg._deps import require_tensorflow as _require_tensorflow  # noqa: E402

_require_tensorflow()

from keras_seg.registry import get_builder, get_spec, list_models, tiny_options  # noqa: E402


def build_model(name: str, num_classes: int, input_shape=(None, None, 3), weights=None, **options):
    """Builds the registered model ``name``, optionally with shipped trained weights.

    Args:
      name: a key of :func:`list_models`, e.g. ``"unet"``.
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H`` and ``W`` may be ``None`` for any size.
      weights: ``None`` (random initialisation), a path to a ``.weights.h5`` file of the
        whole model, or shipped weights: a dataset, e.g. ``"camvid"`` for ``enet_camvid``, or
        an entry name of :func:`keras_seg.pretrained.available`. A shipped entry's options are
        used; ``num_classes`` and any ``options`` given must agree with them. Its class
        names, palette and input preprocessing are in ``keras_seg.pretrained.read_info(name)``.
      **options: architecture options; see the builder's docstring
        (``help(keras_seg.get_builder(name))``).

    Returns:
      A functional ``keras.Model`` returning float32 logits ``(B, H, W, num_classes)``.

    Raises:
      ValueError: for an unknown name or option (the message lists the valid ones) and for
        invalid argument values.
    """
    from keras_seg.registry import check_options  # pylint: disable=import-outside-toplevel

    spec = get_spec(name)
    check_options(name, options)
    if weights is None or str(weights).endswith(".h5") or os.sep in str(weights):
        return spec.build(num_classes, input_shape, weights=weights, **options)
    from keras_seg import pretrained  # pylint: disable=import-outside-toplevel

    entry = pretrained.resolve(name, weights)
    info = pretrained.read_info(entry)
    if num_classes != info["num_classes"]:
        raise ValueError(f"the shipped weights {entry!r} have {info['num_classes']} classes "
                         f"({', '.join(info['class_names'])}). Pass num_classes={info['num_classes']}, or "
                         f"weights=None to train {num_classes} classes. Received: num_classes={num_classes}")
    differ = {k: v for k, v in options.items() if info["model_options"].get(k, spec.defaults().get(k)) != v}
    if differ:
        raise ValueError(f"the shipped weights {entry!r} were trained with options {info['model_options']} "
                         f"(defaults otherwise); these differ: {differ}. Received: {options}")
    model = spec.build(num_classes, input_shape, **dict(info["model_options"], **options))
    pretrained.load_weights_into(model, entry)
    return model


__all__ = ["build_model", "get_builder", "get_spec", "list_models", "tiny_options", "__version__"]
