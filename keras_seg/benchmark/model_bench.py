"""Benchmarks one model in a process of its own: ``python -m keras_seg.benchmark.model_bench``.

The parent (``python -m keras_seg.benchmark``) starts one process per model, so each model's
peak memory is its own and a crash or out-of-memory kill loses one row, not the run. The
process writes a JSON result (atomically) and prints progress lines.

Phases, in order (each records its error instead of ending the run):

1. build the model (paper options, or the registry's tiny options) at a fixed input size;
2. parameters and forward GFLOPs (TF profiler, :mod:`keras_seg.benchmark.flops`);
3. inference through ``tf.function`` and ``tf.function(jit_compile=True)`` (XLA), peak RSS;
4. the serving SavedModel of :mod:`keras_seg.export` (uint8 in, class ids and probabilities
   out, the same graph TF Serving runs), loaded with ``tf.saved_model.load``;
5. TFLite fp32 and int8 (calibrated on random images) under the LiteRT interpreter with
   XNNPACK on all cores, and fp32 on one thread for the thread-count comparison;
6. training: our loop's step (:func:`keras_seg.training.make_train_step` under
   ``MirroredStrategy``), the same with XLA, and ``model.fit`` compiled with Keras's defaults
   (``jit_compile="auto"``, which is XLA on TensorFlow), same model, optimizer and data,
   timed alternately, with the peak RSS of our loop.

``mixed_precision`` (``bfloat16`` or ``float16``, :mod:`keras_seg.precision`) builds the model
under that Keras dtype policy for the ``tf.function`` / XLA inference and every training
method (float16 trains with a ``LossScaleOptimizer``); the SavedModel and TFLite phases export
a float32 copy with the same weights, as :mod:`keras_seg.export` does for a mixed-precision run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Inference paths in table order.
INFER_PATHS = ("tf_function", "xla", "saved_model", "tflite_fp32", "tflite_int8")
#: Training methods in table order.
TRAIN_METHODS = ("ours", "ours_xla", "fit")


@dataclasses.dataclass
class BenchSpec:
    """What to measure for one model.

    Attributes:
      model: registered model name.
      num_classes: output classes.
      height, width: input size.
      infer_batch: images per inference call (TFLite always runs batch 1).
      train_batch: images per training step.
      tiny: use the registry's tiny options instead of the paper's.
      iters: timed inference calls per path, after one warm-up call.
      rounds: alternating training rounds; each runs ``steps_per_round`` steps of every method.
      steps_per_round: training steps per method per round.
      calibration: random images for the int8 calibration.
      skip: phases to leave out: any of ``flops``, ``xla``, ``saved_model``, ``tflite``,
        ``train``.
      learning_rate: of the SGD (momentum 0.9) every training method uses. Step time does not
        depend on it while the loss stays finite; a non-finite loss fails that method.
      workdir: where exports go (removed by the parent).
      mixed_precision: ``float32``, ``bfloat16`` or ``float16``: the compute precision of the
        inference and training phases (:mod:`keras_seg.precision`).
    """

    model: str
    num_classes: int = 21
    height: int = 256
    width: int = 256
    infer_batch: int = 1
    train_batch: int = 2
    tiny: bool = False
    iters: int = 3
    rounds: int = 2
    steps_per_round: int = 1
    calibration: int = 4
    skip: List[str] = dataclasses.field(default_factory=list)
    learning_rate: float = 1e-4
    workdir: str = ""
    mixed_precision: str = "float32"

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        ints = {"num_classes": 2, "height": 1, "width": 1, "infer_batch": 1, "train_batch": 1, "iters": 1,
                "rounds": 1, "steps_per_round": 1, "calibration": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}. Received: {name}={v!r}")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise ValueError(f"learning_rate must be a finite number > 0. Received: learning_rate={lr!r}")
        from keras_seg.precision import check_precision  # pylint: disable=import-outside-toplevel

        check_precision(self.mixed_precision)
        unknown = sorted(set(self.skip) - set(SKIPPABLE))
        if unknown:
            raise ValueError(f"unknown phases to skip {unknown}; choose from {list(SKIPPABLE)}")


SKIPPABLE = ("flops", "xla", "saved_model", "tflite", "train")


def _log(model: str, msg: str) -> None:
    print(f"  [{model}] {msg}", flush=True)


def _guard(result: Dict[str, Any], key: str, model: str, fn: Callable[[], Any]) -> Any:
    """Runs ``fn``; on an exception records ``errors[key]`` (one line) and returns None."""
    try:
        return fn()
    except Exception as e:  # one failing phase must not lose the others
        line = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        result["errors"][key] = line
        _log(model, f"{key} FAILED: {line}")
        if os.environ.get("KERAS_SEG_BENCH_TRACEBACK"):
            traceback.print_exc()
        return None


def _entry(timing, items: int) -> Dict[str, Any]:
    return {"median_s": timing.median_s, "images_per_s": timing.per_second(items), "times": timing.times,
            "first_s": timing.first_s}


class FitStepTimer:
    """A Keras callback recording the duration of each training batch of ``model.fit``."""

    def __new__(cls):
        import keras  # pylint: disable=import-outside-toplevel

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times: List[float] = []
                self._t0 = 0.0

            def on_train_batch_begin(self, batch, logs=None):
                self._t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                # Keras hands this callback host values, so the step has finished here.
                self.times.append(time.perf_counter() - self._t0)

        return Timer()


def run(spec: BenchSpec) -> Dict[str, Any]:
    """Measures ``spec.model``; returns the result dictionary (see the module docstring)."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    import keras_seg  # pylint: disable=import-outside-toplevel
    from keras_seg.benchmark import flops as flops_lib  # pylint: disable=import-outside-toplevel
    from keras_seg.precision import precision_scope, wrap_optimizer  # pylint: disable=import-outside-toplevel
    from keras_seg.benchmark.timing import (  # pylint: disable=import-outside-toplevel
        Timing,
        peak_rss_mb,
        reset_peak_rss,
        time_calls,
        usable_cpus,
    )

    spec.validate()
    name, h, w, c = spec.model, spec.height, spec.width, spec.num_classes
    options = keras_seg.tiny_options(name) if spec.tiny else {}
    result: Dict[str, Any] = {"spec": dataclasses.asdict(spec), "options": options, "errors": {},
                              "infer": {}, "train": {}, "tflite_mb": {}, "rss_mb": {}}
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy()
    t0 = time.perf_counter()
    with strategy.scope(), precision_scope(spec.mixed_precision):
        model = keras_seg.build_model(name, c, input_shape=(h, w, 3), **options)
    result["params"] = int(model.count_params())
    result["build_s"] = time.perf_counter() - t0
    _log(name, f"built: {result['params']:,} params in {result['build_s']:.1f}s")

    if "flops" not in spec.skip:
        f = _guard(result, "flops", name, lambda: flops_lib.forward_flops(model, (h, w, 3)))
        result["gflops"] = None if f is None else f / 1e9
        if f is not None:
            _log(name, f"forward: {f / 1e9:.2f} GFLOPs per image")

    rng = np.random.default_rng(0)
    x_u8 = rng.integers(0, 256, size=(spec.infer_batch, h, w, 3), dtype=np.uint8)
    from keras_seg.data.preprocess import normalize_image  # pylint: disable=import-outside-toplevel

    x = normalize_image(tf.constant(x_u8))
    n = spec.infer_batch

    reset_peak_rss()
    paths = {"tf_function": tf.function(lambda t: model(t, training=False))}
    if "xla" not in spec.skip:
        paths["xla"] = tf.function(lambda t: model(t, training=False), jit_compile=True)
    for path, fn in paths.items():
        t = _guard(result, path, name, lambda fn=fn: time_calls(lambda: fn(x).numpy(), spec.iters, warmup=1))
        if t is not None:
            result["infer"][path] = _entry(t, n)
            _log(name, f"{path}: {t.median_s * 1000:.1f} ms per batch of {n} (first call {t.first_s:.1f}s)")
    result["rss_mb"]["infer"] = peak_rss_mb()

    workdir = spec.workdir or tempfile.mkdtemp(prefix=f"bench_{name}_")
    exported = model
    if spec.mixed_precision != "float32" and not {"saved_model", "tflite"} <= set(spec.skip):
        with precision_scope("float32"):  # exports are float32 whatever the training precision
            exported = keras_seg.build_model(name, c, input_shape=(h, w, 3), **options)
        exported.set_weights(model.get_weights())
    if "saved_model" not in spec.skip:
        _guard(result, "saved_model", name, lambda: _saved_model(spec, exported, x_u8, workdir, result))
    if "tflite" not in spec.skip:
        _guard(result, "tflite", name, lambda: _tflite(spec, exported, workdir, result, usable_cpus()))

    if "train" in spec.skip:
        return result
    # Training: our loop (plain and XLA) on the already-built model, then model.fit on a twin.
    xb = rng.normal(size=(spec.train_batch, h, w, 3)).astype(np.float32)
    yb = rng.integers(0, c, size=(spec.train_batch, h, w)).astype(np.int32)
    wb = np.ones((spec.train_batch, h, w), np.float32)
    from keras_seg.losses import WeightedPixelCrossEntropy  # pylint: disable=import-outside-toplevel
    from keras_seg.training import make_train_step  # pylint: disable=import-outside-toplevel

    reset_peak_rss()
    with strategy.scope():
        optimizer = wrap_optimizer(keras.optimizers.SGD(spec.learning_rate, momentum=0.9), spec.mixed_precision)
        optimizer.build(model.trainable_variables)
    dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((xb, yb, wb)).repeat())
    iterator = iter(dist)
    steps = {"ours": make_train_step(model, optimizer, strategy, c, 255)}
    if "xla" not in spec.skip:
        steps["ours_xla"] = make_train_step(model, optimizer, strategy, c, 255, jit_compile=True)
    calls: Dict[str, Callable[[], List[float]]] = {}
    for method, step in steps.items():
        def run_steps(step=step):
            times = []
            for _ in range(spec.steps_per_round):
                t1 = time.perf_counter()
                loss = float(step(iterator))
                times.append(time.perf_counter() - t1)
                if not np.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss}")
            return times
        first = _guard(result, method, name, lambda step=step: time_calls(lambda: float(step(iterator)), 1, 0))
        if first is not None:
            calls[method] = run_steps
            result["train"][method] = {"first_s": first.times[0]}
            _log(name, f"train {method}: first step {first.times[0]:.1f}s")
    result["rss_mb"]["train"] = peak_rss_mb()

    def fit_setup():
        keras.utils.set_random_seed(0)
        with precision_scope(spec.mixed_precision):
            twin = keras_seg.build_model(name, c, input_shape=(h, w, 3), **options)
        # Under mixed_float16, compile wraps the optimizer in a LossScaleOptimizer itself.
        twin.compile(optimizer=keras.optimizers.SGD(spec.learning_rate, momentum=0.9), loss=WeightedPixelCrossEntropy(c))
        data = tf.data.Dataset.from_tensors((xb, yb)).repeat()
        timer = FitStepTimer()
        t1 = time.perf_counter()
        twin.fit(data, steps_per_epoch=1, epochs=1, verbose=0, callbacks=[timer])
        result["train"]["fit"] = {"first_s": time.perf_counter() - t1, "jit_compile": bool(twin.jit_compile)}
        _log(name, f"train fit: first call {result['train']['fit']['first_s']:.1f}s "
                   f"(jit_compile resolved to {twin.jit_compile})")

        def run_fit():
            timer.times = []
            twin.fit(data, steps_per_epoch=spec.steps_per_round, epochs=1, verbose=0, callbacks=[timer])
            return list(timer.times)
        return run_fit

    run_fit = _guard(result, "fit", name, fit_setup)
    if run_fit is not None:
        calls["fit"] = run_fit
    # One untimed call of each after all of them are set up: the first call of a step after
    # another model's setup pays one-time costs (measured: 2.4 s once for a 30 ms step).
    for method, call in list(calls.items()):
        if _guard(result, method, name, call) is None:
            del calls[method]
    collected: Dict[str, List[float]] = {m: [] for m in calls}
    for r in range(spec.rounds):
        for method, call in list(calls.items()):
            times = _guard(result, method, name, call)
            if times is None:
                del calls[method]
                continue
            collected[method].extend(times)
        _log(name, f"train round {r + 1}/{spec.rounds}: " + ", ".join(
            f"{m} {np.median(v) * 1000:.0f} ms" for m, v in collected.items() if v))
    for method, times in collected.items():
        if times:
            entry = _entry(Timing(times), spec.train_batch)
            entry.pop("first_s")
            result["train"][method].update(entry)
    for method, step in steps.items():
        if hasattr(step, "experimental_get_tracing_count"):
            result["train"][method]["traces"] = step.experimental_get_tracing_count()
    return result


