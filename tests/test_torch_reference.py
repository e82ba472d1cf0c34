"""The PyTorch twins of benchmarks/compare_torch.py: same parameters, same logits as Keras."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras  # noqa: E402

import keras_seg  # noqa: E402
from benchmarks.torch_models import (  # noqa: E402
    TorchFCN8s,
    TorchUNet,
    copy_keras_weights,
    keras_style_param_count,
)

_TWINS = {"unet": TorchUNet, "fcn8s": TorchFCN8s}


def _meta_count(name, num_classes, **options):
    """Parameter count of the torch twin built on the meta device: no memory, no init time."""
    with torch.device("meta"):
        return keras_style_param_count(_TWINS[name](num_classes, **options))


@pytest.mark.parametrize("name, golden", [("unet", 31_033_045), ("fcn8s", 134_489_759)])
def test_full_size_param_counts_equal_keras(name, golden):
    # U-Net: the paper's 31,030,658 for 1 channel and 2 classes, +1,152 for 3 input channels
    # and +1,235 for 21 classes; FCN-8s: the VOC count of tests/models/test_vgg_family.py.
    assert keras_seg.build_model(name, 21).count_params() == _meta_count(name, 21) == golden


def test_torch_param_counts_follow_options():
    assert _meta_count("fcn8s", 19) == 134_456_985
    assert _meta_count("unet", 2, in_channels=1, padding="valid") == 31_030_658
    for name in _TWINS:
        tiny = keras_seg.tiny_options(name)
        assert _meta_count(name, 5, **tiny) == keras_seg.build_model(name, 5, **tiny).count_params()


def _randomise(model, seed=0):
    """Random values for every weight, so that a transposed, flipped or misplaced copy shows.

    The FCN upsampling kernels start as symmetric per-channel bilinear filters and the
    batch-norm statistics as 0 / 1; both would hide a wrong layout.
    """
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape, name = tuple(v.shape), v.path.split("/")[-1]
        if name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.1, shape)
        else:  # kernels: variance-preserving over the fan-in
            value = rng.uniform(-1.0, 1.0, shape) * np.sqrt(3.0 / np.prod(shape[:-1]))
        v.assign(value.astype("float32"))


@pytest.mark.parametrize("name", sorted(_TWINS))
def test_tiny_logits_equal_keras_at_odd_size(name):
    tiny = keras_seg.tiny_options(name)
    keras.utils.set_random_seed(1)
    model = keras_seg.build_model(name, 5, **tiny)
    _randomise(model)
    twin = copy_keras_weights(model, _TWINS[name](5, **tiny)).eval()

    x = np.random.default_rng(2).normal(size=(2, 37, 45, 3)).astype("float32")
    expected = model(x, training=False).numpy()
    with torch.inference_mode():
        got = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    assert got.shape == expected.shape == (2, 37, 45, 5)
    assert np.abs(expected).max() > 0.1  # not a vacuous comparison of zeros
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name, keras_options, torch_options, match", [
    ("unet", {}, {"num_classes": 4}, r"logits_full.*kernel has Keras shape \(5, 8, 1, 1\)"),
    ("unet", {}, {"batch_norm": False}, r"Keras only \['.*_bn'"),
    ("fcn8s", {}, {"in_channels": 1}, r"block1_conv1.*kernel has Keras shape \(8, 3, 3, 3\)"),
    ("fcn8s", {"upsampling_trainable": "all"}, {}, r"upscore8.*trainable in Keras but has requires_grad=False"),
])
def test_copy_refuses_a_mismatch_and_copies_nothing(name, keras_options, torch_options, match):
    tiny = keras_seg.tiny_options(name)
    model = keras_seg.build_model(name, 5, **{**tiny, **keras_options})
    twin = _TWINS[name](**{"num_classes": 5, **tiny, **torch_options})
    before = {k: v.clone() for k, v in twin.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        copy_keras_weights(model, twin)
    assert all(torch.equal(before[k], v) for k, v in twin.state_dict().items())


def test_copy_refuses_another_architecture():
    model = keras_seg.build_model("unet", 5, **keras_seg.tiny_options("unet"))
    with pytest.raises(ValueError, match="do not have the same weighted layers"):
        copy_keras_weights(model, TorchFCN8s(5, **keras_seg.tiny_options("fcn8s")))
