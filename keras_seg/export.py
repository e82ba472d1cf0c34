r"""Exports a trained model for TF Serving (SavedModel) and LiteRT (TFLite), with a parity report.

    python -m keras_seg.export --model_dir=runs/unet_shapes --out=exported \
        [--formats=saved_model,tflite_fp32,tflite_fp16,tflite_dynamic,tflite_int8] \
        [--checkpoint=latest|best|PATH] [--version=N] [--model_name=NAME] [--tflite_size=H,W] \
        [--data_dir=DIR] [--parity_split=val] [--parity_images=50] [--int8_samples=100]

Layout of ``--out`` for version ``N`` of model ``NAME`` (default: the model_dir's name)::

    NAME/N/                       SavedModel; serve with --model_base_path=<out>/NAME
    NAME/N/assets.extra/keras_seg_metadata.json
    NAME_vN/NAME_fp32.tflite      + NAME_fp32.json sidecar (and _fp16, _dynamic, _int8)
    NAME_vN/parity.json           parity report (and parity.txt, the printed table)

Everything is written under a temporary name in ``--out`` and renamed into place, so a
model server watching ``NAME/`` never sees a half-written version.

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

TFLite models take ``image`` uint8 ``(1, H, W, 3)`` at the fixed ``--tflite_size`` (default:
the training crop) with the preprocessing inside the graph, and return ``probabilities``
float32 ``(1, H, W, C)`` and ``class_ids`` int32 ``(1, H, W)``; builtin ops only (LiteRT has
no Flex delegate). The int8 model is integer between a leading uint8->float cast and the
final dequantisation, calibrated on tiles of the training split, but for the ops XNNPACK
(LiteRT's CPU delegate) runs faster in float32: PReLU, a ReLU not fused into a convolution,
the softmax and, in models whose transposed convolutions are all strided and narrow (ENet,
FCN), those (:func:`int8_float_ops`). Run them on any image
size with ``python -m keras_seg.predict --tflite=...`` (:mod:`keras_seg.litert`). Each
``.tflite`` carries its metadata (class names, palette, preprocessing, input size) twice: in
the ``.json`` sidecar and inside the flatbuffer, as the metadata entry ``keras_seg``
(:func:`keras_seg.litert.embedded_metadata`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from keras_seg.options import option  # noqa: E402
from keras_seg.options import validate as validate_options  # noqa: E402
from keras_seg.registry import parse_inference_options  # noqa: E402

FLAGS = flags.FLAGS

SAVED_MODEL = "saved_model"
TFLITE_KINDS = ("fp32", "fp16", "dynamic", "int8")
FORMATS = (SAVED_MODEL,) + tuple(f"tflite_{k}" for k in TFLITE_KINDS)
METADATA_FILE = "keras_seg_metadata.json"
#: Ops the int8 TFLite model computes in float32, between a DEQUANTIZE and a QUANTIZE:
#: XNNPACK, LiteRT's CPU delegate, has float32 kernels for them but no int8 ones, so in int8
#: each ran on LiteRT's single-threaded kernels and split the XNNPACK graph around it
#: (ENet's 67 PReLUs: 71 partitions, 36% of its int8 time). In float32 the whole graph but
#: its integer index ops stays in one XNNPACK partition; benchmarks/int8_ops.py measures it.
INT8_FLOAT_OPS = ("PRELU", "RELU", "SOFTMAX")
#: XNNPACK runs a strided transposed convolution with few channels 3-5x slower in int8 than
#: in float32 (ENet's three: 6.4 ms against 1.5 ms of its 16 ms int8 time at 256x256 on 2
#: AVX-512 cores) and wide ones several times faster (U-Net's, DeconvNet's). The quantizer
#: keeps ops in float by type only (its per-node denylist leaves TRANSPOSE_CONV quantized),
#: so TRANSPOSE_CONV stays float32 when every transposed convolution of the model has a
#: stride above 1 and fewer than this many input and output channels.
FLOAT_TRANSPOSE_CONV_CHANNELS = 32
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _parse_size(values) -> Optional[Tuple[int, int]]:
    if not values:
        return None
    try:
        return tuple(int(v) for v in values)
    except ValueError as e:
        raise ValueError(f"--tflite_size must be H,W integers. Received: tflite_size={list(values)!r}") from e


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What :func:`export` needs. Each field is also the export flag of its name, declared
    once (:mod:`keras_seg.options`): its help, parser and bounds make the flags, the config
    and the validation."""

    model_dir: str = option(help="Training directory (model_config.json, ckpt/, best/).", kind="string")
    out: str = option(help="Output directory; see the module docstring for the layout.", kind="string",
                      flag="out_dir", aliases=("out",))
    formats: Tuple[str, ...] = option(
        FORMATS, f"Comma-separated subset of {','.join(FORMATS)}.", parse=tuple, flag_default=list(FORMATS),
        check=lambda v, c: bool(v) and all(f in FORMATS for f in v), want=f"a non-empty subset of {','.join(FORMATS)}")
    checkpoint: str = option("latest", "latest, best, or a checkpoint path prefix.")
    version: Optional[int] = option(None, "Version number (default: one more than the highest in --out).", kind="integer",
                                    check=lambda v, c: v is None or v >= 0, want="an integer >= 0")
    model_name: Optional[str] = option(None, "Serving model name (default: the model_dir's basename).", kind="string",
                                       check=lambda v, c: v is None or bool(_NAME_RE.match(v)),
                                       want="letters, digits, '_', '.', '-' (no '/')")
    tflite_size: Optional[Tuple[int, int]] = option(
        None, "Fixed TFLite input H,W (default: the training crop_size).", kind="list", parse=_parse_size,
        check=lambda v, c: v is None or (len(v) == 2 and min(v) >= 1), want="H,W with H, W >= 1")
    data_dir: Optional[str] = option(None, "Dataset for parity and int8 calibration (default: the training one).",
                                     kind="string")
    parity_split: str = option("val", "Split the parity report evaluates.")
    parity_images: int = option(50, "Images compared (the whole split if smaller; 0 skips).",
                                check=lambda v, c: v >= 0, want=">= 0")
    int8_split: Optional[str] = option(None, "Split of the int8 calibration tiles (default: the training split).",
                                       kind="string")
    int8_samples: int = option(100, "int8 calibration tiles.", check=lambda v, c: v >= 1, want=">= 1")
    tflite_fit: str = option("tile", "How TFLite parity runs images of other sizes (as predict --tflite).",
                             choices=("tile", "resize"))
    tile_overlap: float = option(0.25, "Tile overlap, fraction of the tile side.",
                                 check=lambda v, c: 0.0 <= v <= 0.9, want="in [0, 0.9]")
    warn_below: float = option(98.0, "Print a WARNING block under this agreement (percent).")
    inference_options: Dict[str, Any] = option(
        {}, "key=value options that pick another inference graph of the same trained variables, e.g. head=L2 "
        "exports a U-Net++ pruned to head L2 (keras_seg.registry.ModelSpec.inference_options); the metadata's "
        "model_options record it.", kind="list", parse=parse_inference_options, flag_default=[])

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        validate_options(self)


