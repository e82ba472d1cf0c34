"""U-Net++: the authors' parameter counts, nested dense skips, deep supervision, and pruned heads."""

import keras
import numpy as np
import pytest

import keras_seg
from keras_seg.checkpoints import inference_model
from keras_seg.registry import parse_inference_options

# --------------------------------------------------------------- the authors' parameter counts
#
# MrGiovanni/UNetPlusPlus, model.py at commit 6bc3551aa11a8855159b617e0d5ca107e54207ac, the
# docstrings above the builders (Keras' model.summary() of each, img_rows x img_cols x 1 input,
# num_class=1): "Standard U-Net ... Total params: 7,759,521", "wU-Net for comparison ... Total
# params: 9,282,246" and "Standard UNet++ ... Total params: 9,041,601". The paper's Table 1
# (arXiv:1807.10165) rounds them to 7.76M and 9.04M; it lists the wide U-Net as 9.13M, which
# the same code's 9,282,246 does not round to. U-Net and wide U-Net are our `unet` at base
# widths 32 and 35 (the authors' nb_filter 32..512 and 35..560).
AUTHORS_UNET = 7_759_521
AUTHORS_WIDE_UNET = 9_282_246
AUTHORS_UNET_PP = 9_041_601


def test_parameter_counts_match_the_authors_code():
    gray = (None, None, 1)
    assert keras_seg.build_model("unet_pp", 1, input_shape=gray).count_params() == AUTHORS_UNET_PP
    assert keras_seg.build_model("unet", 1, input_shape=gray, base_width=32).count_params() == AUTHORS_UNET
    assert keras_seg.build_model("unet", 1, input_shape=gray, base_width=35).count_params() == AUTHORS_WIDE_UNET


# An independent count of the nested graph, from the paper's equation for X(i, j) alone: a node
# concatenates the up-convolution of X(i+1, j-1) (f_i channels) with its j predecessors X(i, 0..j-1).
def _unit(cin, f):
    return 9 * cin * f + f + 9 * f * f + f


def _reference_count(filters, in_ch, classes, heads):
    """Parameters of the nodes X(i, j) with i + j <= max(heads), plus the given heads."""
    k_max = max(heads)
    total = 0
    for i in range(k_max + 1):
        total += _unit(in_ch if i == 0 else filters[i - 1], filters[i])  # X(i, 0)
    for i in range(k_max):
        for j in range(1, k_max - i + 1):
            total += 4 * filters[i + 1] * filters[i] + filters[i]  # 2x2 up-convolution from X(i+1, j-1)
            total += _unit(filters[i] * (j + 1), filters[i])  # [up, X(i, 0), ..., X(i, j-1)]
    return total + len(heads) * (filters[0] * classes + classes)


@pytest.mark.parametrize("head", ["L1", "L2", "L3", "L4", "mean"])
def test_pruned_and_deeply_supervised_counts_follow_the_nested_graph(head):
    model = keras_seg.build_model("unet_pp", 11, deep_supervision=True, head=head)
    heads = [1, 2, 3, 4] if head == "mean" else [int(head[1])]
    assert model.count_params() == _reference_count((32, 64, 128, 256, 512), 3, 11, heads)


def test_pruned_head_counts_shrink_as_in_the_paper():
    # The authors' pruning figure (MrGiovanni/UNetPlusPlus, Figures/fig_inference_time.png, the same
    # commit): "UNet++ L1 Param = 0.1M", "L2 ... 0.5M", "L3 ... 2.2M", "L4 ... 9.0M" (1 class, gray).
    counts = [keras_seg.build_model("unet_pp", 1, input_shape=(None, None, 1), deep_supervision=True,
                                    head=f"L{k}").count_params() for k in (1, 2, 3, 4)]
    assert [round(c / 1e6, 1) for c in counts] == [0.1, 0.5, 2.2, 9.0]


