"""``--mixed_precision``: every model trains under float32, bfloat16 and float16 with float32
logits, float16 skips overflowing steps without touching the weights (also with two replicas),
checkpoints move between precisions, export is float32, and the train CLI takes the flag."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_seg
from data_prep.folder import convert_folder
from keras_seg.checkpoints import load_trained_model
from keras_seg.options import TrainConfig
from keras_seg.losses import pixel_ce_sums
from keras_seg.models.blocks import MaxUnpooling2D
from keras_seg.precision import (
    POLICIES,
    PRECISIONS,
    check_precision,
    inner_optimizer,
    precision_scope,
    wrap_optimizer,
)
from keras_seg.training import make_train_step, train
from tests.data.fixtures import make_folder_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOW = ("bfloat16", "float16")
#: Default tier: the plain encoder-decoder, the unpooling models (ENet, SegNet) and a
#: dilated ResNet with ASPP and a resized head. The slow tier runs every other model.
DEFAULT_MODELS = ("unet", "enet", "deeplab_v3", "segnet")
TINY_UNET = {"base_width": 4, "depth": 2, "batch_norm": True, "dropout": 0.0}


def _matrix():
    cases = []
    for name in keras_seg.list_models():
        marks = () if name in DEFAULT_MODELS else (pytest.mark.slow,)
        cases += [pytest.param(name, p, marks=marks, id=f"{name}-{p}") for p in PRECISIONS]
    return cases


def test_registry_is_populated_and_the_default_subset_is_registered():
    assert len(keras_seg.list_models()) >= 19 and set(DEFAULT_MODELS) <= set(keras_seg.list_models())


def test_precision_scope_sets_and_restores_the_policy_and_bad_values_are_refused():
    assert keras.mixed_precision.dtype_policy().name == "float32"
    for precision in PRECISIONS:
        with precision_scope(precision):
            assert keras.mixed_precision.dtype_policy().name == POLICIES[precision]
            layer = keras.layers.Dense(2)
        assert keras.mixed_precision.dtype_policy().name == "float32"
        assert layer.dtype_policy.name == POLICIES[precision]  # kept after the scope
    with pytest.raises(RuntimeError):
        with precision_scope("bfloat16"):
            raise RuntimeError("body failed")
    assert keras.mixed_precision.dtype_policy().name == "float32"  # restored on an exception too
    with pytest.raises(ValueError, match=r"one of float32, bfloat16, float16 \(the Keras policy 'mixed_bfloat16' "
                                         r"is --mixed_precision=bfloat16\)\. Received: mixed_precision='mixed_bfloat16'"):
        check_precision("mixed_bfloat16")
    with pytest.raises(ValueError, match=r"Received: mixed_precision='bf16'"):
        with precision_scope("bf16"):
            pass
    with pytest.raises(ValueError, match=r"--mixed_precision must be one of .*Received: mixed_precision='half'"):
        TrainConfig(model="unet", num_classes=3, data_dir="d", model_dir="m", mixed_precision="half").validate()


def test_loss_is_float32_for_low_precision_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 5, 7))
    logits = rng.normal(size=(2, 5, 7, 3)).astype("float32") * 4
    ref_sum, ref_n = pixel_ce_sums(labels, logits, num_classes=3, ignore_label=255)
    for dtype in (tf.bfloat16, tf.float16):
        low = tf.cast(logits, dtype)
        s, n = pixel_ce_sums(labels, low, num_classes=3, ignore_label=255)
        assert s.dtype == n.dtype == tf.float32
        # The same as float32 on the (rounded) low-precision values: computed in float32.
        exact, _ = pixel_ce_sums(labels, tf.cast(low, tf.float32), num_classes=3, ignore_label=255)
        assert float(s) == pytest.approx(float(exact), rel=1e-6)
        assert float(s) == pytest.approx(float(ref_sum), rel=0.02) and float(n) == float(ref_n)


def _outputs(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _options(name):
    """The tiny options, with every auxiliary output (the training graph)."""
    spec = keras_seg.get_spec(name)
    return {**spec.tiny, **({"aux_outputs": True} if spec.aux_weights else {})}


def _build(name, precision, num_classes=4):
    with precision_scope(precision):
        return keras_seg.build_model(name, num_classes, **_options(name))


def _check_dtypes(model, precision):
    """Float32 variables and outputs; low precision everywhere else, never promoted to float32 mid-network."""
    assert {v.dtype for v in model.variables} <= {"float32", "int64", "int32", "uint32"}, model.name
    assert [o.dtype for o in model.outputs] == ["float32"] * len(model.outputs), model.name
    if precision == "float32":
        return
    low = [layer for layer in model.layers if layer.compute_dtype == precision]
    assert len(low) > len(model.layers) // 2, (model.name, len(low), len(model.layers))
    # float32 appears only at the head: no float32 tensor (other than the input image) feeds a
    # low-precision layer, which is what a layer silently promoting its output would cause.
    for layer in low:
        for t in tf.nest.flatten(layer.input):
            if hasattr(t, "dtype") and not any(t is i for i in model.inputs):
                assert t.dtype != "float32", (model.name, layer.name)


@pytest.mark.parametrize("name,precision", _matrix())
def test_model_trains_one_step_with_float32_logits(name, precision):
    """One training step through make_train_step under MirroredStrategy (as the trainer runs it)."""
    keras.utils.set_random_seed(0)
    spec = keras_seg.get_spec(name)
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = _build(name, precision)
        optimizer = wrap_optimizer(keras.optimizers.SGD(0.01, momentum=0.9), precision)
        optimizer.build(model.trainable_variables)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "float16")
    _check_dtypes(model, precision)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 48, 3)).astype("float32")
    if precision != "float32":  # the same weights in float32 compute nearly the same logits
        ref_model = _build(name, "float32")
        ref_model.set_weights(model.get_weights())
        ref, low = _outputs(ref_model(x, training=False)), _outputs(model(x, training=False))
        # Relative error measured over 4 seeds: at most 0.02 without argmax unpooling, up to
        # 0.26 with it (rounding changes which value of a window is the maximum, and the
        # unpooled value lands elsewhere); the predicted classes agreed on >= 95 % of pixels.
        unpools = any(isinstance(layer, MaxUnpooling2D) for layer in model.layers)
        for a, b in zip(low, ref):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == np.float32 and np.isfinite(a).all()
            assert np.linalg.norm(a - b) / np.linalg.norm(b) < (0.5 if unpools else 0.05), name
        agree = np.mean(np.argmax(np.asarray(low[0]), -1) == np.argmax(np.asarray(ref[0]), -1))
        assert agree > 0.9, (name, agree)

    y = rng.integers(0, 4, size=(2, 32, 48)).astype("int32")
    w = np.ones((2, 32, 48), "float32")
    it = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y, w)).repeat()))
    step = make_train_step(model, optimizer, strategy, 4, 255, aux_weights=list(spec.aux_weights.values()))
    for i in range(1, 5):
        before = [v.numpy().copy() for v in model.trainable_variables]
        scale = float(optimizer.dynamic_scale.numpy()) if precision == "float16" else None
        loss = float(step(it))
        assert np.isfinite(loss), (name, precision, loss)
        assert int(optimizer.iterations.numpy()) == i
        after = [v.numpy() for v in model.trainable_variables]
        assert all(np.isfinite(v).all() for v in after)
        changed = sum(not np.array_equal(a, b) for a, b in zip(before, after))
        if changed:
            # Most, not all: a convolution followed by batch norm has a zero bias gradient,
            # which bfloat16 computes exactly (G-FRNet's conv6/conv7).
            assert changed > len(after) // 2, (name, precision, changed, len(after))
            return
        # Only a float16 step can be skipped (its gradients overflowed at the initial loss
        # scale of 2**15, e.g. DeepLab v3's first step): weights unchanged, scale halved.
        assert precision == "float16", (name, precision)
        assert float(optimizer.dynamic_scale.numpy()) == scale / 2
    pytest.fail(f"{name} {precision}: four steps in a row were skipped")


def test_float16_overflow_skips_the_step_keeps_the_weights_and_counts_it():
    """Scaled gradients that overflow float16 (a loss scale of 2**50) leave every weight as it was."""
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = _build("unet", "float16", num_classes=3)
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.9),
                                                        initial_scale=2.0**50)
        optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(1)
    batch = (rng.normal(size=(2, 16, 16, 3)).astype("float32"), rng.integers(0, 3, (2, 16, 16)).astype("int32"),
             np.ones((2, 16, 16), "float32"))
    it = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
    step = make_train_step(model, optimizer, strategy, 3, 255)
    before = [v.numpy().copy() for v in model.trainable_variables]
    loss = float(step(it))
    assert np.isfinite(loss) and 0.5 < loss < 5  # the unscaled loss is reported
    # Every trainable weight as it was (the batch-norm moving statistics follow the finite
    # forward pass, as in any training step).
    for a, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy(), err_msg=v.path)
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**49
    assert int(optimizer.iterations.numpy()) == 1  # the skipped step still counts (LR schedule, resume)
    assert int(inner_optimizer(optimizer).iterations.numpy()) == 1
    # The scale keeps halving until the scaled gradients fit float16, then the weights move.
    steps = 1
    while all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables)) and steps < 40:
        assert np.isfinite(float(step(it)))
        steps += 1
    assert steps < 40 and int(optimizer.iterations.numpy()) == steps
    assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** (50 - steps + 1)  # halved on each skipped step
    assert all(np.isfinite(v.numpy()).all() for v in model.variables)


TWO_REPLICAS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, keras_seg
    from keras_seg.precision import precision_scope, wrap_optimizer
    from keras_seg.training import make_train_step
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        with precision_scope("float16"):  # no batch norm: replica 0's activations stay finite
            model = keras_seg.build_model("unet", 3, base_width=4, depth=2, batch_norm=False, dropout=0.0)
        optimizer = wrap_optimizer(keras.optimizers.SGD(0.1, momentum=0.9), "float16")
        optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 16, 16, 3)).astype("float32")
    x[2:] *= 1e6  # replica 1's images overflow float16 (max 65504); replica 0's are fine
    batch = (x, rng.integers(0, 3, (4, 16, 16)).astype("int32"), np.ones((4, 16, 16), "float32"))
    it = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
    step = make_train_step(model, optimizer, strategy, 3, 255)
    before = [v.numpy().copy() for v in model.variables]
    step(it)
    json.dump({"replicas": strategy.num_replicas_in_sync,
               "unchanged": all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables)),
               "finite": all(bool(np.isfinite(v.numpy()).all()) for v in model.variables),
               "scale": float(optimizer.dynamic_scale.numpy()), "iterations": int(optimizer.iterations.numpy())},
              open(sys.argv[1], "w"))
""")


