"""Poly learning-rate schedule with warm-up, and the optimiser factory."""

import pytest

from keras_seg.options import TrainConfig, parse_model_opts
from keras_seg.training import PolyWithWarmup, make_optimizer


def test_poly_with_warmup_values():
    s = PolyWithWarmup(0.1, total_steps=110, warmup_steps=10, power=0.9)
    assert float(s(0)) == pytest.approx(0.1 * 1 / 10)
    assert float(s(9)) == pytest.approx(0.1)
    assert float(s(10)) == pytest.approx(0.1)
    assert float(s(60)) == pytest.approx(0.1 * 0.5**0.9)
    assert float(s(110)) == pytest.approx(0.0)
    assert float(PolyWithWarmup(0.1, 100, 0, 1.0)(25)) == pytest.approx(0.075)
    assert PolyWithWarmup.from_config(s.get_config()).get_config() == s.get_config()


def _cfg(**kw):
    return TrainConfig(model="unet", num_classes=3, data_dir="d", model_dir="m", **kw)


def test_optimizers_and_weight_decay_exclusions():
    sgd = make_optimizer(_cfg(optimizer="sgd", momentum=0.9, weight_decay=1e-4))
    assert type(sgd).__name__ == "SGD" and sgd.momentum == pytest.approx(0.9)
    assert sgd.weight_decay == pytest.approx(1e-4)
    adamw = make_optimizer(_cfg(optimizer="adamw", weight_decay=0.01))
    assert type(adamw).__name__ == "AdamW" and adamw.weight_decay == pytest.approx(0.01)
    # Behaviour: zero gradients, so only the decay moves variables; biases and norms stay.
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, bias_initializer="ones"),
                              keras.layers.BatchNormalization()])
    opt = make_optimizer(_cfg(optimizer="sgd", momentum=0.0, weight_decay=0.5, learning_rate=1.0,
                              train_steps=100, poly_power=0.0))
    before = [v.numpy().copy() for v in model.trainable_variables]
    opt.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    after = {v.path: v.numpy() for v in model.trainable_variables}
    kernel = [k for k in after if k.endswith("kernel")][0]
    np.testing.assert_allclose(after[kernel], before[0] * 0.5, rtol=1e-6)
    for k, v in after.items():
        if not k.endswith("kernel"):
            np.testing.assert_array_equal(v, dict(zip(after, before))[k])


def test_config_validation_messages():
    with pytest.raises(ValueError, match="--warmup_steps must be in"):
        _cfg(train_steps=10, warmup_steps=10).validate()
    with pytest.raises(ValueError, match="--optimizer must be one of"):
        _cfg(optimizer="rmsprop").validate()
    with pytest.raises(ValueError, match="Unknown model"):
        TrainConfig(model="nope", num_classes=3, data_dir="d", model_dir="m").validate()
    assert parse_model_opts(["depth=3", "batch_norm=true", "padding=valid", "widths=(1, 2)"]) == {
        "depth": 3, "batch_norm": True, "padding": "valid", "widths": (1, 2)}
    with pytest.raises(ValueError, match="key=value"):
        parse_model_opts(["depth"])


def test_valid_unet_is_refused_for_training():
    with pytest.raises(ValueError, match="padding=same"):
        _cfg(model_options={"padding": "valid"}).validate()


def test_one_optimizer_builder_for_semantic_and_detection():
    """Both trainers build their optimizer through ``build_optimizer``: same type, decay and rates."""
    from keras_seg.detection.options import DetectionTrainConfig
    from keras_seg.detection.trainer import make_detection_optimizer
    from keras_seg.training import build_optimizer

    with pytest.raises(ValueError, match="'sgd' or 'adamw'.*'rmsprop'"):
        build_optimizer("rmsprop", 0.1, 100)
    kw = dict(optimizer="adamw", learning_rate=0.02, train_steps=200, warmup_steps=20, poly_power=0.9,
              momentum=0.8, weight_decay=1e-3)
    det = make_detection_optimizer(DetectionTrainConfig(data_dir="d", model_dir="m", **kw))
    sem = make_optimizer(_cfg(**kw))
    assert type(det) is type(sem) and type(det).__name__ == "AdamW"
    assert det.weight_decay == pytest.approx(1e-3) and det.beta_1 == pytest.approx(0.8)
    for step in (0, 19, 20, 110, 200):
        assert float(det._learning_rate(step)) == pytest.approx(float(sem._learning_rate(step)))
    # Decoupled decay leaves biases and norms alone in the detection optimizer too.
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, bias_initializer="ones"),
                              keras.layers.BatchNormalization()])
    opt = make_detection_optimizer(DetectionTrainConfig(
        data_dir="d", model_dir="m", optimizer="sgd", momentum=0.0, weight_decay=0.5, learning_rate=1.0,
        train_steps=100, poly_power=0.0))
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    for v in model.trainable_variables:
        factor = 1.0 if v.name in ("bias", "gamma", "beta") else 0.5
        np.testing.assert_allclose(v.numpy(), before[v.path] * factor, rtol=1e-6, err_msg=v.path)
    coupled = build_optimizer("sgd", 0.1, 100, weight_decay=5e-4, decoupled_decay=False)
    assert coupled.weight_decay is None
