"""ResNet backbones: keras.applications weight loading by name, output stride, multi-grid, errors."""

import keras
import numpy as np
import pytest

from keras_seg.models.backbones.resnet import build_resnet_backbone, load_resnet_weights, resnet, resnet_stages

TINY = dict(blocks=(1, 1, 1, 3), width=8)


def _randomize(model, seed):
    """Gives every weight, BN moving statistics included, a distinct random value."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = rng.uniform(0.5, 1.5, size=w.shape) if "variance" in w.path else rng.normal(size=w.shape) * 0.05
        w.assign(value.astype("float32"))


def _check_loads_by_name(arch, app, tmp_path, weights=None):
    ref = app(include_top=False, weights=None)
    _randomize(ref, seed=3)
    path = tmp_path / f"{arch}.weights.h5"
    ref.save_weights(str(path))

    ours = load_resnet_weights(build_resnet_backbone(arch), arch, weights or str(path))
    weighted = [layer for layer in ref.layers if layer.weights]
    assert len(weighted) == len([layer for layer in ours.layers if layer.weights])
    for layer in weighted:
        for a, b in zip(ours.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert ours.count_params() == ref.count_params()
    # Same names and weights are not enough: every layer must compute the same function of
    # the same inputs.
    assert _graph(ours) == _graph(ref)


_COMPARED = ("filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias", "epsilon",
             "axis", "pool_size", "activation")


def _sources(node_args):
    """Names of the layers whose outputs feed a serialized inbound node."""
    if isinstance(node_args, dict):
        if node_args.get("class_name") == "__keras_tensor__":
            return [node_args["config"]["keras_history"][0]]
        return [n for v in node_args.values() for n in _sources(v)]
    if isinstance(node_args, (list, tuple)):
        return [n for v in node_args for n in _sources(v)]
    return []


def _graph(model):
    """{layer name: (class, compared config values, input layer names)}, the input named 'input'."""
    config = model.get_config()
    input_layers = config["input_layers"]
    if isinstance(input_layers[0], str):  # a single input is serialized unnested
        input_layers = [input_layers]
    inputs = {layer[0] for layer in input_layers}
    graph = {}
    for layer in config["layers"]:
        if layer["name"] in inputs:
            continue
        cfg = dict(layer["config"])
        if cfg.get("axis") == -1:  # BatchNormalization over the channels of 4-D features
            cfg["axis"] = 3
        values = tuple(cfg.get(k) for k in _COMPARED)
        sources = tuple("input" if n in inputs else n for n in _sources(layer["inbound_nodes"]))
        # keras_seg's BatchNorm is BatchNormalization with a fused training kernel (same math,
        # tests/models/test_batch_norm.py); everything else must be the same class.
        cls = "BatchNormalization" if layer["class_name"] == "BatchNorm" else layer["class_name"]
        graph[layer["name"]] = (cls, values, sources)
    return graph


def test_resnet50_loads_keras_applications_weights_by_name(tmp_path, monkeypatch):
    """Through backbone_weights="imagenet", with the download replaced by a local file."""
    fetched = []

    def fake_get_file(fname, origin, cache_subdir, file_hash):
        fetched.append((fname, origin, cache_subdir, file_hash))
        return str(tmp_path / "resnet50.weights.h5")

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    _check_loads_by_name("resnet50", keras.applications.ResNet50, tmp_path, weights="imagenet")
    assert fetched == [(
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "models",
        "4d473c1dd8becc155b73f8504c6f6626",  # keras.applications.resnet WEIGHTS_HASHES
    )]


@pytest.mark.slow
def test_resnet101_loads_keras_applications_weights_by_name(tmp_path):
    _check_loads_by_name("resnet101", keras.applications.ResNet101, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, trainable",
    [
        # torchvision docs: resnet18 11,689,512 and resnet34 21,797,672 parameters, minus the
        # 1000-way fc (512 * 1000 + 1000 = 513,000). No conv bias, as in the original networks.
        ("resnet18", 11_689_512 - 513_000),
        ("resnet34", 21_797_672 - 513_000),
        # keras.applications ResNet50/101(include_top=False): 23,587,712 / 42,658,176 in all,
        # i.e. keras docs' 25.6M / 44.7M with the 2,049,000-parameter top; minus the BN moving
        # statistics (53,120 / 105,344), which Keras counts as non-trainable weights.
        ("resnet50", 23_587_712 - 53_120),
        ("resnet101", 42_658_176 - 105_344),
    ],
)
def test_full_size_trainable_parameter_counts(arch, trainable):
    model = build_resnet_backbone(arch)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize(
    "output_stride, strides",
    [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]), (8, [2, 4, 8, 8, 8])],
)
def test_output_stride_by_dilation(arch, output_stride, strides):
    inputs = keras.Input((64, 96, 3))
    stages = resnet_stages(inputs, arch, output_stride=output_stride, **TINY)
    assert [s for s, _ in stages] == strides
    for stride, tensor in stages:
        assert tensor.shape[1:3] == (64 // stride, 96 // stride)
    features = resnet(keras.Input((64, 96, 3)), arch, output_stride=output_stride, **TINY)
    assert sorted(features) == sorted(set(strides))


@pytest.mark.parametrize("output_stride, rates", [(32, (1, 2, 4)), (16, (2, 4, 8)), (8, (4, 8, 16))])
def test_multi_grid_dilates_the_units_of_the_last_stage(output_stride, rates):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, resnet(inputs, "resnet50", output_stride=output_stride, multi_grid=(1, 2, 4), **TINY))
    got = tuple(model.get_layer(f"conv5_block{i}_2_conv").dilation_rate[0] for i in (1, 2, 3))
    assert got == rates
    conv4_rate = model.get_layer("conv4_block1_2_conv").dilation_rate[0]
    assert conv4_rate == (2 if output_stride == 8 else 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output_stride=4), "Received: output_stride=4"),
        (dict(output_stride=12), "Received: output_stride=12"),
        (dict(multi_grid=(1, 2)), "Received: multi_grid=\\(1, 2\\)"),
        (dict(blocks=(1, 1, 1)), "Received: backbone_blocks"),
        (dict(width=0), "Received: backbone_width=0"),
    ],
)
def test_bad_backbone_arguments_raise(kwargs, match):
    args = {**TINY, **kwargs}
    with pytest.raises(ValueError, match=match):
        resnet(keras.Input((None, None, 3)), "resnet50", **args)


def test_missing_backbone_weights_file_raises(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_resnet_weights(None, "resnet18", str(tmp_path / "absent.weights.h5"))


def test_imagenet_download_failure_gives_a_clear_message(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ValueError, match="Could not download the ImageNet weights of resnet50.*network"):
        load_resnet_weights(None, "resnet50", "imagenet")


def test_backbone_registry_one_interface_for_every_encoder():
    """Builders pick encoders by name from one registry: features by stride, checks, weights."""
    from keras_seg.models.backbones import get_backbone, list_backbones

    assert list_backbones() == ["resnet101", "resnet18", "resnet34", "resnet50", "vgg16"]
    assert list_backbones("resnet") == ["resnet101", "resnet18", "resnet34", "resnet50"]
    x = keras.Input((64, 64, 3))
    tiny = dict(blocks=(1, 1, 1, 1), width=8)
    for stride, expected in ((32, [2, 4, 8, 16, 32]), (8, [2, 4, 8])):
        feats = get_backbone("resnet18").features(x, output_stride=stride, **tiny)
        assert sorted(feats) == expected
        assert feats[stride].shape[1:] == (64 // stride, 64 // stride, 8 * 8)  # stage 5: width * 2**3
    feats = get_backbone("vgg16").features(x, blocks=((4, 1), (4, 1)))
    assert sorted(feats) == [2, 4] and feats[4].shape[1:] == (16, 16, 4)
    with pytest.raises(ValueError, match=r"backbone must be a resnet backbone, one of \['resnet101'.*"
                                         r"Received: backbone='vgg16'"):
        get_backbone("vgg16", family="resnet")
    with pytest.raises(ValueError, match=r"Did you mean \['resnet50'"):
        get_backbone("resnet05")
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        get_backbone("resnet50").check(output_stride=4)
    with pytest.raises(ValueError, match="No ImageNet weights are published for resnet18"):
        get_backbone("resnet18").check(weights="imagenet")
    assert get_backbone("resnet50").imagenet and not get_backbone("resnet34").imagenet
    assert get_backbone("resnet18").load_weights("model", None) == "model"  # None: nothing to load
