"""The LiteRT models: the fixed-size source graph, its conversion and the int8 choices.

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

import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

from keras_seg.export.config import TFLITE_KINDS
from keras_seg.export.saved_model import _segment, require_float32

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
