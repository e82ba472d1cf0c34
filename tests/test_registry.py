"""The public registry API."""

import pytest

import keras_seg


def test_public_api():
    assert "unet" in keras_seg.list_models()
    assert keras_seg.list_models() == sorted(keras_seg.list_models())
    opts = keras_seg.tiny_options("unet")
    opts["depth"] = 99  # a copy: the registry's tiny options are not mutated
    assert keras_seg.tiny_options("unet")["depth"] != 99
    assert keras_seg.get_builder("unet").__name__ == "build_unet"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Did you mean \['unet'.*Valid names: \['bisenet_v2', 'deconvnet'"):
        keras_seg.build_model("unett", 3)
    with pytest.raises(ValueError, match="Valid names"):
        keras_seg.tiny_options("nope")


def test_unknown_option_lists_accepted():
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['widht'\].*Accepted options: \['base_width'"):
        keras_seg.build_model("unet", 3, widht=3)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        keras_seg.build_model("unet", 3, input_shape=(32, 32))
