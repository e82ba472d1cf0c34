"""DeepLab v2/v3, PSPNet, RefineNet and LinkNet: structure, auxiliary outputs, backbone options,
golden parameter counts."""

import keras
import numpy as np
import pytest

import keras_seg
from keras_seg.models.backbones.resnet import build_resnet_backbone


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ------------------------------------------------------------------ auxiliary outputs


def test_pspnet_declares_its_auxiliary_loss_weight():
    assert keras_seg.get_spec("pspnet").aux_weights == {"aux": 0.4}


@pytest.mark.parametrize("name", [n for n in keras_seg.list_models() if keras_seg.get_spec(n).aux_weights])
def test_aux_outputs_are_full_resolution_logits_named_as_declared(name):
    spec = keras_seg.get_spec(name)
    keras.utils.set_random_seed(0)
    model = keras_seg.build_model(name, 4, **keras_seg.tiny_options(name), aux_outputs=True)
    outputs = [np.asarray(t) for t in model(np.zeros((1, 37, 29, 3), "float32"), training=False)]
    # Every declared auxiliary output, in order; a configuration may build fewer of them (a
    # depth-2 U-Net++ has heads L1, L2 only), which training matches by name (aux_weights_for).
    assert model.output_names[0] == "logits" and len(outputs) == len(model.output_names) >= 2
    assert model.output_names[1:] == [n for n in spec.aux_weights if n in model.output_names[1:]]
    assert spec.aux_weights_for(model.output_names) == [spec.aux_weights[n] for n in model.output_names[1:]]
    for out in outputs:
        assert out.shape == (1, 37, 29, 4) and out.dtype == np.float32

    # The weights the training loop takes from the registry apply to those outputs.
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss={n: keras.losses.SparseCategoricalCrossentropy(from_logits=True) for n in model.output_names},
        loss_weights={"logits": 1.0, **{n: spec.aux_weights[n] for n in model.output_names[1:]}},
        run_eagerly=True,  # the traced step is covered by the contract tests
    )
    y = np.random.default_rng(0).integers(0, 4, size=(1, 37, 29))
    loss = model.train_on_batch(np.zeros((1, 37, 29, 3), "float32"), {n: y for n in model.output_names})
    assert np.all(np.isfinite(loss))


@pytest.mark.parametrize("name", [n for n in keras_seg.list_models() if keras_seg.get_spec(n).aux_weights])
def test_default_has_a_single_output(name):
    model = keras_seg.build_model(name, 4, **keras_seg.tiny_options(name))
    assert len(model.outputs) == 1 and model.output_names == ["logits"]


# ------------------------------------------------------------------ structure


def _tiny_model(name, **kwargs):
    return keras_seg.build_model(name, 3, **{**keras_seg.tiny_options(name), **kwargs})


def test_deeplab_v2_aspp_l_sums_four_rates_at_output_stride_8():
    model = _tiny_model("deeplab_v2")
    branches = [model.get_layer(f"aspp_r{r}_conv") for r in (6, 12, 18, 24)]
    assert [b.dilation_rate for b in branches] == [(r, r) for r in (6, 12, 18, 24)]
    assert model.get_layer("aspp_add").input[0].shape[1:] == (None, None, 3)
    assert model.get_layer("conv4_block1_2_conv").dilation_rate == (2, 2)
    assert model.get_layer("conv5_block1_2_conv").dilation_rate == (4, 4)


@pytest.mark.parametrize("output_stride, rates, grid", [(16, (6, 12, 18), (2, 4, 8)), (8, (12, 24, 36), (4, 8, 16))])
def test_deeplab_v3_rates_double_at_output_stride_8(output_stride, rates, grid):
    model = _tiny_model("deeplab_v3", backbone_blocks=(1, 1, 1, 3), multi_grid=(1, 2, 4), output_stride=output_stride)
    assert [model.get_layer(f"aspp_r{r}_conv").dilation_rate[0] for r in rates] == list(rates)
    assert tuple(model.get_layer(f"conv5_block{i}_2_conv").dilation_rate[0] for i in (1, 2, 3)) == grid
    for branch in ("1x1", *[f"r{r}" for r in rates], "pool", "proj"):
        assert isinstance(model.get_layer(f"aspp_{branch}_bn"), keras.layers.BatchNormalization)