def test_skip_pathways_are_dense():
    model = keras_seg.build_model("unet_pp", 2)
    for i, j in [(0, 1), (0, 4), (1, 3), (3, 1)]:
        concat = model.get_layer(f"x{i}_{j}_concat")
        sources = [t._keras_history[0].name for t in concat.input]  # pylint: disable=protected-access
        assert sources[0] == f"x{i}_{j}_up"
        assert len(sources) == j + 1  # the up-convolution and all of X(i, 0) .. X(i, j-1)
        assert all(f"x{i}_{k}_" in sources[k + 1] for k in range(j))


def _tiny(**kw):
    keras.utils.set_random_seed(0)
    options = {**keras_seg.tiny_options("unet_pp"), "filters": (4, 8, 8, 8), "depth": 3, **kw}
    return keras_seg.build_model("unet_pp", 3, **options), options


def test_training_graph_returns_every_head_with_registry_weights():
    model, _ = _tiny(aux_outputs=True)
    assert model.output_names == ["logits", "aux_l1", "aux_l2"]
    assert keras_seg.get_spec("unet_pp").aux_weights_for(model.output_names) == [1.0, 1.0]
    outs = model.predict_on_batch(np.zeros((1, 19, 23, 3), "float32"))
    assert [o.shape for o in outs] == [(1, 19, 23, 3)] * 3
    plain, _ = _tiny(deep_supervision=False, aux_outputs=True)  # no heads to supervise: one output
    assert plain.output_names == ["logits"]


@pytest.mark.parametrize("head", ["L1", "L2", "L3", "mean"])
def test_inference_heads_are_views_of_the_trained_graph(head):
    full, options = _tiny(aux_outputs=True)
    x = np.random.default_rng(0).normal(size=(2, 21, 27, 3)).astype("float32")
    heads = dict(zip(["L3", "L1", "L2"], full.predict_on_batch(x)))
    config = {"model": "unet_pp", "num_classes": 3, "model_options": options}
    model = inference_model(full, config, inference_options={"head": head})
    got = model.predict_on_batch(x)
    if head == "mean":
        probs = [np.exp(h - h.max(-1, keepdims=True)) for h in heads.values()]
        want = np.log(np.mean([p / p.sum(-1, keepdims=True) for p in probs], axis=0) + 1e-12)
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(keras.ops.softmax(got).numpy().sum(-1), 1.0, atol=1e-5)
    else:
        np.testing.assert_allclose(got, heads[head], atol=1e-5)
        assert len(model.layers) < len(full.layers)  # pruned: heads and nodes it does not need are gone


def test_only_inference_options_may_change_after_training():
    full, options = _tiny(aux_outputs=True)
    config = {"model": "unet_pp", "num_classes": 3, "model_options": options}
    with pytest.raises(ValueError, match=r"no inference option \['filters'\].*\['head'\]"):
        inference_model(full, config, inference_options={"filters": (8, 8, 8, 8)})
    unet = keras_seg.build_model("unet", 3, **keras_seg.tiny_options("unet"))
    with pytest.raises(ValueError, match="inference options are none"):
        inference_model(unet, {"model": "unet", "num_classes": 3, "model_options": {}}, inference_options={"head": "L1"})


@pytest.mark.parametrize("kwargs, match", [
    (dict(head="L2"), "needs deep_supervision=True"),
    (dict(deep_supervision=True, head="L5"), r"head must be one of \('mean', 'L1', 'L2', 'L3', 'L4'\)"),
    (dict(depth=3), "depth must be len"),
    (dict(filters=(32, 0, 64)), "filters must be a list"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(activation="nope"), "activation must be a Keras activation"),
    (dict(deep_supervision="yes"), "deep_supervision must be a bool"),
])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_seg.build_model("unet_pp", 2, **kwargs)


def test_parse_inference_options():
    assert parse_inference_options(["head=L2", "k=3", "f=0.5", "b=true"]) == {"head": "L2", "k": 3, "f": 0.5, "b": True}
    assert parse_inference_options([]) == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_inference_options(["head"])
    with pytest.raises(ValueError, match="twice"):
        parse_inference_options(["head=L1", "head=L2"])
