"""Test helper: convert a Keras model to builtin-ops-only TFLite and run it with LiteRT.

Conversion goes through ``model.export(format="tf_saved_model")``: converting a concrete
function of a Keras 3 model directly leaves READ_VARIABLE ops whose variables LiteRT never
initialises (measured: outputs of 1e+28 or NaN), while the exported SavedModel is frozen.
"""

import tempfile

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter


def convert_builtin_only(model, input_shape):
    """Converts ``model`` at a fixed ``input_shape`` (B, H, W, C) with TFLITE_BUILTINS only."""
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", input_signature=[tf.TensorSpec(input_shape, tf.float32)], verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return conv.convert()


def run_tflite(blob, x):
    """Runs a TFLite flatbuffer on ``x`` with the LiteRT interpreter; returns output 0."""
    interp = Interpreter(model_content=blob)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], np.asarray(x, np.float32))
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])
