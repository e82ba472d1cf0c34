"""keras_seg.models.blocks.BatchNorm: one fused kernel in training, Keras's numbers and weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_seg.models.blocks import FUSED_BATCH_NORM_ENV, BatchNorm


def _pair(channels, **kw):
    fused, stock = BatchNorm(**kw), keras.layers.BatchNormalization(**kw)
    rng = np.random.default_rng(1)
    for layer in (fused, stock):
        layer.build((None, None, None, channels))
    gamma, beta = rng.normal(size=channels).astype("float32"), rng.normal(size=channels).astype("float32")
    for layer in (fused, stock):
        if layer.scale:
            layer.gamma.assign(gamma)
        if layer.center:
            layer.beta.assign(beta)
    return fused, stock


@pytest.mark.parametrize("kw", [dict(momentum=0.9, epsilon=1e-3, synchronized=True),
                                dict(momentum=0.99, epsilon=1e-5, center=False, scale=False)])
def test_training_matches_keras_batch_norm(kw):
    x64 = np.random.default_rng(0).normal(2.0, 3.0, (2, 9, 11, 6))
    x = tf.constant(x64.astype("float32"))
    upstream = tf.constant(np.random.default_rng(2).normal(size=x.shape).astype("float32"))
    fused, stock = _pair(6, **kw)
    results = []
    for layer in (fused, stock):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x] + layer.trainable_variables)
        results.append((y, grads, layer.moving_mean.numpy(), layer.moving_variance.numpy()))
    (yf, gf, mf, vf), (ys, gs, ms, vs) = results
    np.testing.assert_allclose(yf, ys, atol=2e-5)
    for a, b in zip(gf, gs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Keras's update with the *biased* batch variance (the kernel returns the unbiased one).
    m = kw["momentum"]
    np.testing.assert_allclose(mf, m * 0 + (1 - m) * x64.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(vf, m * 1 + (1 - m) * x64.var((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(mf, ms, rtol=1e-5)
    np.testing.assert_allclose(vf, vs, rtol=1e-5)
    np.testing.assert_allclose(fused(x, training=False), stock(x, training=False), atol=2e-5)


def _op_types(layer, x):
    fn = tf.function(lambda t: layer(t, training=True))
    return {op.type for op in fn.get_concrete_function(x).graph.get_operations()}


def test_training_graph_has_one_fused_op_and_the_switch_turns_it_off(monkeypatch):
    x = tf.zeros((2, 4, 4, 3))
    layer = BatchNorm()
    layer.build(x.shape)
    assert "FusedBatchNormV3" in _op_types(layer, x)
    monkeypatch.setenv(FUSED_BATCH_NORM_ENV, "0")
    assert "FusedBatchNormV3" not in _op_types(layer, x)


def test_one_replica_is_fused_and_several_synchronized_replicas_use_the_parent(monkeypatch):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        layer = BatchNorm(synchronized=True)
        layer.build((None, 4, 4, 3))
    seen = []

    @tf.function
    def run(t):
        def replica(v):
            seen.append(layer._fused_applies(v, True, None))  # pylint: disable=protected-access
            return layer(v, training=True)
        return strategy.run(replica, args=(t,))

    run(tf.zeros((2, 4, 4, 3)))
    assert seen == [True]

    class TwoReplicas:  # the parent all-reduces the moments across replicas: keep its path
        num_replicas_in_sync = 2

    monkeypatch.setattr(tf.distribute, "get_replica_context", TwoReplicas)
    assert not layer._fused_applies(tf.zeros((2, 4, 4, 3)), True, None)  # pylint: disable=protected-access
    unsynced = BatchNorm(synchronized=False)
    unsynced.build((None, 4, 4, 3))
    assert unsynced._fused_applies(tf.zeros((2, 4, 4, 3)), True, None)  # pylint: disable=protected-access
    assert not unsynced._fused_applies(tf.zeros((2, 4, 4, 3)), False, None)  # pylint: disable=protected-access


def test_saves_and_loads_as_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, BatchNorm(name="bn")(inputs))
    model.layers[1].moving_mean.assign([1.0, 2.0, 3.0])
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[1]) is BatchNorm
    np.testing.assert_array_equal(loaded.layers[1].moving_mean.numpy(), [1.0, 2.0, 3.0])
