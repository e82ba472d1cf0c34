"""MaxPoolingWithArgmax2D / MaxUnpooling2D against NumPy references, TF's op and LiteRT."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks.litert_ops import delegation
from keras_seg.models.blocks import LocalResponseNorm, MaxPoolingWithArgmax2D, MaxUnpooling2D
from tests.tflite_utils import convert_builtin_only, run_tflite


def np_argmax_pool(x, p):
    """Reference: max of each p x p window and the flat (y*W + x)*C + c index of its first
    maximum in row-major window order (Caffe's tie rule), written as plain loops."""
    b, h, w, c = x.shape
    pooled = np.zeros((b, h // p, w // p, c), x.dtype)
    index = np.zeros((b, h // p, w // p, c), np.int64)
    for n in range(b):
        for i in range(h // p):
            for j in range(w // p):
                for ch in range(c):
                    best = None
                    for dy in range(p):
                        for dx in range(p):
                            v = x[n, i * p + dy, j * p + dx, ch]
                            if best is None or v > best:  # strict: the first maximum wins
                                best = v
                                index[n, i, j, ch] = ((i * p + dy) * w + (j * p + dx)) * c + ch
                    pooled[n, i, j, ch] = best
    return pooled, index


def np_unpool(y, index, out_hw):
    b, _, _, c = y.shape
    out = np.zeros((b, out_hw[0] * out_hw[1] * c), y.dtype)
    for n in range(b):
        out[n, index[n].ravel()] = y[n].ravel()
    return out.reshape(b, out_hw[0], out_hw[1], c)


def _tied_input(shape, seed):
    """Values in {0, 1, 2}, plus an all-equal region: most windows have tied maxima."""
    x = np.random.default_rng(seed).integers(0, 3, size=shape).astype("float32")
    x[:, :4, :4, :] = 1.0
    return x


@pytest.mark.parametrize("pool_size", [2, 3])
@pytest.mark.parametrize("tied", [False, True])
def test_pool_and_unpool_match_numpy_reference(pool_size, tied):
    shape = (2, 6 * pool_size, 4 * pool_size, 3)
    x = _tied_input(shape, 0) if tied else np.random.default_rng(0).normal(size=shape).astype("float32")
    pooled, index = MaxPoolingWithArgmax2D(pool_size)(x)
    want_pooled, want_index = np_argmax_pool(x, pool_size)
    np.testing.assert_array_equal(pooled.numpy(), want_pooled)
    np.testing.assert_array_equal(index.numpy(), want_index)
    assert index.dtype == tf.int32
    if tied:  # the data really has tied windows, and a tie goes to the window's first slot
        windows = x.reshape(2, 6, pool_size, 4, pool_size, 3)
        n_max = (windows == windows.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4))
        assert (n_max > 1).mean() > 0.3
        np.testing.assert_array_equal(index.numpy()[:, 0, 0, :], [[0, 1, 2]] * 2)  # all-ones window

    y = pooled.numpy() * 3.0 + 1.0
    out = MaxUnpooling2D(pool_size)(y, index)  # without ref: (p*h, p*w)
    np.testing.assert_array_equal(out.numpy(), np_unpool(y, want_index, shape[1:3]))
    out_ref = MaxUnpooling2D(pool_size)(y, index, x)
    np.testing.assert_array_equal(out_ref.numpy(), out.numpy())


def test_indices_match_tf_max_pool_with_argmax():
    x = np.random.default_rng(1).normal(size=(3, 10, 14, 5)).astype("float32")
    pooled, index = MaxPoolingWithArgmax2D(2)(x)
    tf_pooled, tf_index = tf.nn.max_pool_with_argmax(x, 2, 2, "VALID", include_batch_in_index=False)
    np.testing.assert_array_equal(pooled.numpy(), tf_pooled.numpy())
    np.testing.assert_array_equal(index.numpy(), tf_index.numpy())
    # tf_index is int64: the unpooling layer accepts it too.
    np.testing.assert_array_equal(
        MaxUnpooling2D()(pooled, tf_index).numpy(), MaxUnpooling2D()(pooled, index).numpy()
    )


def test_pool_size_one_is_the_identity():
    x = np.random.default_rng(6).normal(size=(2, 3, 5, 4)).astype("float32")
    pooled, index = MaxPoolingWithArgmax2D(1)(x)
    np.testing.assert_array_equal(pooled.numpy(), x)
    np.testing.assert_array_equal(index.numpy(), np_argmax_pool(x, 1)[1])
    np.testing.assert_array_equal(index.numpy()[1].ravel(), np.arange(3 * 5 * 4))
    np.testing.assert_array_equal(MaxUnpooling2D(1)(pooled, index).numpy(), x)


def _indices_5d(x, p):
    """The indices of the layer's earlier formulation: one 5-D comparison of every window slot
    with the max, and the first maximal slot by a reduce_min (it converted to a BROADCAST_TO)."""
    shape = tf.shape(x)
    batch, height, width, channels = shape[0], shape[1] // p, shape[2] // p, shape[3]
    pooled = tf.nn.max_pool2d(x, p, p, "VALID")
    windows = tf.reshape(tf.nn.space_to_depth(x, p), [batch, height, width, p * p, channels])
    is_max = tf.cast(tf.equal(windows, pooled[:, :, :, None, :]), tf.int32)
    slot = tf.range(p * p, dtype=tf.int32)[:, None]
    first = tf.minimum(tf.reduce_min(slot + p * p * (1 - is_max), axis=3), p * p - 1)
    rows = tf.range(height)[:, None, None] * p + first // p
    cols = tf.range(width)[None, :, None] * p + first % p
    return (rows * shape[2] + cols) * channels + tf.range(channels)[None, None, :]


@pytest.mark.parametrize("pool_size", [2, 3])
def test_indices_equal_the_earlier_formulation(pool_size):
    p = pool_size
    rng = np.random.default_rng(7)
    x = _tied_input((2, 4 * p, 5 * p, 6), 8)
    x[0] = rng.normal(size=x.shape[1:])
    x[1, :p, :p, 2] = np.nan  # a window whose max may match no slot
    x[1, p : 2 * p, :p, 3] = [[np.nan] + [1.0] * (p - 1)] + [[1.0] * p] * (p - 1)
    dynamic = tf.function(MaxPoolingWithArgmax2D(p), input_signature=[tf.TensorSpec((None, None, None, 6))])
    _, got = dynamic(x)
    np.testing.assert_array_equal(got.numpy(), _indices_5d(x, p).numpy())
    assert got.shape == (2, 4, 5, 6) and got.dtype == tf.int32


def test_tflite_pool_and_unpool_stay_4d_without_large_constants():
    inputs = keras.Input((64, 96, 16), name="image")
    pooled, index = MaxPoolingWithArgmax2D(2, name="pool")(inputs)
    outputs = MaxUnpooling2D(2, name="unpool")(keras.layers.Rescaling(2.0, name="scale")(pooled), index, inputs)
    blob = convert_builtin_only(keras.Model(inputs, outputs), (1, 64, 96, 16))
    ops = [n.op for n in delegation(blob)[0]]
    # 5-D broadcasting converted to a BROADCAST_TO of every window slot (18% of ENet's fp32 time).
    assert "BROADCAST_TO" not in ops and "CONCATENATION" not in ops, ops
    assert ops.count("EQUAL") == 3 and ops.count("SCATTER_ND") == 1
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

    interp = Interpreter(model_content=blob)
    assert max(len(t["shape"]) for t in interp.get_tensor_details()) <= 4
    # No constant as large as the indices (32 x 48 x 16 int32 = 98 KB) was folded into the file.
    assert len(blob) < 32 * 48 * 16 * 4 / 2


def test_unpool_gradient_gathers_at_the_indices():
    x = np.random.default_rng(2).normal(size=(2, 8, 6, 4)).astype("float32")
    weights = np.random.default_rng(3).normal(size=x.shape).astype("float32")
    pooled, index = MaxPoolingWithArgmax2D(2)(x)
    y = tf.Variable(pooled)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(MaxUnpooling2D()(y, index) * weights)
    grad = tape.gradient(loss, y).numpy()
    want = np.take_along_axis(weights.reshape(2, -1), index.numpy().reshape(2, -1), axis=1)
    np.testing.assert_array_equal(grad, want.reshape(pooled.shape))


def test_odd_sizes_are_refused():
    with pytest.raises(ValueError, match="multiples of pool_size=2"):
        MaxPoolingWithArgmax2D(2)(keras.Input((7, 8, 3)))
    layer = MaxPoolingWithArgmax2D(2, name="pool_odd")
    with pytest.raises(ValueError, match="pool_odd: input height and width"):
        layer(tf.zeros((1, 7, 8, 3)))
    dynamic = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 3))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="pool_odd: input height and width"):
        dynamic(tf.zeros((1, 7, 8, 3)))
    with pytest.raises(ValueError, match="pool_size"):
        MaxUnpooling2D(0)


def test_builtin_tflite_matches_keras_and_numpy_with_ties(tmp_path):
    inputs = keras.Input((None, None, 3), name="image")
    pooled, index = MaxPoolingWithArgmax2D(2, name="pool")(inputs)
    scaled = keras.layers.Rescaling(3.0, offset=1.0, name="scale")(pooled)
    outputs = MaxUnpooling2D(2, name="unpool")(scaled, index, inputs)
    model = keras.Model(inputs, outputs)
    x = _tied_input((1, 12, 16, 3), 4)
    want_pooled, want_index = np_argmax_pool(x, 2)
    want = np_unpool(want_pooled * 3.0 + 1.0, want_index, (12, 16))
    np.testing.assert_array_equal(model.predict_on_batch(x), want)
    np.testing.assert_array_equal(run_tflite(convert_builtin_only(model, x.shape), x), want)
    model.save(tmp_path / "unpool.keras")  # the optional ref argument survives a .keras file
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "unpool.keras").predict_on_batch(x), want)


def test_layers_round_trip_through_config():
    pool = MaxPoolingWithArgmax2D(3, name="p")
    unpool = MaxUnpooling2D(3, name="u")
    lrn = LocalResponseNorm(3, alpha=2e-4, beta=0.5, k=2.0, name="n")
    for layer in (pool, unpool, lrn):
        clone = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(clone) is type(layer) and clone.get_config() == layer.get_config()


def test_local_response_norm_matches_caffe_formula():
    x = np.random.default_rng(5).normal(size=(2, 4, 5, 7)).astype("float32")
    n, alpha, beta, k = 5, 1e-1, 0.75, 1.0
    sq = np.pad(x**2, [(0, 0), (0, 0), (0, 0), (n // 2, n // 2)])
    window_sum = sum(sq[..., i : i + x.shape[-1]] for i in range(n))
    want = x / (k + alpha / n * window_sum) ** beta
    got = LocalResponseNorm(n, alpha=alpha, beta=beta, k=k)(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
