"""The PyTorch twins of benchmarks/compare_torch.py: same parameters, same logits as Keras."""

import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_seg  # noqa: E402
from benchmarks.torch_models import (  # noqa: E402
    Conv2dSame,
    ConvTranspose2dSame,
    TorchENet,
    TorchFCN8s,
    TorchUNet,
    copy_keras_weights,
    keras_style_param_count,
)
from keras_seg.losses import weighted_pixel_cross_entropy  # noqa: E402
from keras_seg.models.blocks import MaxPoolingWithArgmax2D, MaxUnpooling2D  # noqa: E402

_TWINS = {"unet": TorchUNet, "fcn8s": TorchFCN8s, "enet": TorchENet}


def _meta_count(name, num_classes, **options):
    """Parameter count of the torch twin built on the meta device: no memory, no init time."""
    with torch.device("meta"):
        return keras_style_param_count(_TWINS[name](num_classes, **options))


@pytest.mark.parametrize("name, golden", [("unet", 31_033_045), ("fcn8s", 134_489_759), ("enet", 372_793)])
def test_full_size_param_counts_equal_keras(name, golden):
    # U-Net: the paper's 31,030,658 for 1 channel and 2 classes, +1,152 for 3 input channels
    # and +1,235 for 21 classes; FCN-8s: the VOC count of tests/models/test_vgg_family.py;
    # ENet: tests/models/test_enet.py's 372,208 for 12 classes + 9 * 65 for the 2x2 fullconv.
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
        elif name == "alpha":  # PReLU slopes (Keras starts them at 0, a plain ReLU)
            value = rng.uniform(0.05, 0.5, shape)
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
    ("enet", {}, {"widths": (8, 16, 20)}, r"bottleneck2_0_conv1.*kernel has Keras shape \(4, 16, 2, 2\)"),
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


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("size", [(8, 12), (9, 13)])
@pytest.mark.parametrize("kernel, stride, dilation", [(3, 2, 1), (2, 2, 1), ((1, 5), 1, 1), (3, 1, 2), (4, 3, 1)])
def test_conv2d_same_pads_like_tensorflow(size, kernel, stride, dilation):
    conv = keras.layers.Conv2D(3, kernel, strides=stride, dilation_rate=dilation, padding="same", name="c")
    x = np.random.default_rng(0).normal(size=(2, *size, 2)).astype("float32")
    expected = conv(x).numpy()
    twin = torch.nn.Module()
    twin.c = Conv2dSame(2, 3, kernel, stride=stride, dilation=dilation)
    copy_keras_weights(keras.Sequential([keras.Input((None, None, 2)), conv]), twin)
    np.testing.assert_allclose(_nhwc(twin.c(_nchw(x))), expected, atol=1e-5)


