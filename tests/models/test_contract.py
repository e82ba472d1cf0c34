"""Registry-wide builder contract (STYLE.md), parametrised over every registered model."""

import re

import keras
import numpy as np
import pytest

import keras_seg
from tests.tflite_utils import convert_builtin_only, run_tflite

AUTO_NAME = re.compile(
    r"^(conv2d|conv2d_transpose|batch_normalization|activation|add|concatenate|dropout|"
    r"max_pooling2d|average_pooling2d|dense|re_lu|p_re_lu|lambda|multiply|zero_padding2d|"
    r"cropping2d|input_layer|up_sampling2d|global_average_pooling2d|reshape|"
    r"depthwise_conv2d|separable_conv2d|functional)(_\d+)?$"
)
NUM_CLASSES = 5


def test_registry_is_populated():
    assert "unet" in keras_seg.list_models()


def _tiny(name, **kw):
    keras.utils.set_random_seed(0)
    return keras_seg.build_model(name, NUM_CLASSES, **keras_seg.tiny_options(name), **kw)


@pytest.mark.parametrize("name", keras_seg.list_models())
def test_output_is_input_size_at_odd_sizes(name):
    model = _tiny(name)
    for h, w in [(33, 47), (45, 31)]:
        out = model.predict_on_batch(np.zeros((2, h, w, 3), "float32"))
        assert out.shape == (2, h, w, NUM_CLASSES)
        assert out.dtype == np.float32


def _crop_inputs(model):
    """``(layer, x, ref)`` of every ``CropLike`` layer: the tensor it crops and the reference."""
    from keras_seg.models.blocks import CropLike

    return [(layer, *layer._inbound_nodes[0].arguments.args) for layer in model.layers if isinstance(layer, CropLike)]


@pytest.mark.parametrize("name", keras_seg.list_models())
def test_final_crop_only_removes_the_input_padding(name):
    # A decoder that upsamples once too often still gives input-size logits after the crop
    # (LinkNet did: its logits were the top-left quarter of a 2x map, shifted against the
    # labels). A (0, 0) crop must therefore take exactly the padded input size back to the
    # input size: at 100x116 a model that pads to a multiple of 32 crops 128x128, one that
    # does not pad crops nothing. FCN's offset crops are Caffe's, checked against its golden
    # offsets in test_vgg_family.py.
    from keras_seg.models.blocks import PadToMultiple

    size = (100, 116)
    model = _tiny(name, input_shape=(*size, 3))
    pads = [layer for layer in model.layers if isinstance(layer, PadToMultiple)]
    padded = tuple(pads[0].output.shape[1:3]) if pads else size
    assert all(p >= s for p, s in zip(padded, size))
    for layer, x, ref in _crop_inputs(model):
        if tuple(layer.offset) == (0, 0):
            assert tuple(ref.shape[1:3]) == size, layer.name
            assert tuple(x.shape[1:3]) == padded, f"{name}: {layer.name} crops {tuple(x.shape[1:3])} to {size}"


@pytest.mark.parametrize("name", keras_seg.list_models())
def test_one_training_step_is_finite(name):
    model = _tiny(name)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(2, 32, 32)).astype("int32")
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)


@pytest.mark.parametrize("name", keras_seg.list_models())
def test_keras_file_round_trip(name, tmp_path):
    model = _tiny(name)
    x = np.random.default_rng(1).normal(size=(1, 35, 29, 3)).astype("float32")
    want = model.predict_on_batch(x)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_allclose(loaded.predict_on_batch(x), want, atol=1e-5)
    assert loaded.get_config()["name"] == model.get_config()["name"]


@pytest.mark.parametrize("name", keras_seg.list_models())
def test_layer_names_unique_and_not_auto(name):
    model = _tiny(name)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    auto = [n for n in names if AUTO_NAME.match(n)]
    assert not auto, f"Keras auto-names in {name}: {auto}"
    assert model.layers[-1].name == "logits"


@pytest.mark.parametrize("name", keras_seg.list_models())
def test_builtin_tflite_matches_keras(name):
    model = _tiny(name)
    x = np.random.default_rng(2).normal(size=(1, 40, 56, 3)).astype("float32")
    blob = convert_builtin_only(model, x.shape)
    np.testing.assert_allclose(run_tflite(blob, x), model.predict_on_batch(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", keras_seg.list_models())
def test_from_keras_model_at_a_static_size_matches_keras(name):
    """The standard path, ``TFLiteConverter.from_keras_model``, on a model built for one input size."""
    import tensorflow as tf

    model = _tiny(name, input_shape=(40, 56, 3))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    x = np.random.default_rng(3).normal(size=(1, 40, 56, 3)).astype("float32")
    np.testing.assert_allclose(run_tflite(converter.convert(), x), model.predict_on_batch(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", keras_seg.list_models())
def test_unknown_option_is_refused(name):
    with pytest.raises(ValueError, match="Accepted options"):
        keras_seg.build_model(name, NUM_CLASSES, not_an_option=1)


@pytest.mark.parametrize("name", keras_seg.list_models())
def test_bad_num_classes_is_refused(name):
    with pytest.raises(ValueError, match="num_classes"):
        keras_seg.build_model(name, 0, **keras_seg.tiny_options(name))