def _saved_model(spec: BenchSpec, model, x_u8, workdir: str, result: Dict[str, Any]) -> None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg.benchmark.timing import time_calls  # pylint: disable=import-outside-toplevel
    from keras_seg.data.preprocess import preprocessing_record  # pylint: disable=import-outside-toplevel
    from keras_seg.export import dir_size, write_saved_model  # pylint: disable=import-outside-toplevel

    c = spec.num_classes
    metadata = {"model": spec.model, "model_options": {}, "num_classes": c,
                "class_names": [f"class{i}" for i in range(c)], "palette": [[i, i, i] for i in range(c)],
                "ignore_label": 255, "dataset": "benchmark", "checkpoint": "random initialisation",
                "preprocessing": preprocessing_record("imagenet")}
    path = os.path.join(workdir, "saved_model")
    t0 = time.perf_counter()
    write_saved_model(model, metadata, path)
    result["saved_model_export_s"] = time.perf_counter() - t0
    result["saved_model_mb"] = dir_size(path) / 2**20
    serve = tf.saved_model.load(path).signatures["serving_default"]
    images = tf.constant(x_u8)
    t = time_calls(lambda: serve(images=images)["class_ids"].numpy(), spec.iters, warmup=1)
    result["infer"]["saved_model"] = _entry(t, x_u8.shape[0])
    _log(spec.model, f"saved_model: {t.median_s * 1000:.1f} ms per batch of {x_u8.shape[0]} "
                     f"(export {result['saved_model_export_s']:.1f}s, {result['saved_model_mb']:.1f} MB)")


