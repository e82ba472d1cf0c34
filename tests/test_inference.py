"""Inference modes (keras_seg.inference): whole, slide, scales, flip and overlap-tile."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_seg
from keras_seg.inference import InferenceConfig, predict_probabilities, window_starts


def _pixelwise(seed=0, classes=4):
    """A 1x1-convolution model: each pixel's logits depend on that pixel alone."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((None, None, 3))
    return keras.Model(x, keras.layers.Conv2D(classes, 1, name="logits")(x))


def _contextual(seed=0, classes=3):
    """A small U-Net: its output depends on context, so windows and scales change it."""
    keras.utils.set_random_seed(seed)
    return keras_seg.build_model("unet", classes, base_width=4, depth=2)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).normal(size=(1, h, w, 3)).astype("float32")


def _whole(model, x):
    return tf.nn.softmax(model(x, training=False), -1).numpy()


def test_slide_with_a_window_covering_the_image_equals_whole():
    model, x = _contextual(), _image(37, 51)
    for window in [(37, 51), (64, 64), (40, 100)]:
        got = predict_probabilities(model, x, InferenceConfig("slide", window=window, stride=(8, 8))).numpy()
        np.testing.assert_allclose(got, _whole(model, x), atol=1e-6)


@pytest.mark.parametrize("shape,window,stride", [((37, 51), (16, 20), (10, 13)), ((33, 47), (8, 8), (8, 8)),
                                                 ((9, 40), (16, 16), (5, 7))])
def test_every_pixel_is_covered_and_overlaps_are_averaged(shape, window, stride):
    # A per-pixel model gives the same probabilities in every window that covers a pixel, so
    # the slide result equals the whole-image one only if each pixel is covered and its
    # overlapping windows are averaged (a pixel missed or summed would differ).
    model, x = _pixelwise(), _image(*shape, seed=1)
    got = predict_probabilities(model, x, InferenceConfig("slide", window=window, stride=stride)).numpy()
    np.testing.assert_allclose(got, _whole(model, x), atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    starts = window_starts(shape[1], min(window[1], shape[1]), stride[1])
    assert starts[0] == 0 and starts[-1] + min(window[1], shape[1]) == shape[1]


def test_slide_with_small_windows_differs_from_whole_on_a_contextual_model():
    model, x = _contextual(), _image(40, 56, seed=2)
    got = predict_probabilities(model, x, InferenceConfig("slide", window=(16, 16), stride=(8, 8))).numpy()
    assert got.shape == (1, 40, 56, 3)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(got, _whole(model, x), atol=1e-3)


def test_scale_one_equals_whole_and_scales_are_normalised_at_input_size():
    model, x = _contextual(), _image(30, 44, seed=3)
    np.testing.assert_allclose(predict_probabilities(model, x, InferenceConfig(scales=(1.0,))).numpy(),
                               _whole(model, x), atol=1e-6)
    got = predict_probabilities(model, x, InferenceConfig(scales=(0.5, 0.75, 1.0, 1.25), flip=True)).numpy()
    assert got.shape == (1, 30, 44, 3)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # Averaging over scales: the mean of each scale's resized probabilities.
    parts = []
    for s in (0.5, 2.0):
        xs = tf.image.resize(x, (round(30 * s), round(44 * s)))
        parts.append(tf.image.resize(_whole(model, xs), (30, 44)).numpy())
    np.testing.assert_allclose(predict_probabilities(model, x, InferenceConfig(scales=(0.5, 2.0))).numpy(),
                               np.mean(parts, 0), atol=1e-5)


def test_flip_on_a_mirror_symmetric_model_equals_no_flip():
    model, x = _pixelwise(seed=4), _image(21, 35, seed=4)
    np.testing.assert_allclose(predict_probabilities(model, x, InferenceConfig(flip=True)).numpy(),
                               _whole(model, x), atol=1e-6)
    # A model that is not mirror-symmetric gives the mean of the two passes.
    ctx = _contextual(seed=5)
    want = (_whole(ctx, x) + _whole(ctx, x[:, :, ::-1])[:, :, ::-1]) / 2
    np.testing.assert_allclose(predict_probabilities(ctx, x, InferenceConfig(flip=True)).numpy(), want, atol=1e-6)


def test_overlap_tile_runs_the_unpadded_unet_on_any_size():
    # The U-Net paper's strategy (572 -> 388), here on a depth-2 unpadded U-Net: 44 -> 4.
    model = keras_seg.build_model("unet", 2, input_shape=(44, 44, 3), base_width=4, depth=2, padding="valid")
    assert model.output_shape[1:3] == (4, 4)
    x = _image(30, 25, seed=6)
    got = predict_probabilities(model, x, InferenceConfig("slide", window=(1, 1))).numpy()
    assert got.shape == (1, 30, 25, 2)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # Each 4x4 output tile is the network's centre on the mirror-padded image around it: margin
    # 20 on every side, plus what completes the last row (30 -> 32) and column (25 -> 28) of tiles.
    pad = tf.pad(x, [[0, 0], [20, 20 + 2], [20, 20 + 3], [0, 0]], mode="SYMMETRIC")
    for y, x0 in [(0, 0), (4, 8), (28, 24)]:
        want = _whole(model, pad[:, y : y + 44, x0 : x0 + 44])[:, : 30 - y, : 25 - x0]
        np.testing.assert_allclose(got[:, y : y + 4, x0 : x0 + 4], want, atol=1e-6)
    # Images smaller than the margin are mirrored repeatedly.
    small = predict_probabilities(model, _image(9, 14, seed=7), InferenceConfig("slide", window=(1, 1))).numpy()
    assert small.shape == (1, 9, 14, 2) and np.allclose(small.sum(-1), 1.0, atol=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="--mode=slide needs --window"):
        InferenceConfig("slide").validate()
    with pytest.raises(ValueError, match="--mode must be one of"):
        InferenceConfig("tiles").validate()
    with pytest.raises(ValueError, match="--scales must be positive"):
        InferenceConfig(scales=(0.0,)).validate()
    with pytest.raises(ValueError, match="--window must be H,W"):
        InferenceConfig("slide", window=(0, 4)).validate()
