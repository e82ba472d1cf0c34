"""Context blocks: adaptive average pooling against a NumPy reference, builtin-TFLite pyramid pooling."""

import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_seg.models.blocks import AdaptiveAvgPool2D, aspp, pyramid_pool


def _numpy_adaptive_avg_pool(x, bins):
    """Reference: PyTorch AdaptiveAvgPool2d bins, [floor(i*n/b), ceil((i+1)*n/b))."""
    b, h, w, c = x.shape
    out = np.zeros((b, bins, bins, c), np.float64)
    for i in range(bins):
        h0, h1 = (i * h) // bins, -(-((i + 1) * h) // bins)
        for j in range(bins):
            w0, w1 = (j * w) // bins, -(-((j + 1) * w) // bins)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
@pytest.mark.parametrize("hw", [(60, 60), (33, 47), (7, 13), (4, 5), (1, 1)])
def test_adaptive_avg_pool_matches_numpy_reference(bins, hw):
    """Both forms: slices and means at a static size, averaging matrices at a dynamic one."""
    x = np.random.default_rng(sum(hw) + bins).normal(size=(2, *hw, 3)).astype("float32")
    layer = AdaptiveAvgPool2D(bins)
    static = layer(x)  # eager: the size is known
    dynamic = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])(x)
    ref = _numpy_adaptive_avg_pool(x, bins)
    np.testing.assert_allclose(np.asarray(static), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dynamic), ref, rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_rejects_bad_bins():
    with pytest.raises(ValueError, match="Received: bins=0"):
        AdaptiveAvgPool2D(0)


def test_pyramid_pooling_converts_to_builtin_tflite_with_dynamic_size():
    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, pyramid_pool(inputs, (1, 2, 3, 6), filters=2, name="ppm"))
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", input_signature=[tf.TensorSpec((1, None, None, 8), tf.float32)],
                     verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        blob = converter.convert()
    for hw in [(13, 29), (24, 18)]:
        x = np.random.default_rng(hw[0]).normal(size=(1, *hw, 8)).astype("float32")
        interp = Interpreter(model_content=blob)
        index = interp.get_input_details()[0]["index"]
        interp.resize_tensor_input(index, x.shape)
        interp.allocate_tensors()
        interp.set_tensor(index, x)
        interp.invoke()
        got = interp.get_tensor(interp.get_output_details()[0]["index"])
        np.testing.assert_allclose(got, model.predict_on_batch(x), rtol=1e-4, atol=1e-4)




def test_aspp_branch_names_and_widths():
    inputs = keras.Input((None, None, 8))
    out = aspp(inputs, 4, (6, 12, 18), name="aspp")
    model = keras.Model(inputs, out)
    names = {layer.name for layer in model.layers}
    assert {"aspp_1x1_conv", "aspp_r6_conv", "aspp_r12_conv", "aspp_r18_conv", "aspp_pool_conv", "aspp_proj_conv"} <= names
    assert model.get_layer("aspp_concat").output.shape[-1] == 5 * 4
    assert model.get_layer("aspp_r18_conv").dilation_rate == (18, 18)
    assert out.shape[-1] == 4


def test_pspnet_at_a_static_size_converts_with_from_keras_model():
    """The converter users reach for first: a PSPNet built for one input shape (issue: its
    matrix-product pooling failed with "BytesRequired number of elements overflowed")."""
    import keras_seg

    model = keras_seg.build_model("pspnet", 5, input_shape=(48, 64, 3), **keras_seg.tiny_options("pspnet"))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interp = Interpreter(model_content=converter.convert())
    interp.allocate_tensors()
    x = np.random.default_rng(0).normal(size=(1, 48, 64, 3)).astype("float32")
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)
