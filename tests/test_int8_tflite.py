"""int8 TFLite graphs that stay on XNNPACK: float PReLU/ReLU/softmax, float narrow transposed convolutions."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import keras_seg
from keras_seg import export
from benchmarks.litert_ops import delegation

SIZE = (32, 40)
#: The integer index ops of argmax pooling / unpooling and the final argmax: XNNPACK has no
#: kernel for them in any precision (they are outside XNNPACK in the fp32 model too).
INDEX_OPS = {"EQUAL", "SELECT_V2", "ADD", "RESHAPE", "SCATTER_ND", "ARG_MAX", "CAST"}


def _convert(model, tmp_path, kinds=("fp32", "int8")):
    export.write_tflite_source(model, SIZE, str(tmp_path / "source"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(1, *SIZE, 3), dtype=np.uint8) for _ in range(2)]
    return {k: export.convert_tflite(str(tmp_path / "source"), k, lambda: ({"image": i} for i in images)) for k in kinds}


def _weight_tensors(blob, op_name):
    """The weight tensor (input 1) of every ``op_name`` node, as (dtype, value)."""
    interp = Interpreter(model_content=blob)
    interp.allocate_tensors()
    out = []
    for op in interp._get_ops_details():  # pylint: disable=protected-access
        if op["op_name"] == op_name:
            detail = interp.get_tensor_details()[op["inputs"][1]]
            out.append((detail["dtype"], interp.get_tensor(op["inputs"][1])))
    return out


@pytest.fixture(scope="module")
def enet_blobs(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras_seg.build_model("enet", 5, **keras_seg.tiny_options("enet"))
    return _convert(model, tmp_path_factory.mktemp("enet"))


def test_int8_enet_stays_on_xnnpack_but_for_its_index_ops(enet_blobs):
    nodes, partitions = delegation(enet_blobs["int8"])
    outside = {n.op for n in nodes if not n.delegated}
    assert outside <= INDEX_OPS, outside
    # Before: every int8 PReLU ran outside XNNPACK and split it (16 PReLUs: 20 partitions).
    assert partitions <= 3
    dtypes = {(n.op, n.dtype) for n in nodes}
    assert ("PRELU", "float32") in dtypes and ("SOFTMAX", "float32") in dtypes
    assert ("TRANSPOSE_CONV", "float32") in dtypes and ("CONV_2D", "int8") in dtypes
    assert not {("PRELU", "int8"), ("SOFTMAX", "int8"), ("TRANSPOSE_CONV", "int8")} & dtypes


def test_int8_float_transpose_convs_have_the_fp32_weights(enet_blobs):
    assert export.int8_float_ops(enet_blobs["fp32"]) == ["PRELU", "RELU", "SOFTMAX", "TRANSPOSE_CONV"]
    got = _weight_tensors(enet_blobs["int8"], "TRANSPOSE_CONV")
    want = _weight_tensors(enet_blobs["fp32"], "TRANSPOSE_CONV")
    assert len(got) == len(want) == 3
    for (g_dtype, g), (w_dtype, w) in zip(got, want):
        assert g_dtype == w_dtype == np.float32
        np.testing.assert_array_equal(g, w)  # not int8 values dequantized


def test_int8_enet_probabilities_follow_fp32(enet_blobs):
    x = np.random.default_rng(3).integers(0, 256, size=(1, *SIZE, 3), dtype=np.uint8)
    out = {}
    for kind, blob in enet_blobs.items():
        runner = Interpreter(model_content=blob).get_signature_runner("serving_default")
        out[kind] = runner(image=x)
    np.testing.assert_allclose(out["int8"]["probabilities"].sum(-1), 1.0, atol=1e-5)  # float softmax
    assert np.abs(out["int8"]["probabilities"] - out["fp32"]["probabilities"]).max() < 0.2
    assert out["int8"]["class_ids"].shape == (1, *SIZE)


def _tconv_model(filters, strides):
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name="down")(inputs)
    x = keras.layers.Conv2DTranspose(filters, 3, strides=strides, padding="same", name="up")(x)
    x = keras.layers.Conv2D(4, 1, name="head")(x)
    return keras.Model(inputs, keras_seg.models.blocks.ResizeLike(name="logits")(x, inputs))


@pytest.mark.parametrize("filters, strides, floated", [(8, 2, True), (48, 2, False), (8, 1, False)])
def test_only_narrow_strided_transpose_convs_stay_float(filters, strides, floated, tmp_path):
    keras.utils.set_random_seed(0)
    blob = _convert(_tconv_model(filters, strides), tmp_path, kinds=("fp32",))["fp32"]
    assert export.transpose_convs(blob) == [(strides, filters, filters)]
    assert ("TRANSPOSE_CONV" in export.int8_float_ops(blob)) == floated


def test_a_standalone_relu_stays_float_in_int8(tmp_path):
    # RefineNet's residual units: relu(x) feeds a convolution while x feeds the sum, so the
    # ReLU cannot fuse into the convolution before it (in int8: 20 RELUs, 16 partitions).
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(keras.layers.ReLU(name="relu")(x))
    outputs = keras.layers.Conv2D(4, 1, name="logits")(keras.layers.Add(name="add")([x, y]))
    blob = _convert(keras.Model(inputs, outputs), tmp_path, kinds=("int8",))["int8"]
    nodes, partitions = delegation(blob)
    relus = [n for n in nodes if n.op == "RELU"]
    assert len(relus) == 1 and relus[0].dtype == "float32" and relus[0].delegated
    assert partitions == 1


def test_wide_transpose_convs_stay_int8(tmp_path):
    keras.utils.set_random_seed(0)
    blobs = _convert(_tconv_model(48, 2), tmp_path)
    dtypes = {(n.op, n.dtype) for n in delegation(blobs["int8"])[0]}
    assert ("TRANSPOSE_CONV", "int8") in dtypes and ("CONV_2D", "int8") in dtypes
    assert [d for d, _ in _weight_tensors(blobs["int8"], "TRANSPOSE_CONV")] == [np.int8]
    assert len(blobs["int8"]) < len(blobs["fp32"]) / 2