def test_float16_overflow_on_one_of_two_replicas_skips_the_step_on_both(tmp_path):
    """LossScaleOptimizer alone checks the first replica's gradients only; the step checks all."""
    script = tmp_path / "two.py"
    script.write_text(TWO_REPLICAS)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "res.json")], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "res.json").read_text())
    assert res == {"replicas": 2, "unchanged": True, "finite": True, "scale": 2.0**14, "iterations": 1}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    make_folder_dataset(root / "src", n_train=4, n_val=2)
    convert_folder(str(root / "src/images"), str(root / "src/masks"), str(root / "tfr"), ["a", "b", "c"],
                   workers=1, log=lambda m: None)
    return str(root / "tfr")


def _cfg(data_dir, model_dir, precision, **kw):
    base = dict(model="unet", num_classes=3, data_dir=data_dir, model_dir=str(model_dir), model_options=TINY_UNET,
                crop_size=(16, 16), batch_size=2, train_steps=4, learning_rate=0.01, log_every=1,
                checkpoint_every=1, eval_split="", seed=1, optimizer="adamw", mixed_precision=precision)
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def _optimizer_step(path):
    names = [n for n, _ in tf.train.list_variables(path)]
    return int(tf.train.load_variable(path, next(n for n in names if n.startswith("optimizer/") and "iteration" in n)))


