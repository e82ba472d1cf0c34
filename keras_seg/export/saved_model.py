"""The serving SavedModel: its signatures, its metadata and the float32 check of every export.

SavedModel signatures (all apply the model's input preprocessing, ``model_config.json``'s
``"preprocessing"``, with :func:`keras_seg.data.preprocess.normalize_image`; the metadata
JSON records it):

* ``serving_default``: ``images`` uint8 ``(B, H, W, 3)`` RGB, any H and W ->
  ``class_ids`` uint8 ``(B, H, W)``, ``probabilities`` float32 ``(B, H, W, C)`` (softmax).
* ``serving_bytes``: ``image_bytes`` string ``(B,)`` of PNG/JPEG/BMP/GIF files, which may
  differ in size. Each image is decoded (3 channels) and run alone at its own size; the
  outputs are padded at the bottom/right to the batch's largest image (``class_ids`` with
  the ignore label, ``probabilities`` with 0) and ``image_size`` int32 ``(B, 2)`` gives each
  image's (H, W), so ``class_ids[i, :h, :w]`` is image i. A batch of one is not padded.
* ``metadata``: ``request`` int32 scalar (any value; TF Serving's REST API cannot call a
  signature without inputs, tensorflow/serving#1676) -> ``class_names`` string ``(C,)``,
  ``palette`` int32 ``(C, 3)``, ``ignore_label`` and ``num_classes`` int32 scalars.
"""

from __future__ import annotations

import os
from typing import Any, Dict

METADATA_FILE = "keras_seg_metadata.json"


def model_metadata(config: Dict[str, Any], checkpoint: str) -> Dict[str, Any]:
    """The labelling metadata every export carries (class names, palette, normalisation)."""
    from keras_seg import __version__  # pylint: disable=import-outside-toplevel
    from keras_seg.checkpoints import model_preprocessing  # pylint: disable=import-outside-toplevel
    from keras_seg.data.preprocess import preprocessing_record  # pylint: disable=import-outside-toplevel

    return {
        "model": config["model"],
        "model_options": config.get("model_options", {}),
        "num_classes": int(config["num_classes"]),
        "class_names": list(config["class_names"]),
        "palette": [list(map(int, c)) for c in config["palette"]],
        "ignore_label": int(config["ignore_label"]),
        "dataset": config.get("dataset", ""),
        "checkpoint": checkpoint,
        "trained_mixed_precision": config.get("mixed_precision", "float32"),
        "preprocessing": dict(preprocessing_record(model_preprocessing(config)), input="uint8 RGB in [0, 255]",
                              inside_graph=True),
        "keras_seg_version": __version__,
    }


def require_float32(model) -> None:
    """Refuses a model with layers that compute in another dtype than float32.

    Exported models are float32 whatever the run was trained under: rebuild a model trained
    under mixed precision with ``load_trained_model(..., mixed_precision="float32")`` (the
    checkpoint holds float32 variables). A bfloat16 or float16 graph would make the
    SavedModel compute in 16 bits and TFLite conversion fail or lose precision.

    Raises:
      ValueError: naming the first such layer and its dtype policy.
    """
    pending = list(getattr(model, "layers", []))
    while pending:
        layer = pending.pop(0)
        pending += list(getattr(layer, "layers", []))  # nested models (backbones)
        if layer.compute_dtype in ("float16", "bfloat16"):
            raise ValueError(
                f"export needs a float32 model, but layer {layer.name!r} computes in {layer.compute_dtype} "
                f"(dtype policy {layer.dtype_policy.name!r}). Rebuild it under float32, e.g. "
                "keras_seg.checkpoints.load_trained_model(model_dir, mixed_precision='float32'). "
                f"Received: model={getattr(model, 'name', model)!r}"
            )


def _checked_images(images, signature: str):
    """Refuses, at run time with a clear message, inputs that are not (B, H, W, 3)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    shape = tf.shape(images)
    ok = tf.debugging.Assert(
        tf.equal(shape[-1], 3),
        [f"{signature}: images must be uint8 RGB shaped (batch, height, width, 3); received shape", shape],
        summarize=8,
    )
    with tf.control_dependencies([ok]):
        # The signature's TensorSpec checks the dtype but not the rank; EnsureShape does.
        return tf.ensure_shape(images, [None, None, None, 3])


def _segment(model, images, preprocessing: str):
    """uint8 images (B, H, W, 3) -> (class_ids uint8 (B, H, W), probabilities float32 (B, H, W, C))."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg.data.preprocess import normalize_image  # pylint: disable=import-outside-toplevel

    logits = tf.cast(model(normalize_image(images, preprocessing), training=False), tf.float32)
    return tf.cast(tf.argmax(logits, axis=-1), tf.uint8), tf.nn.softmax(logits, axis=-1)