def test_deeplab_v3_without_image_pooling():
    model = _tiny_model("deeplab_v3", image_pooling=False)
    assert "aspp_pool_conv" not in [layer.name for layer in model.layers]


def test_pspnet_pyramid_has_the_four_bins_at_a_quarter_of_the_width():
    model = _tiny_model("pspnet")
    width = model.get_layer("conv5_block1_out").output.shape[-1]
    for b in (1, 2, 3, 6):
        assert model.get_layer(f"ppm_b{b}_pool").bins == b
        assert model.get_layer(f"ppm_b{b}_conv").filters == width // 4
    assert model.get_layer("ppm_concat").output.shape[-1] == 2 * width
    assert model.get_layer("conv4_block1_2_conv").dilation_rate == (2, 2)


def test_refinenet_cascade_goes_from_stride_32_to_4():
    model = _tiny_model("refinenet")
    for block, stage in zip((4, 3, 2, 1), (5, 4, 3, 2)):
        assert model.get_layer(f"refine{block}_adapt_conv").input.shape[-1] == (
            model.get_layer(f"conv{stage}_block1_out").output.shape[-1]
        )
    assert "refine4_fuse_add" not in [layer.name for layer in model.layers]
    assert isinstance(model.get_layer("refine1_crp_pool1"), keras.layers.MaxPooling2D)
    assert model.get_layer("refine1_crp_pool1").pool_size == (5, 5)


def test_linknet_decoder_reduces_channels_by_four():
    model = _tiny_model("linknet")
    assert model.get_layer("dec4_conv1").filters == model.get_layer("conv5_block1_out").output.shape[-1] // 4
    assert model.get_layer("dec4_conv3").filters == model.get_layer("conv4_block1_out").output.shape[-1]
    assert isinstance(model.get_layer("dec4_up"), keras.layers.Conv2DTranspose)


def test_linknet_links_and_strides_follow_the_authors_code():
    # e-lab/pytorch-linknet models/linknet.py: decoder1 = Decoder(64, 64, 3, stride 1) and
    # d1 = x + decoder1(d2), x the initial block's output; decoders 2-4 upsample x2 and add the
    # outputs of encoders 1-3. The classifier's two x2 full convolutions end at the input size.
    model = _tiny_model("linknet")
    assert model.get_layer("dec1_up").strides == (1, 1)
    assert [model.get_layer(f"dec{i}_up").strides for i in (2, 3, 4)] == [(2, 2)] * 3
    x = np.random.default_rng(0).normal(size=(1, 64, 96, 3)).astype("float32")
    probe = keras.Model(model.input, [model.get_layer(n).output for n in (
        "pool1_pool", "link1_pool", "dec1_3_relu", "dec1_add", "conv2_block1_out", "logits_full")])
    pool, link, dec1, add1, enc1, full = probe(x, training=False)
    np.testing.assert_array_equal(np.asarray(link), np.asarray(pool))  # the input of encoder 1
    assert dec1.shape == pool.shape == enc1.shape  # decoder 1 stays at stride 4
    np.testing.assert_allclose(np.asarray(add1), np.asarray(dec1) + np.asarray(pool), rtol=1e-6, atol=1e-6)
    assert full.shape[1:3] == (64, 96)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("deeplab_v2", dict(output_stride=4), "Received: output_stride=4"),
        ("deeplab_v2", dict(atrous_rates=(6, 0)), "Received: atrous_rates"),
        ("deeplab_v3", dict(aspp_filters=0), "Received: aspp_filters=0"),
        ("deeplab_v3", dict(multi_grid=(1, 2, 4)), "Received: multi_grid"),
        ("pspnet", dict(bins=()), "Received: bins=()"),
        ("pspnet", dict(dropout=1.0), "Received: dropout=1.0"),
        ("pspnet", dict(aux_outputs="yes"), "Received: aux_outputs='yes'"),
        ("refinenet", dict(filters=(8, 8)), "Received: filters"),
        ("refinenet", dict(crp_blocks=0), "Received: crp_blocks=0"),
        ("linknet", dict(backbone="vgg16"), "Received: backbone='vgg16'"),
    ],
)
def test_bad_options_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny_model(name, **kwargs)