def test_checkpoints_move_between_precisions(data_dir, tmp_path):
    """float16 -> bfloat16 -> float32 -> float16 resumes of one run; the layout is the same under all."""
    run = tmp_path / "run"
    plan = [("float16", 2), ("bfloat16", 3), ("float32", 4)]
    for precision, stop in plan:
        logs = []
        res = train(_cfg(data_dir, run, precision, steps_per_run=1 if stop > 2 else 2), log=logs.append)
        assert res.step == stop and np.isfinite(res.loss), (precision, logs)
        if stop > 2:
            assert any(f"at step {stop - 1}." in line and "Resumed from" in line for line in logs), logs
        config = json.loads((run / "model_config.json").read_text())
        assert config["mixed_precision"] == precision
        ckpt = tf.train.latest_checkpoint(str(run / "ckpt"))
        assert ckpt.endswith(f"ckpt-{stop}") and _optimizer_step(ckpt) == stop
    names = {p: {n for n, _ in tf.train.list_variables(str(run / "ckpt" / f"ckpt-{s}"))} for p, s in plan}
    assert {n for n in names["float16"] if n.startswith("loss_scale/")}  # float16 keeps its loss scale ...
    assert names["float16"] - {n for n in names["float16"] if n.startswith("loss_scale/")} == names["float32"]
    assert names["bfloat16"] == names["float32"]  # ... and otherwise the same variables under the same names
    assert any(n.startswith("optimizer/") for n in names["float32"])

    # A float32 checkpoint resumed in float16 (no loss scale in it: it starts at 2**15).
    res = train(_cfg(data_dir, run, "float16", train_steps=5), log=lambda m: None)
    assert res.step == 5 and _optimizer_step(tf.train.latest_checkpoint(str(run / "ckpt"))) == 5

    # Evaluation and inference under every precision from the same checkpoint.
    from keras_seg.evaluate import run as run_evaluate

    x = np.random.default_rng(0).normal(size=(1, 20, 24, 3)).astype("float32")
    logits = {}
    for precision in PRECISIONS:
        model, _, _ = load_trained_model(str(run), mixed_precision=precision)
        _check_dtypes(model, precision)
        logits[precision] = np.asarray(model(x, training=False))
        scores, record = run_evaluate(str(run), out=str(tmp_path / f"{precision}.json"), log=lambda m: None,
                                      mixed_precision=precision)
        assert record["mixed_precision"] == precision and record["num_images"] == 2
        assert np.sum(scores["confusion_matrix"]) == 2 * (20 * 24 - 3)
    for precision in LOW:
        assert np.abs(logits[precision] - logits["float32"]).max() < 0.05 * np.abs(logits["float32"]).max()
    with pytest.raises(ValueError, match=r"Received: mixed_precision='fp16'"):
        run_evaluate(str(run), out=str(tmp_path / "x.json"), log=lambda m: None, mixed_precision="fp16")