def build_serving_archive(model, metadata: Dict[str, Any]):
    """A ``keras.export.ExportArchive`` with the ``serving_default``, ``serving_bytes`` and ``metadata`` signatures."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    require_float32(model)
    num_classes = metadata["num_classes"]
    preprocessing = metadata["preprocessing"]["mode"]
    pad_id = metadata["ignore_label"] if 0 <= metadata["ignore_label"] <= 255 else 255

    def serve_images(images):
        class_ids, probs = _segment(model, _checked_images(images, "serving_default"), preprocessing)
        return {"class_ids": class_ids, "probabilities": probs}

    def serve_bytes(image_bytes):
        image_bytes = tf.ensure_shape(image_bytes, [None])
        n = tf.shape(image_bytes)[0]
        ids_ta = tf.TensorArray(tf.uint8, size=n, infer_shape=False, element_shape=tf.TensorShape([None, None]))
        probs_ta = tf.TensorArray(tf.float32, size=n, infer_shape=False,
                                  element_shape=tf.TensorShape([None, None, num_classes]))
        sizes_ta = tf.TensorArray(tf.int32, size=n, element_shape=tf.TensorShape([2]))

        def run_one(i, ids_ta, probs_ta, sizes_ta):
            image = tf.io.decode_image(image_bytes[i], channels=3, dtype=tf.uint8, expand_animations=False)
            class_ids, probs = _segment(model, image[None], preprocessing)
            return (i + 1, ids_ta.write(i, class_ids[0]), probs_ta.write(i, probs[0]),
                    sizes_ta.write(i, tf.shape(image)[:2]))

        _, ids_ta, probs_ta, sizes_ta = tf.while_loop(
            lambda i, *_: i < n, run_one, (tf.constant(0), ids_ta, probs_ta, sizes_ta))
        sizes = sizes_ta.stack()
        max_hw = tf.reduce_max(tf.concat([sizes, tf.zeros([1, 2], tf.int32)], 0), axis=0)
        out_ids = tf.TensorArray(tf.uint8, size=n, element_shape=tf.TensorShape([None, None]))
        out_probs = tf.TensorArray(tf.float32, size=n, element_shape=tf.TensorShape([None, None, num_classes]))

        def pad_one(i, out_ids, out_probs):
            pad = [[0, max_hw[0] - sizes[i][0]], [0, max_hw[1] - sizes[i][1]]]
            return (i + 1, out_ids.write(i, tf.pad(ids_ta.read(i), pad, constant_values=pad_id)),
                    out_probs.write(i, tf.pad(probs_ta.read(i), pad + [[0, 0]])))

        _, out_ids, out_probs = tf.while_loop(lambda i, *_: i < n, pad_one, (tf.constant(0), out_ids, out_probs))
        return {"class_ids": out_ids.stack(), "probabilities": out_probs.stack(), "image_size": sizes}

    names = tf.constant(metadata["class_names"], tf.string)
    palette = tf.constant(metadata["palette"], tf.int32, shape=(num_classes, 3))

    def serve_metadata(request):
        del request  # only there because TF Serving's REST API needs an input
        return {"class_names": tf.identity(names), "palette": tf.identity(palette),
                "ignore_label": tf.constant(metadata["ignore_label"], tf.int32),
                "num_classes": tf.constant(num_classes, tf.int32)}

    # Not archive.track(model): the endpoints' variables are saved anyway, and tracking the
    # Keras variables as well stores every weight twice (measured: 3.9 MB instead of 1.9 MB).
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", serve_images,
                         [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.add_endpoint("serving_bytes", serve_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("metadata", serve_metadata, [tf.TensorSpec([], tf.int32, name="request")])
    return archive


def write_saved_model(model, metadata: Dict[str, Any], path: str) -> None:
    """Writes the serving SavedModel to ``path`` with the metadata JSON in ``assets.extra/``."""
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel

    build_serving_archive(model, metadata).write_out(path, verbose=False)
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    atomic_write_json(os.path.join(path, "assets.extra", METADATA_FILE), metadata)