# ------------------------------------------------------------------ backbone options


def test_unknown_backbone_raises_in_builders():
    with pytest.raises(ValueError, match="Received: backbone='resnet152'"):
        keras_seg.build_model("deeplab_v3", 3, backbone="resnet152")


def test_imagenet_weights_for_basic_block_resnets_are_refused():
    with pytest.raises(ValueError, match="No ImageNet weights.*resnet18"):
        keras_seg.build_model("linknet", 3, backbone_weights="imagenet")


def test_backbone_weights_refused_for_non_standard_sizes():
    with pytest.raises(ValueError, match="standard resnet50"):
        keras_seg.build_model("pspnet", 3, **keras_seg.tiny_options("pspnet"), backbone_weights="r.weights.h5")


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    keras.utils.set_random_seed(7)
    model = build_resnet_backbone("resnet18")
    path = tmp_path_factory.mktemp("r18") / "resnet18.weights.h5"
    model.save_weights(str(path))
    return str(path), model.get_layer("conv5_block2_2_conv").get_weights()[0]


@pytest.mark.parametrize(
    "name, options",
    [
        ("deeplab_v2", {}),
        ("deeplab_v3", dict(multi_grid=(1, 2), aspp_filters=8)),
        ("pspnet", dict(head_filters=8)),
        ("refinenet", dict(filters=(8, 8, 8, 8), adapt_rcus=1, crp_blocks=1, output_rcus=1)),
        ("linknet", {}),
    ],
)
def test_builders_load_backbone_weights(name, options, resnet18_weights):
    path, kernel = resnet18_weights
    model = keras_seg.build_model(name, 3, backbone="resnet18", backbone_weights=path, **options)
    np.testing.assert_array_equal(model.get_layer("conv5_block2_2_conv").get_weights()[0], kernel)


@pytest.mark.parametrize("name", ["pspnet", "linknet"])
def test_whole_model_weights_option(name, tmp_path):
    x = np.random.default_rng(3).normal(size=(1, 35, 29, 3)).astype("float32")
    keras.utils.set_random_seed(1)
    model = _tiny_model(name)
    path = str(tmp_path / f"{name}.weights.h5")
    model.save_weights(path)
    keras.utils.set_random_seed(2)
    again = _tiny_model(name, weights=path)
    np.testing.assert_array_equal(np.asarray(again(x, training=False)), np.asarray(model(x, training=False)))
    with pytest.raises(ValueError, match="Received: weights="):
        _tiny_model(name, weights=str(tmp_path / "missing.weights.h5"))


# ------------------------------------------------------------------ parameter counts


TINY_PARAMS = {
    "deeplab_v2": 159_676,
    "deeplab_v3": 252_515,
    "pspnet": 272_419,
    "refinenet": 181_835,
    "linknet": 96_799,
}


@pytest.mark.parametrize("name", sorted(TINY_PARAMS))
def test_tiny_parameter_counts(name):
    assert _tiny_model(name).count_params() == TINY_PARAMS[name]


# keras.applications ResNet-101 has conv biases that the torch/Caffe ResNets lack: 52,672
# trainable weights (42,552,832 trainable in keras vs 42,500,160 in torchvision's resnet101
# without fc). Counts from torch/Caffe references are compared after adding them.
KERAS_R101_BIASES = 52_672
R101_TRAINABLE = 42_552_832


@pytest.mark.slow
def test_deeplab_v2_full_size_parameters():
    # Paper (ResNet-101 + ASPP-L, VOC's 21 classes): four 3x3 convolutions 2048 -> 21 with bias.
    model = keras_seg.build_model("deeplab_v2", 21)
    assert _trainable(model) == R101_TRAINABLE + 4 * (3 * 3 * 2048 * 21 + 21)


@pytest.mark.slow
def test_deeplab_v3_full_size_parameters():
    # torchvision docs: deeplabv3_resnet101 has 60,996,202 parameters (21 classes). Its head adds,
    # to the paper's, a 3x3 256->256 conv + BN (590,336) and the FCN aux head on stage 4
    # (3x3 1024->256 + BN + 1x1 256->21: 2,365,205).
    model = keras_seg.build_model("deeplab_v3", 21)
    assert _trainable(model) == 60_996_202 - 590_336 - 2_365_205 + KERAS_R101_BIASES == 58_093_333


