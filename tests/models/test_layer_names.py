"""No registered model keeps a Keras auto-generated layer name, whatever the layer class."""

import re

import pytest

import keras_seg
from keras.src.utils.naming import to_snake_case


@pytest.mark.parametrize("name", keras_seg.list_models())
def test_no_layer_is_named_after_its_class(name):
    model = keras_seg.build_model(name, 3, **keras_seg.tiny_options(name))
    auto = [
        layer.name
        for layer in model.layers
        if re.fullmatch(rf"{re.escape(to_snake_case(type(layer).__name__))}(_\d+)?", layer.name)
    ]
    assert not auto, f"auto-named layers in {name}: {auto}"