def test_export_of_a_bfloat16_run_is_float32(data_dir, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    from ai_edge_litert.interpreter import Interpreter
    from keras_seg.export import ExportConfig, export, require_float32

    run = tmp_path / "bf16"
    train(_cfg(data_dir, run, "bfloat16", train_steps=2), log=lambda m: None)
    res = export(ExportConfig(model_dir=str(run), out=str(tmp_path / "out"), formats=("saved_model", "tflite_fp32"),
                              parity_images=0), log=lambda m: None)
    meta = json.load(open(os.path.join(res.paths["saved_model"], "assets.extra", "keras_seg_metadata.json")))
    assert meta["trained_mixed_precision"] == "bfloat16"
    loaded = tf.saved_model.load(res.paths["saved_model"])
    fn = loaded.signatures["serving_default"]
    assert fn.structured_input_signature[1]["images"].dtype == tf.uint8
    assert {k: v.dtype for k, v in fn.structured_outputs.items()} == {"class_ids": tf.uint8,
                                                                      "probabilities": tf.float32}
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(open(os.path.join(res.paths["saved_model"], "saved_model.pb"), "rb").read())
    graph = proto.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    dtypes = {tf.dtypes.as_dtype(t).name for n in nodes for a in n.attr.values() for t in [a.type, *a.list.type] if t}
    assert "float32" in dtypes and not dtypes & {"bfloat16", "float16"}, dtypes  # no 16-bit op anywhere
    # Same probabilities as the float32 rebuild of the checkpoint.
    model, _, _ = load_trained_model(str(run))
    images = np.random.default_rng(2).integers(0, 256, (1, 20, 24, 3), dtype=np.uint8)
    from keras_seg.data.preprocess import normalize_image

    ref = tf.nn.softmax(model(normalize_image(tf.constant(images)), training=False)).numpy()
    np.testing.assert_allclose(fn(images=tf.constant(images))["probabilities"].numpy(), ref, atol=1e-5)

    interp = Interpreter(model_path=res.paths["tflite_fp32"])
    runner = interp.get_signature_runner("serving_default")
    assert runner.get_input_details()["image"]["dtype"] == np.uint8
    outs = runner.get_output_details()
    assert outs["probabilities"]["dtype"] == np.float32 and outs["class_ids"]["dtype"] == np.int32
    tensor_types = {np.dtype(d["dtype"]).name for d in interp.get_tensor_details()}
    assert "float32" in tensor_types and not tensor_types & {"float16", "bfloat16"}, tensor_types

    with precision_scope("bfloat16"):
        bf16 = keras_seg.build_model("unet", 3, **TINY_UNET)
    with pytest.raises(ValueError, match=r"export needs a float32 model, but layer .* computes in bfloat16"):
        require_float32(bf16)


def test_train_cli_flag_end_to_end_on_shapes(tmp_path):
    from data_prep.shapes import CLASS_NAMES, generate

    generate(str(tmp_path / "raw"), num_train=8, num_val=2, size=32, log=lambda m: None)
    convert_folder(str(tmp_path / "raw/images"), str(tmp_path / "raw/masks"), str(tmp_path / "tfr"), CLASS_NAMES,
                   workers=1, log=lambda m: None)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    common = ["--flagfile=configs/unet.cfg", f"--data_dir={tmp_path / 'tfr'}", f"--model_dir={tmp_path / 'run'}",
              "--crop_size=32,32", "--batch_size=4", "--train_steps=2", "--warmup_steps=0", "--log_every=1"]
    r = subprocess.run([sys.executable, "-m", "keras_seg.train", *common, "--mixed_precision=bfloat16"],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 2/2  loss" in r.stdout and "mean_iu" in r.stdout
    assert "--mixed_precision=bfloat16" in (tmp_path / "run/flags.txt").read_text().splitlines()
    assert json.loads((tmp_path / "run/model_config.json").read_text())["mixed_precision"] == "bfloat16"

    r = subprocess.run([sys.executable, "-m", "keras_seg.evaluate", f"--model_dir={tmp_path / 'run'}",
                        "--mixed_precision=float16"], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "in float16" in r.stdout and "mean_iu" in r.stdout

    r = subprocess.run([sys.executable, "-m", "keras_seg.train", *common, "--mixed_precision=bf16"],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode != 0 and "--mixed_precision" in r.stderr and "float32|bfloat16|float16" in r.stderr
    r = subprocess.run([sys.executable, "-m", "keras_seg.train", "--helpfull"], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=env)
    text = " ".join((r.stdout + r.stderr).split())
    assert "AVX512_BF16 / AMX" in text and "float16 is for GPUs" in text and "emulated and slow" in text


def test_benchmark_records_the_precision_and_resume_keeps_precisions_apart():
    from benchmarks import report
    from benchmarks.model_bench import BenchSpec

    with pytest.raises(ValueError, match=r"Received: mixed_precision='bf16'"):
        BenchSpec("unet", mixed_precision="bf16").validate()
    spec = {"model": "unet", "height": 64, "width": 64, "iters": 3, "learning_rate": 1e-4, "workdir": "/a"}
    older = {"spec": dict(spec), "errors": {}, "params": 1}  # written before the option existed: float32
    assert report.resume_decision(older, dict(spec, mixed_precision="float32")) == (True, "")
    assert report.resume_decision(older, dict(spec, mixed_precision="bfloat16")) == (
        False, "the earlier run used other settings")
    bf16 = {"spec": dict(spec, mixed_precision="bfloat16"), "errors": {}, "params": 1}
    assert report.resume_decision(bf16, dict(spec, mixed_precision="float32"))[0] is False
    assert report.resume_decision(bf16, dict(spec, mixed_precision="bfloat16")) == (True, "")


@pytest.mark.parametrize("precision", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
def test_benchmark_model_runs_under_the_policy_and_exports_float32(precision, tmp_path):
    from benchmarks.model_bench import BenchSpec, run

    spec = BenchSpec("unet", num_classes=3, height=32, width=32, tiny=True, iters=1, rounds=1, calibration=1,
                     skip=["flops", "xla", "tflite"], workdir=str(tmp_path), mixed_precision=precision)
    res = run(spec)
    assert res["errors"] == {} and res["spec"]["mixed_precision"] == precision
    assert res["infer"]["tf_function"]["images_per_s"] > 0 and res["infer"]["saved_model"]["images_per_s"] > 0
    assert set(res["train"]) == {"ours", "fit"} and all(res["train"][m]["images_per_s"] > 0 for m in ("ours", "fit"))
    # The SavedModel phase exported a float32 copy: its signature's graph has no 16-bit op.
    fn = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    nodes = list(fn.graph.as_graph_def().node) + [n for f in fn.graph.as_graph_def().library.function
                                                  for n in f.node_def]
    dtypes = {tf.dtypes.as_dtype(t).name for n in nodes for a in n.attr.values() for t in [a.type, *a.list.type] if t}
    assert "float32" in dtypes and not dtypes & {"bfloat16", "float16"}, dtypes