@dataclasses.dataclass
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
      version: the version exported.
      paths: format -> path (the SavedModel directory or the ``.tflite`` file).
      report_path: the parity JSON (``None`` when ``parity_images`` is 0).
      report: the parity report dict (``None`` when skipped).
      warnings: the WARNING blocks printed (agreement under the threshold).
    """

    version: int
    paths: Dict[str, str]
    report_path: Optional[str]
    report: Optional[Dict[str, Any]]
    warnings: List[str]


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


def write_tflite_source(model, size: Tuple[int, int], path: str, preprocessing: str = "imagenet") -> None:
    """The fixed-size, batch-1 SavedModel the TFLite converter reads (frozen, unlike a concrete function).

    ``preprocessing`` is the model's (``model_config.json``); the graph applies it to its uint8 input.
    """
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    require_float32(model)

    def serve(image):
        class_ids, probs = _segment(model, image, preprocessing)
        return {"class_ids": tf.cast(class_ids, tf.int32), "probabilities": probs}

    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", serve, [tf.TensorSpec([1, size[0], size[1], 3], tf.uint8, name="image")])
    archive.write_out(path, verbose=False)


def convert_tflite(source_dir: str, kind: str,
                   representative: Optional[Callable[[], Any]] = None) -> bytes:
    """Converts the SavedModel of :func:`write_tflite_source` to a builtin-ops-only flatbuffer.

    Args:
      source_dir: the fixed-size SavedModel.
      kind: ``fp32``, ``fp16`` (float16 weights), ``dynamic`` (int8 weights, float
        activations) or ``int8`` (int8 weights and activations but for the float32 ops of
        :func:`int8_float_ops`).
      representative: ``int8`` only: a generator function yielding ``{"image": uint8 (1, H, W, 3)}``.

    Raises:
      ValueError: an unknown kind, ``int8`` without representative data, or a conversion
        that needs non-builtin (Flex) ops, which the LiteRT interpreter cannot run.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if kind not in TFLITE_KINDS:
        raise ValueError(f"kind must be one of {TFLITE_KINDS}. Received: kind={kind!r}")
    conv = tf.lite.TFLiteConverter.from_saved_model(source_dir)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if kind != "fp32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    if kind == "int8":
        if representative is None:
            raise ValueError("int8 conversion needs representative data.")
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Calibrate, then quantize all but INT8_FLOAT_OPS: the two steps of convert() for
        # int8, split to pass the denylist, as tf.lite.experimental.QuantizationDebugger's
        # selective quantization does (without the debug model it also builds).
        conv._experimental_calibrate_only = True  # pylint: disable=protected-access
    try:
        with warnings.catch_warnings():
            # int8 calibration runs the deprecated tf.lite.Interpreter inside the converter.
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            flat = conv.convert()
            if kind == "int8":
                from tensorflow.lite.python import convert as tflite_convert  # pylint: disable=import-outside-toplevel

                float_ops = int8_float_ops(flat)
                flat = _float_weights(tflite_convert.mlir_quantize(flat, denylisted_ops=float_ops), flat, float_ops)
            return flat
    except Exception as e:  # the converter raises ConverterError and plain exceptions
        raise ValueError(
            f"TFLite {kind} conversion failed (only builtin ops are allowed: the LiteRT "
            f"interpreter has no Flex delegate): {str(e).strip()[:2000]}"
        ) from e


