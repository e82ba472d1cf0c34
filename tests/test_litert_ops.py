"""benchmarks.litert_ops: XNNPACK delegation per node, nodes cut out and timed alone."""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import litert_ops

RNG = np.random.default_rng(0)
W1 = tf.constant(RNG.normal(size=(3, 3, 3, 4)).astype("float32"))
W2 = tf.constant(RNG.normal(size=(1, 1, 4, 2)).astype("float32"))


@tf.function(input_signature=[tf.TensorSpec([1, 8, 10, 3], tf.float32)])
def _conv_lrn_conv(x):
    """CONV_2D -> LOCAL_RESPONSE_NORMALIZATION (no XNNPACK kernel) -> CONV_2D, -> TANH."""
    y = tf.nn.conv2d(x, W1, 1, "SAME")
    z = tf.nn.local_response_normalization(y, 2, 1.0, 1e-2, 0.75)
    return tf.tanh(tf.nn.conv2d(z, W2, 1, "SAME"))


@pytest.fixture(scope="module")
def blob():
    conv = tf.lite.TFLiteConverter.from_concrete_functions([_conv_lrn_conv.get_concrete_function()], _conv_lrn_conv)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv.convert()


def test_delegation_splits_the_graph_around_an_op_xnnpack_cannot_run(blob):
    nodes, partitions = litert_ops.delegation(blob)
    assert [n.op for n in nodes] == ["CONV_2D", "LOCAL_RESPONSE_NORMALIZATION", "CONV_2D", "TANH"]
    assert [n.delegated for n in nodes] == [True, False, True, True]
    assert partitions == 2
    # The convolution before the LRN is one partition; the convolution and tanh after it another.
    assert nodes[0].partition != nodes[2].partition and nodes[2].partition == nodes[3].partition
    assert all(n.dtype == "float32" for n in nodes)


def test_extracted_node_computes_what_it_computes_in_the_model(blob):
    x = RNG.normal(size=(1, 8, 10, 3)).astype("float32")
    whole = litert_ops._interpreter(blob, 1, xnnpack=False, keep_all=True)  # pylint: disable=protected-access
    whole.set_tensor(whole.get_input_details()[0]["index"], x)
    whole.invoke()
    want_conv = tf.nn.conv2d(x, W1, 1, "SAME").numpy()
    piece, inputs = litert_ops.extract_nodes(blob, [1])  # the LRN alone
    it = litert_ops._interpreter(piece, 1, xnnpack=False)  # pylint: disable=protected-access
    assert len(inputs) == 1 and len(it.get_input_details()) == 1
    np.testing.assert_allclose(whole.get_tensor(inputs[0]), want_conv, rtol=1e-5, atol=1e-5)
    it.set_tensor(it.get_input_details()[0]["index"], whole.get_tensor(inputs[0]))
    it.invoke()
    want = tf.nn.local_response_normalization(want_conv, 2, 1.0, 1e-2, 0.75).numpy()
    np.testing.assert_allclose(it.get_tensor(it.get_output_details()[0]["index"]), want, rtol=1e-4, atol=1e-5)
    # Two nodes at once: their inner tensor is not an output, the weights come along.
    pair, pair_inputs = litert_ops.extract_nodes(litert_ops.parse_model(blob), [2, 3])
    it = litert_ops._interpreter(pair, 1)  # pylint: disable=protected-access
    it.set_tensor(it.get_input_details()[0]["index"], whole.get_tensor(pair_inputs[0]))
    it.invoke()
    np.testing.assert_allclose(it.get_tensor(it.get_output_details()[0]["index"]), _conv_lrn_conv(x).numpy(),
                               rtol=1e-4, atol=1e-4)
    assert len(it.get_output_details()) == 1


def test_profile_times_the_nodes_and_groups_them(blob):
    x = litert_ops.random_input(blob)
    assert x.shape == (1, 8, 10, 3) and x.dtype == np.float32
    nodes, partitions = litert_ops.profile_ops(blob, x, threads=1, iters=1, only_undelegated=True)
    assert partitions == 2
    assert [n.ms is not None for n in nodes] == [False, True, False, False] and nodes[1].ms > 0
    assert litert_ops.by_op(nodes) == {("LOCAL_RESPONSE_NORMALIZATION", "float32"): (1, nodes[1].ms)}
    nodes, _ = litert_ops.profile_ops(blob, x, threads=1, iters=1)
    grouped = litert_ops.by_op(nodes, delegated=True)
    assert set(grouped) == {("CONV_2D", "float32"), ("TANH", "float32")} and grouped[("CONV_2D", "float32")][0] == 2
    assert litert_ops.time_models([blob, blob], x, threads=1, rounds=2)[1] > 0
