"""keras_seg: semantic segmentation architectures, data, training and export for Keras 3.

Public API::

    import keras_seg
    model = keras_seg.build_model("unet", num_classes=12)
    keras_seg.list_models()
    keras_seg.tiny_options("unet")
"""

from __future__ import annotations

__version__ = "0.1.0"

# Before anything imports TensorFlow: glibc malloc without per-step mmap/munmap (keras_seg._alloc).
from keras_seg import _alloc

_alloc.configure()

from keras_seg._deps import require_tensorflow as _require_tensorflow  # noqa: E402

_require_tensorflow()

from keras_seg.registry import get_builder, get_spec, list_models, tiny_options  # noqa: E402


def build_model(name: str, num_classes: int, input_shape=(None, None, 3), **options):
    """Builds the registered model ``name``.

    Args:
      name: a key of :func:`list_models`, e.g. ``"unet"``.
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H`` and ``W`` may be ``None`` for any size.
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
    return spec.builder(num_classes, input_shape=tuple(input_shape), **options)


__all__ = ["build_model", "get_builder", "get_spec", "list_models", "tiny_options", "__version__"]