def _builtin_codes(model) -> List[int]:
    return [max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
            for c in (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))]


def transpose_convs(flat: bytes) -> List[Tuple[int, int, int]]:
    """``(stride, input channels, output channels)`` of every TRANSPOSE_CONV of a TFLite model."""
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel

    model = schema.Model.GetRootAs(flat, 0)
    codes = _builtin_codes(model)
    found = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            if codes[op.OpcodeIndex()] != schema.BuiltinOperator.TRANSPOSE_CONV:
                continue
            table = op.BuiltinOptions()
            options = schema.TransposeConvOptions()
            options.Init(table.Bytes, table.Pos)
            weights = graph.Tensors(op.Inputs(1)).ShapeAsNumpy()  # (out channels, kh, kw, in channels)
            found.append((max(options.StrideH(), options.StrideW()), int(weights[3]), int(weights[0])))
    return found


def int8_float_ops(flat: bytes) -> List[str]:
    """The ops the int8 conversion of the float TFLite model ``flat`` keeps in float32.

    :data:`INT8_FLOAT_OPS`, and TRANSPOSE_CONV when every transposed convolution has a
    stride above 1 and fewer than :data:`FLOAT_TRANSPOSE_CONV_CHANNELS` input and output
    channels.
    """
    ops = list(INT8_FLOAT_OPS)
    convs = transpose_convs(flat)
    if convs and all(s > 1 and max(c_in, c_out) < FLOAT_TRANSPOSE_CONV_CHANNELS for s, c_in, c_out in convs):
        ops.append("TRANSPOSE_CONV")
    return ops


