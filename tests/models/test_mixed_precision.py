"""Under mixed_float16 the context / real-time models compute in float16 and return float32 logits."""

import keras
import numpy as np
import pytest

import keras_seg

MODELS = ["deeplab_v1", "deeplab_v2", "deeplab_v3", "deeplab_v3plus", "pspnet", "refinenet", "gfrnet",
          "fc_densenet56", "enet", "linknet", "bisenet_v2", "unet_pp"]


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", MODELS)
def test_float16_inside_float32_logits(name, mixed_float16):  # pylint: disable=redefined-outer-name,unused-argument
    options = dict(keras_seg.tiny_options(name))
    if keras_seg.get_spec(name).aux_weights:
        options["aux_outputs"] = True
    model = keras_seg.build_model(name, 4, **options)
    half = [layer.name for layer in model.layers if layer.compute_dtype == "float16"]
    assert len(half) > len(model.layers) // 2
    outputs = model(np.random.default_rng(0).normal(size=(1, 33, 47, 3)).astype("float32"), training=False)
    for out in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        out = np.asarray(out)
        assert out.dtype == np.float32 and out.shape == (1, 33, 47, 4) and np.isfinite(out).all()
