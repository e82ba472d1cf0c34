"""TensorBoard writers of the training loop: scalars and PNG images, with core TF ops only."""

from __future__ import annotations

import tensorflow as tf


_SCALAR_METADATA = None


def write_scalar(name: str, value: float, step: int) -> None:
    """Writes a TensorBoard scalar with core TF ops (no dependency on the tensorboard package)."""
    global _SCALAR_METADATA  # pylint: disable=global-statement
    if _SCALAR_METADATA is None:
        from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel

        _SCALAR_METADATA = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        ).SerializeToString()
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=_SCALAR_METADATA)


def write_png(name: str, png: bytes, step: int) -> None:
    """Writes a PNG as a TensorBoard image with core TF ops (the image plugin's
    ``[width, height, encoded]`` string tensor; no dependency on the tensorboard package)."""
    from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="images")).SerializeToString()
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"write_png({name!r}) needs PNG bytes. Received: {png[:8]!r}...")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the IHDR chunk
    tensor = tf.constant([str(width).encode(), str(height).encode(), png], tf.string)
    tf.summary.write(name, tensor, step=step, metadata=metadata)