def _float_weights(flat: bytes, calibrated: bytes, float_ops: Sequence[str]) -> bytes:
    """Gives the float TRANSPOSE_CONVs of an int8 model the float32 weights of the float model.

    The quantizer keeps the constant weights of a denylisted TRANSPOSE_CONV in int8: a hybrid
    op (float activations, int8 weights) that XNNPACK runs as slowly as the int8 one. With the
    float32 weights of ``calibrated`` (the float model it quantized, whose TRANSPOSE_CONVs
    come in the same order with the same weight shapes) it is the plain float32 op of the
    fp32 model. Without TRANSPOSE_CONV in ``float_ops`` the model comes back unchanged.

    Raises:
      ValueError: the two models' TRANSPOSE_CONVs do not pair up by order and weight shape.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
    from ai_edge_litert.tools import flatbuffer_utils  # pylint: disable=import-outside-toplevel

    if "TRANSPOSE_CONV" not in float_ops:
        return flat
    source = schema.Model.GetRootAs(calibrated, 0)
    codes = _builtin_codes(source)
    float_weights = []  # (shape, float32 bytes) of each TRANSPOSE_CONV, in graph order
    for g in range(source.SubgraphsLength()):
        graph = source.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            if codes[op.OpcodeIndex()] == schema.BuiltinOperator.TRANSPOSE_CONV:
                weights = graph.Tensors(op.Inputs(1))
                float_weights.append((weights.ShapeAsNumpy().tolist(),
                                      np.array(source.Buffers(weights.Buffer()).DataAsNumpy(), np.uint8)))

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    convs = [(graph, op) for graph in model.subgraphs for op in graph.operators
             if codes[op.opcodeIndex] == schema.BuiltinOperator.TRANSPOSE_CONV]
    if [list(graph.tensors[op.inputs[1]].shape) for graph, op in convs] != [shape for shape, _ in float_weights]:
        raise ValueError("TFLite int8 conversion: the quantized model's TRANSPOSE_CONVs do not match the float model's.")
    for (graph, op), (_, data) in zip(convs, float_weights):
        weights = graph.tensors[op.inputs[1]]
        if weights.type != schema.TensorType.INT8 or graph.tensors[op.inputs[2]].type != schema.TensorType.FLOAT32:
            continue
        buffer = schema.BufferT()
        buffer.data = data
        model.buffers.append(buffer)  # a new buffer: another tensor may share the int8 one
        weights.buffer, weights.type, weights.quantization = len(model.buffers) - 1, schema.TensorType.FLOAT32, None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def representative_tiles(data_dir: str, split: str, size: Tuple[int, int], count: int, seed: int = 0,
                         color: Sequence[int] = (124, 116, 104)) -> List[Any]:
    """``count`` uint8 tiles of ``size`` from a split, cut like the tiled inference sees them
    (padded with ``color``, the model's mean colour: :func:`keras_seg.litert.pad_color`)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from keras_seg.litert import sample_tile  # pylint: disable=import-outside-toplevel
    from keras_seg.parity import read_examples  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)
    images = [image for image, _ in read_examples(data_dir, split, count, shuffle_seed=seed)]
    if not images:
        raise ValueError(f"split {split!r} of {data_dir} is empty: no int8 calibration data.")
    # A split smaller than `count` gives more random tiles of the same images.
    return [sample_tile(images[i % len(images)], size, rng, color) for i in range(count)]


def existing_versions(out: str, model_name: str) -> List[int]:
    """Versions already in ``out``: numeric ``NAME/N`` directories and ``NAME_vN`` directories."""
    found = set()
    serving = os.path.join(out, model_name)
    if os.path.isdir(serving):
        found.update(int(d) for d in os.listdir(serving) if d.isdigit())
    if os.path.isdir(out):
        prefix = f"{model_name}_v"
        found.update(int(d[len(prefix):]) for d in os.listdir(out) if d.startswith(prefix) and d[len(prefix):].isdigit())
    return sorted(found)


def dir_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def _keras_predictor(model, preprocessing: str):
    """The parity report's reference: the Keras model through :mod:`keras_seg.inference`'s
    whole-image pass, as evaluate and predict run it."""
    from keras_seg.inference import make_probabilities  # pylint: disable=import-outside-toplevel
    from keras_seg.predict import predict_batch  # pylint: disable=import-outside-toplevel

    probs = make_probabilities(model)
    return lambda image: predict_batch(model, [image], preprocessing, None, probs)[0][1]


def _saved_model_predictor(path: str):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    fn = tf.saved_model.load(path).signatures["serving_default"]
    return lambda image: np.asarray(fn(images=tf.constant(image[None]))["probabilities"][0])