def _tflite(spec: BenchSpec, model, workdir: str, result: Dict[str, Any], threads: int) -> None:
    import numpy as np  # pylint: disable=import-outside-toplevel
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

    from keras_seg.benchmark.timing import time_calls  # pylint: disable=import-outside-toplevel
    from keras_seg.export import write_tflite_source, convert_tflite  # pylint: disable=import-outside-toplevel

    size = (spec.height, spec.width)
    source = os.path.join(workdir, "tflite_source")
    write_tflite_source(model, size, source)
    rng = np.random.default_rng(1)
    calibration = [rng.integers(0, 256, size=(1, *size, 3), dtype=np.uint8) for _ in range(spec.calibration)]
    image = rng.integers(0, 256, size=(1, *size, 3), dtype=np.uint8)

    def representative():
        for img in calibration:
            yield {"image": img}

    for kind in ("fp32", "int8"):
        key = f"tflite_{kind}"

        def convert_and_time(kind=kind, key=key):
            t0 = time.perf_counter()
            flat = convert_tflite(source, kind, representative if kind == "int8" else None)
            result.setdefault("convert_s", {})[key] = time.perf_counter() - t0
            path = os.path.join(workdir, f"{key}.tflite")
            with open(path, "wb") as f:
                f.write(flat)
            result["tflite_mb"][key] = len(flat) / 2**20
            thread_counts = (threads, 1) if kind == "fp32" and threads > 1 else (threads,)
            for n in thread_counts:
                interp = Interpreter(model_path=path, num_threads=n)
                runner = interp.get_signature_runner("serving_default")
                t = time_calls(lambda runner=runner: runner(image=image)["class_ids"], spec.iters, warmup=1)
                entry_key = key if n == threads else f"{key}_1thread"
                result["infer"][entry_key] = _entry(t, 1)
                _log(spec.model, f"{entry_key}: {t.median_s * 1000:.1f} ms per image on {n} thread(s) "
                                 f"(convert {result['convert_s'][key]:.1f}s, {len(flat) / 2**20:.2f} MB)")
        _guard(result, key, spec.model, convert_and_time)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m keras_seg.benchmark.model_bench SPEC_JSON OUT_JSON``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m keras_seg.benchmark.model_bench SPEC_JSON OUT_JSON", file=sys.stderr)
        return 2
    spec = BenchSpec(**json.loads(argv[0]))
    result = run(spec)
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel

    atomic_write_json(argv[1], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