@pytest.mark.parametrize("kernel, stride", [(3, 2), (4, 2), (2, 2), (5, 3)])
def test_conv_transpose2d_same_crops_like_tensorflow(kernel, stride):
    up = keras.layers.Conv2DTranspose(3, kernel, strides=stride, padding="same", name="up")
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 2)).astype("float32")
    expected = up(x).numpy()
    twin = torch.nn.Module()
    twin.up = ConvTranspose2dSame(2, 3, kernel, stride)
    copy_keras_weights(keras.Sequential([keras.Input((None, None, 2)), up]), twin)
    got = _nhwc(twin.up(_nchw(x)))
    assert got.shape == expected.shape == (2, 5 * stride, 7 * stride, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_argmax_pool_and_unpool_agree_with_torch_on_ties():
    # Values in {0, 1, 2}: most 2x2 windows hold tied maxima. Both sides must pick the first
    # maximum in row-major window order, else unpooling writes to other positions.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(2, 8, 12, 5)).astype("float32")
    pooled, indices = MaxPoolingWithArgmax2D(2)(x)
    t_pooled, t_indices = torch.nn.functional.max_pool2d(_nchw(x), 2, return_indices=True)
    np.testing.assert_array_equal(_nhwc(t_pooled), pooled.numpy())
    # keras_seg folds the channel into the index: (y * W + x) * C + c; torch's is y * W + x.
    np.testing.assert_array_equal(t_indices.numpy().transpose(0, 2, 3, 1), indices.numpy() // 5)
    values = rng.normal(size=pooled.shape).astype("float32")
    expected = MaxUnpooling2D(2)(values, indices).numpy()
    got = _nhwc(torch.nn.functional.max_unpool2d(_nchw(values), t_indices, 2))
    np.testing.assert_array_equal(got, expected)


def _calibrate_batch_norm(model, x):
    """Sets every moving mean/variance to the statistics of ``x`` (one training pass, momentum 0).

    Random moving statistics leave ENet's 30 residual blocks unnormalised and the logits in
    the thousands; calibrated ones keep them O(1), where a tolerance means something.
    """
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def _enet_pair(num_classes=5, randomise=True, **options):
    keras.utils.set_random_seed(1)
    model = keras_seg.build_model("enet", num_classes, **options)
    if randomise:
        _randomise(model)
        _calibrate_batch_norm(model, np.random.default_rng(3).normal(size=(2, 64, 96, 3)).astype("float32"))
    return model, copy_keras_weights(model, TorchENet(num_classes, **options))


@pytest.mark.parametrize("randomise", [True, False], ids=["random", "keras_init"])
def test_enet_logits_equal_keras(randomise):
    # Full-size ENet, every bottleneck kind. "keras_init" keeps Keras' initial PReLU slopes
    # of 0, so the pooled maps hold many exact zeros: tied maxima in the argmax pooling that
    # the decoder's unpooling depends on. 137x150 pads to 144x152, whose 1/8-scale map
    # (18x19) is wide enough for the dilation-16 bottlenecks to reach beyond their centre tap.
    model, twin = _enet_pair(randomise=randomise)
    twin.eval()
    rng = np.random.default_rng(2)
    for shape in [(2, 64, 96, 3), (1, 137, 150, 3)]:
        x = rng.normal(size=shape).astype("float32")
        expected = model(x, training=False).numpy()
        with torch.inference_mode():
            got = _nhwc(twin(_nchw(x)))
        assert got.shape == expected.shape == shape[:3] + (5,)
        scale = np.abs(expected).max()
        assert 0.1 < scale < 100  # neither vacuous zeros nor an exploded network
        np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=1e-4)


def test_enet_training_loss_and_step_equal_keras():
    # Training mode (batch statistics) with the spatial dropout off on both sides (its random
    # masks differ): the class-weighted loss with ignored pixels, one SGD step with momentum
    # (gradients through PReLU, unpooling and the transposed convolutions), the loss again.
    # One bottleneck per stage but all eight kinds of stage 2: eager Keras training is slow.
    options = dict(stage1_blocks=1, stage23_blocks=8, stage4_blocks=1, stage5_blocks=1)
    model, twin = _enet_pair(num_classes=4, **options)
    for layer in model.layers:
        if isinstance(layer, keras.layers.SpatialDropout2D):
            layer.rate = 0.0
    for m in twin.modules():
        if isinstance(m, torch.nn.Dropout2d):
            m.p = 0.0
    twin.train()
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 64, 96, 3)).astype("float32")
    y = rng.integers(0, 4, size=(2, 64, 96)).astype("int32")
    y[rng.random(y.shape) < 0.1] = 255
    class_weights = [0.5, 1.0, 2.0, 4.0]
    xt, yt = _nchw(x), torch.from_numpy(y.astype(np.int64))
    before = {k: v.detach().clone() for k, v in twin.named_parameters()}

    def keras_loss():
        return weighted_pixel_cross_entropy(y, model(x, training=True), num_classes=4, ignore_label=255,
                                            class_weights=class_weights)

    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_weights), ignore_index=255)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    with tf.GradientTape() as tape:
        loss = keras_loss()
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    torch_opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    t_loss = loss_fn(twin(xt), yt)
    t_loss.backward()
    torch_opt.step()
    np.testing.assert_allclose(t_loss.item(), float(loss), rtol=1e-5)

    # The updates: Keras' updated weights copied into a fresh twin, against the trained twin.
    stepped = dict(copy_keras_weights(model, TorchENet(4, **options)).named_parameters())
    keras_delta = np.concatenate([(stepped[k] - v).detach().numpy().ravel() for k, v in before.items()])
    torch_delta = np.concatenate([(p - before[k]).detach().numpy().ravel() for k, p in twin.named_parameters()])
    assert np.linalg.norm(keras_delta) > 1e-3  # the step moved the weights
    # Float32 rounding alone moves this update by 1-2 %: against a float64 Keras run of the same
    # step, Keras's float32 update is 1.0 % off with the fused batch norm (keras_seg's) and 2.1 %
    # with Keras 3's composite one. A wrong layer (PReLU slopes, dilation, unpooling) is O(1).
    assert np.linalg.norm(torch_delta - keras_delta) < 3e-2 * np.linalg.norm(keras_delta)
    with torch.no_grad():
        second = loss_fn(twin(xt), yt).item()
    assert abs(second - t_loss.item()) > 1e-4
    np.testing.assert_allclose(second, float(keras_loss()), rtol=1e-4)


def test_enet_copy_refuses_a_wrong_prelu():
    model = keras_seg.build_model("enet", 5, **keras_seg.tiny_options("enet"))
    twin = TorchENet(5, **keras_seg.tiny_options("enet"))
    twin.bottleneck1_0_1_prelu = torch.nn.PReLU()  # one shared slope instead of one per channel
    with pytest.raises(ValueError, match=r"bottleneck1_0_1_prelu.*alpha has Keras shape \(4,\)"):
        copy_keras_weights(model, twin)


def test_compare_torch_size_takes_a_side_or_height_and_width():
    from benchmarks.compare_torch import _size

    assert _size("256") == (256, 256)
    assert _size("352,480") == (352, 480)
    for bad in ("352,", "0,4", "a", "1,2,3"):
        with pytest.raises(argparse.ArgumentTypeError, match="S or H,W"):
            _size(bad)


@pytest.mark.slow
def test_compare_torch_runs_tiny_enet_end_to_end(tmp_path):
    from benchmarks.compare_torch import main

    results = tmp_path / "RESULTS.md"
    text = main(["--models", "enet", "--tiny", "--size", "24,40", "--batch", "2", "--rounds", "1", "--no_xla",
                 "--num_classes", "4", "--class_weights", "enet", "--section", "pytorch-enet",
                 "--results", str(results)])
    assert "| enet (tiny) | 24x40 | 2 | training: our loop |" in text
    assert "<!-- begin pytorch-enet -->" in results.read_text()