def export(cfg: ExportConfig, log: Callable[[str], None] = print) -> ExportResult:
    """Exports ``cfg.model_dir`` to ``cfg.out`` and writes the parity report.

    Args:
      cfg: a validated :class:`ExportConfig`.
      log: progress printer.

    Returns:
      An :class:`ExportResult`.

    Raises:
      CheckpointError: the model_dir has no config or no such checkpoint.
      ValueError: bad settings, an existing version, a missing dataset, a failed conversion.
    """
    from keras_seg.checkpoints import load_trained_model  # pylint: disable=import-outside-toplevel
    from keras_seg.data.manifest import load_manifest  # pylint: disable=import-outside-toplevel
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel
    from keras_seg.litert import TFLiteSegmenter, embed_metadata, pad_color  # pylint: disable=import-outside-toplevel
    from keras_seg.parity import compare, format_table, read_examples, warnings_for  # pylint: disable=import-outside-toplevel

    cfg.validate()
    t0 = time.time()
    # float32 whatever --mixed_precision the run was trained with: the checkpoint holds
    # float32 variables, and the exported signatures and TFLite models are float32 (uint8 in).
    model, config, ckpt = load_trained_model(cfg.model_dir, cfg.checkpoint, mixed_precision="float32",
                                             inference_options=cfg.inference_options)
    name = cfg.model_name or os.path.basename(os.path.normpath(os.path.abspath(cfg.model_dir)))
    if not _NAME_RE.match(name):
        raise ValueError(f"the model_dir name {name!r} is not a usable model name; pass --model_name.")
    versions = existing_versions(cfg.out, name)
    version = cfg.version if cfg.version is not None else (versions[-1] + 1 if versions else 1)
    serving_dir = os.path.join(cfg.out, name, str(version))
    extras_dir = os.path.join(cfg.out, f"{name}_v{version}")
    for path in (serving_dir, extras_dir):
        if os.path.exists(path):
            raise ValueError(f"{path} already exists: version {version} of {name!r} was exported before. "
                             f"Pass a new --version (next free: {versions[-1] + 1}) or delete it.")
    tflite_kinds = [f[len("tflite_"):] for f in cfg.formats if f.startswith("tflite_")]
    size = tuple(cfg.tflite_size or config.get("crop_size") or ())
    if tflite_kinds and len(size) != 2:
        raise ValueError(f"{cfg.model_dir}/model_config.json has no crop_size; pass --tflite_size=H,W.")
    data_dir = cfg.data_dir or config.get("data_dir")
    needs_data = cfg.parity_images > 0 or "int8" in tflite_kinds
    if needs_data:
        if not data_dir:
            raise ValueError("no dataset for the parity report / int8 calibration: pass --data_dir "
                             "(or --parity_images=0 without tflite_int8).")
        manifest = load_manifest(data_dir)
        if manifest["num_classes"] != config["num_classes"]:
            raise ValueError(f"{data_dir} has num_classes={manifest['num_classes']} but the model was trained "
                             f"with {config['num_classes']}; pass the --data_dir it was trained on.")
        wanted = {"--parity_split": cfg.parity_split if cfg.parity_images > 0 else None,
                  "--int8_split": (cfg.int8_split or config.get("train_split", "train")) if "int8" in tflite_kinds else None}
        for flag, split in wanted.items():
            if split is not None and split not in manifest["splits"]:
                raise ValueError(f"{flag}={split!r} is not a split of {data_dir}; it has "
                                 f"{sorted(manifest['splits'])}.")
    metadata = model_metadata(config, os.path.abspath(ckpt))
    log(f"Exporting {ckpt} as {name!r} version {version} to {cfg.out}: {', '.join(cfg.formats)}")

    os.makedirs(cfg.out, exist_ok=True)
    staging = os.path.join(cfg.out, f".{name}_v{version}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    stage_serving = os.path.join(staging, "serving")
    stage_extras = os.path.join(staging, "extras")
    os.makedirs(stage_extras)
    try:
        staged: Dict[str, str] = {}
        if SAVED_MODEL in cfg.formats:
            write_saved_model(model, metadata, stage_serving)
            staged[SAVED_MODEL] = stage_serving
            log(f"  saved_model   {dir_size(stage_serving) / 1e6:8.3f} MB  ({time.time() - t0:.1f}s)")
        if tflite_kinds:
            source = os.path.join(staging, "tflite_source")
            write_tflite_source(model, size, source, metadata["preprocessing"]["mode"])
            tiles = []
            if "int8" in tflite_kinds:
                split = cfg.int8_split or config.get("train_split", "train")
                tiles = representative_tiles(data_dir, split, size, cfg.int8_samples,
                                             color=pad_color(metadata["preprocessing"]))
                log(f"  int8 calibration: {len(tiles)} tiles {size[0]}x{size[1]} from {data_dir} split {split!r}")

            def representative():
                for tile in tiles:
                    yield {"image": tile[None]}
            for kind in tflite_kinds:
                sidecar = dict(metadata, format=f"tflite_{kind}", input_size=list(size),
                               inputs={"image": {"dtype": "uint8", "shape": [1, size[0], size[1], 3]}},
                               outputs={"probabilities": {"dtype": "float32", "shape": [1, size[0], size[1], metadata["num_classes"]]},
                                        "class_ids": {"dtype": "int32", "shape": [1, size[0], size[1]]}})
                # The sidecar's record also travels inside the flatbuffer (keras_seg.litert.embedded_metadata).
                blob = embed_metadata(convert_tflite(source, kind, representative), sidecar)
                path = os.path.join(stage_extras, f"{name}_{kind}.tflite")
                with open(path, "wb") as f:
                    f.write(blob)
                atomic_write_json(os.path.join(stage_extras, f"{name}_{kind}.json"), sidecar)
                staged[f"tflite_{kind}"] = path
                log(f"  tflite_{kind:<8}{len(blob) / 1e6:8.3f} MB  ({time.time() - t0:.1f}s)")
            shutil.rmtree(source)

        report, report_path, warnings = None, None, []
        if cfg.parity_images > 0:
            examples = list(read_examples(data_dir, cfg.parity_split, cfg.parity_images))
            predictors = {}
            if SAVED_MODEL in staged:
                predictors[SAVED_MODEL] = _saved_model_predictor(staged[SAVED_MODEL])
            for fmt, path in staged.items():
                if fmt != SAVED_MODEL:
                    seg = TFLiteSegmenter(path)
                    predictors[fmt] = lambda im, seg=seg: seg.probabilities(im, cfg.tflite_fit, cfg.tile_overlap)
            report = compare(_keras_predictor(model, metadata["preprocessing"]["mode"]), predictors, examples, config["num_classes"],
                             int(config["ignore_label"]), config["class_names"])
            sizes = {fmt: dir_size(p) / 1e6 for fmt, p in staged.items()}
            for fmt in report["formats"]:
                report["formats"][fmt]["size_mb"] = sizes[fmt]
            report.update({
                "model_dir": os.path.abspath(cfg.model_dir), "checkpoint": ckpt, "model_name": name,
                "version": version, "data_dir": os.path.abspath(data_dir), "split": cfg.parity_split,
                "tflite_size": list(size) if tflite_kinds else None, "tflite_fit": cfg.tflite_fit,
                "tile_overlap": cfg.tile_overlap, "warn_below": cfg.warn_below,
            })
            table = format_table(report, sizes)
            warnings = warnings_for(report, cfg.warn_below)
            report["warnings"] = warnings
            header = (f"Parity on {len(examples)} images of {data_dir} split {cfg.parity_split!r} "
                      f"(TFLite {size[0]}x{size[1]}, fit={cfg.tflite_fit}):" if tflite_kinds else
                      f"Parity on {len(examples)} images of {data_dir} split {cfg.parity_split!r}:")
            text = "\n".join([header, table, *warnings])
            atomic_write_json(os.path.join(stage_extras, "parity.json"), report)
            with open(os.path.join(stage_extras, "parity.txt"), "w", encoding="utf-8") as f:
                f.write(text + "\n")
            log(text)
            report_path = os.path.join(extras_dir, "parity.json")

        paths = {}
        if SAVED_MODEL in staged:
            os.makedirs(os.path.dirname(serving_dir), exist_ok=True)
            os.replace(stage_serving, serving_dir)
            paths[SAVED_MODEL] = serving_dir
        os.replace(stage_extras, extras_dir)
        for fmt, path in staged.items():
            if fmt != SAVED_MODEL:
                paths[fmt] = os.path.join(extras_dir, os.path.basename(path))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"Wrote {', '.join(paths.values())} in {time.time() - t0:.1f}s.")
    return ExportResult(version, paths, report_path, report, warnings)


def config_from_flags(f) -> ExportConfig:
    """Builds and validates the :class:`ExportConfig` of the parsed flags."""
    from keras_seg.flags import config_from_flags as from_flags  # pylint: disable=import-outside-toplevel

    return from_flags(f, ExportConfig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # TF's SavedModel writer logs pages of INFO lines
        logging.set_verbosity(logging.WARNING)
    from keras_seg.checkpoints import CheckpointError  # pylint: disable=import-outside-toplevel

    try:
        export(config_from_flags(FLAGS))
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def define_flags() -> None:
    """Defines the export flags, one per :class:`ExportConfig` field (called from ``__main__`` only)."""
    from keras_seg.flags import define_flags as define  # pylint: disable=import-outside-toplevel

    define(ExportConfig)
    flags.mark_flags_as_required(["model_dir", "out_dir"])


if __name__ == "__main__":
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
