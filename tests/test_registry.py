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


def test_variants_are_data_with_the_base_builders_signature():
    """FCN-32s/16s/8s and FC-DenseNet56/67/103 are rows over one builder each, not copied signatures."""
    import inspect

    from keras_seg import registry
    from keras_seg.models import fc_densenet, fcn

    for name in ("fcn32s", "fcn16s", "fcn8s"):
        params = inspect.signature(registry.get_builder(name)).parameters
        assert "stride" not in params  # fixed by the variant: not an option users can pass
        assert set(params) == set(inspect.signature(fcn.build_fcn).parameters) - {"stride"}
        assert registry.get_spec(name).defaults()["name"] == name
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['stride'\]"):
        keras_seg.build_model("fcn8s", 3, stride=16)
    defaults = {n: registry.get_spec(n).defaults() for n in ("fc_densenet56", "fc_densenet67", "fc_densenet103")}
    assert [(d["growth_rate"], d["layers_per_block"]) for d in defaults.values()] == [
        (12, 4), (16, 5), (16, (4, 5, 7, 10, 12, 15))]  # Jegou et al. 2017, Table 1 and Sec. 4
    # The variant builds exactly the base builder's model with its row's values.
    tiny = registry.tiny_options("fcn16s")
    a = registry.get_builder("fcn16s")(3, (40, 40, 3), **tiny)
    b = fcn.build_fcn(3, (40, 40, 3), stride=16, name="fcn16s", **tiny)
    assert [(w.path, w.shape) for w in a.weights] == [(w.path, w.shape) for w in b.weights]
    tiny = registry.tiny_options("fc_densenet67")
    a = fc_densenet.build_fc_densenet67(3, (32, 32, 3), **tiny)
    b = fc_densenet.build_fc_densenet(3, (32, 32, 3), name="fc_densenet67", **tiny)
    assert a.name == "fc_densenet67" and a.count_params() == b.count_params()


def test_variant_refuses_options_the_base_lacks():
    from keras_seg import registry

    def base(num_classes, input_shape=(None, None, 3), *, depth=2, name="m"):
        return (num_classes, input_shape, depth, name)

    v = registry.variant(base, "deep", "A deep one.", depth=5)
    assert v(3) == (3, (None, None, 3), 5, "deep")
    assert v(3, depth=1, name="x") == (3, (None, None, 3), 1, "x")
    assert "``depth=5``" in v.__doc__ and v.__name__ == "build_deep"
    with pytest.raises(ValueError, match=r"variant 'wide': base has no option\(s\) \['width'\]"):
        registry.variant(base, "wide", "A wide one.", width=4)
    with pytest.raises(TypeError, match="depth"):
        registry.variant(base, "fixed", "Fixed depth.", fixed={"depth": 3})(3, depth=4)


def test_every_build_path_checks_options():
    """A model_config.json with a misspelt option fails by name, as build_model does (one build path)."""
    from keras_seg.checkpoints import build_full_model

    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['widht'\] for model 'unet'"):
        build_full_model({"model": "unet", "num_classes": 3, "model_options": {"widht": 3}})
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['stride'\]"):
        keras_seg.get_spec("fcn8s").build(3, stride=8)
