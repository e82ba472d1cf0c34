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


def test_register_refuses_undeclared_inference_options_and_aux_weights_go_by_name():
    from keras_seg.registry import register

    def build_toy(num_classes, input_shape=(None, None, 3), *, head="a", aux_outputs=False):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match=r"inference_options \['mode'\] of model 'toy_x' are not arguments"):
        register("toy_x", inference_options=("mode",))(build_toy)
    spec = keras_seg.get_spec("unet_pp")
    assert spec.inference_options == ("head",)
    assert spec.aux_weights_for(["logits", "aux_l2"]) == [1.0]
    with pytest.raises(ValueError, match=r"auxiliary outputs \['aux_x'\] with no loss weight"):
        spec.aux_weights_for(["logits", "aux_x"])
    assert "toy_x" not in keras_seg.list_models()  # a refused registration registers nothing