@pytest.mark.slow
def test_pspnet_full_size_parameters():
    # hszhao/semseg model/pspnet.py (ResNet-101, bins 1/2/3/6, 21 classes): PPM 4 x (1x1 2048->512
    # + BN), cls 3x3 4096->512 + BN + 1x1 512->21, aux 3x3 1024->256 + BN + 1x1 256->21.
    ppm = 4 * (2048 * 512 + 2 * 512)
    cls = 9 * 4096 * 512 + 2 * 512 + 512 * 21 + 21
    aux = 9 * 1024 * 256 + 2 * 256 + 256 * 21 + 21
    assert _trainable(keras_seg.build_model("pspnet", 21)) == R101_TRAINABLE + ppm + cls == 65_637_397
    assert _trainable(keras_seg.build_model("pspnet", 21, aux_outputs=True)) == R101_TRAINABLE + ppm + cls + aux


@pytest.mark.slow
def test_refinenet_full_size_parameters():
    # DrSleep/refinenet-pytorch rf101 (the released RefineNet-101 VOC model) has 118,052,437
    # parameters with torchvision's ResNet-101; Light-Weight RefineNet (Nekrasov et al., BMVC
    # 2018, Table 1) reports 118.1M for RefineNet-101.
    assert _trainable(keras_seg.build_model("refinenet", 21)) == 118_052_437 + KERAS_R101_BIASES


def test_refinenet_refine_path_is_initialised_like_the_released_pytorch_port():
    # PyTorch's default conv init (kaiming_uniform, a=sqrt(5)): uniform on +-1/sqrt(fan_in),
    # variance 1 / (3 fan_in). Keras's Glorot default would be variance 1 / fan_in here.
    keras.utils.set_random_seed(0)
    model = keras_seg.build_model("refinenet", 3, filters=(64, 64, 64, 64), backbone="resnet18",
                                  backbone_width=16, adapt_rcus=1, crp_blocks=1, output_rcus=1)
    for name in ("refine4_adapt_rcu1_conv1", "refine2_crp_conv1", "refine1_out_rcu1_conv2"):
        kernel = np.asarray(model.get_layer(name).kernel)
        fan_in = int(np.prod(kernel.shape[:3]))
        assert np.abs(kernel).max() <= 1 / np.sqrt(fan_in)
        assert kernel.var() == pytest.approx(1 / (3 * fan_in), rel=0.05), name
    # Every layer draws its own values (one shared unseeded Keras initializer repeats them).
    same_shape = [np.asarray(model.get_layer(f"refine{i}_adapt_rcu1_conv1").kernel) for i in (1, 2, 3)]
    assert not np.allclose(same_shape[0], same_shape[1]) and not np.allclose(same_shape[1], same_shape[2])


@pytest.mark.slow
def test_refinenet_101_trains_from_random_weights_at_the_released_learning_rate():
    # SGD momentum 0.9 at 5e-4 (guosheng/refinenet). With Glorot init in the refine path the
    # random-weight logits reach |35| at 64x64, the first loss is ~686 and the third step NaN.
    import tensorflow as tf
    from keras_seg.training import make_train_step

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = keras_seg.build_model("refinenet", 21, input_shape=(64, 64, 3))
        optimizer = keras.optimizers.SGD(5e-4, momentum=0.9)
        optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(2, 64, 64, 3)).astype("float32"), rng.integers(0, 21, (2, 64, 64)).astype("int32"),
             np.ones((2, 64, 64), "float32"))
    it = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
    step = make_train_step(model, optimizer, strategy, 21, 255)
    losses = [float(step(it)) for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[0] < 10 and losses[-1] < losses[0], losses


@pytest.mark.slow
def test_linknet_full_size_parameters():
    # Paper, Sec. 4 / Table 3: 11.5 million parameters (ResNet-18 encoder, CamVid's 11 classes).
    model = keras_seg.build_model("linknet", 11)
    assert round(_trainable(model) / 1e6, 1) == 11.5
    assert _trainable(model) == 11_534_603
