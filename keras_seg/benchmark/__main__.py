r"""Benchmarks every registered model and writes ``benchmarks/RESULTS.md``.

    python -m keras_seg.benchmark                      # all models, 256x256, the full table
    python -m keras_seg.benchmark --quick              # a smoke run: < 10 min on 2 cores
    python -m keras_seg.benchmark --models=unet,enet --size=512,512 --train_batch=4

Per model (each in its own process, :mod:`keras_seg.benchmark.model_bench`): parameters,
forward GFLOPs (TF profiler), inference images/s through ``tf.function``, XLA, the serving
SavedModel, TFLite fp32 and int8 (LiteRT, XNNPACK), training images/s of our loop, our loop
with XLA and ``model.fit`` (timed alternately), peak resident memory, and the fraction of
the machine's ceiling (a large matmul and a large convolution, timed at the start and the
end of the same run). Then the input pipeline (:mod:`keras_seg.benchmark.pipeline`).

The tables are printed and written into their sections of ``--results``; sections written
by other commands (``benchmarks/compare_torch.py``) are kept. Models run with random
weights: speed does not depend on the weights' values.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_seg.precision import HELP as MIXED_PRECISION_HELP  # noqa: E402
from keras_seg.precision import PRECISIONS  # noqa: E402

FLAGS = flags.FLAGS
SECTIONS = ("ceiling", "models", "realsize", "pipeline")
ORDER = ("header", "decisions", "ceiling", "models", "realsize", "pipeline", "pipeline-options", "pytorch")
#: What --quick runs: the default model and the mobile one, small, few repeats.
QUICK = {"models": "unet,enet", "size": "128,128", "iters": 2, "rounds": 1, "steps_per_round": 2,
         "calibration": 2}

flags.DEFINE_list("models", None, "Registered models to measure (default: all; --quick: unet,enet).")
flags.DEFINE_list("size", ["256", "256"], "Input height,width.")
flags.DEFINE_integer("num_classes", 21, "Output classes.")
flags.DEFINE_integer("infer_batch", 1, "Images per inference call (TFLite runs batch 1).")
flags.DEFINE_integer("train_batch", 2, "Images per training step.")
flags.DEFINE_bool("tiny", False, "Use each model's tiny test options instead of the paper's.")
flags.DEFINE_integer("iters", 3, "Timed inference calls per path, after one warm-up call.")
flags.DEFINE_integer("rounds", 2, "Alternating training rounds (ours, ours + XLA, model.fit).")
flags.DEFINE_integer("steps_per_round", 1, "Training steps per method per round (benchmarks/RESULTS.md: 1).")
flags.DEFINE_integer("calibration", 4, "Random images for the int8 calibration.")
flags.DEFINE_float("learning_rate", 1e-4, "SGD (momentum 0.9) learning rate of every training method. Step time "
                   "does not depend on it while the loss stays finite, so --resume reuses results measured at "
                   "another rate; 1e-4 keeps every registered model finite from random weights (RefineNet "
                   "diverges at 0.01 at 256x256).")
flags.DEFINE_list("skip", [], "Phases to leave out: flops, xla, saved_model, tflite, train.")
flags.DEFINE_enum("mixed_precision", "float32", PRECISIONS, MIXED_PRECISION_HELP + (
    " Applies to the tf.function / XLA inference and the training methods; the SavedModel and TFLite rows "
    "export float32, as keras_seg.export does. --resume reuses only results of the same precision."))
flags.DEFINE_list("sections", list(SECTIONS), f"Parts to run: {', '.join(SECTIONS)}.")
flags.DEFINE_bool("quick", False, f"Smoke run in under 10 minutes on 2 cores: {QUICK} unless set explicitly.")
flags.DEFINE_integer("realsize_rounds", 1, "Rounds of the realsize section (each config before/after, alternating).")
flags.DEFINE_integer("model_timeout", 3600, "Seconds one model's process may run before it is stopped.")
flags.DEFINE_string("results", None, "Markdown file whose sections are (re)written; '' to only print. Default: "
                    "benchmarks/RESULTS.md, or benchmarks/RESULTS-quick.md with --quick, so a smoke run never "
                    "replaces the full table.")
flags.DEFINE_string("json", None, "Raw results (every timing), rewritten after each model. Default: --results with "
                    "a .json suffix.")
flags.DEFINE_bool("resume", False, "Reuse the models already in --json that were measured with the same settings "
                  "(an interrupted or partial run continues where it stopped).")


def _explicit(name: str) -> bool:
    return FLAGS[name].present


def resolve_options() -> dict:
    """The effective options, with --quick's defaults where a flag was not given.

    Raises:
      ValueError: an unknown model, section or phase, or a bad size.
    """
    import keras_seg  # pylint: disable=import-outside-toplevel

    opts = {k: FLAGS[k].value for k in ("size", "iters", "rounds", "steps_per_round", "calibration")}
    models = FLAGS.models
    if FLAGS.quick:
        for k, v in QUICK.items():
            if k == "models":
                models = models if _explicit("models") else v.split(",")
            elif not _explicit(k):
                opts[k] = v.split(",") if k == "size" else v
    models = list(models or keras_seg.list_models())
    unknown = sorted(set(models) - set(keras_seg.list_models()))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}. Registered: {keras_seg.list_models()}")
    if FLAGS.realsize_rounds < 1:
        raise ValueError(f"--realsize_rounds must be >= 1. Received: {FLAGS.realsize_rounds}")
    bad = sorted(set(FLAGS.sections) - set(SECTIONS))
    if bad:
        raise ValueError(f"--sections: unknown {bad}; choose from {list(SECTIONS)}")
    size = opts.pop("size")
    try:
        height, width = (int(v) for v in size)
    except ValueError as e:
        raise ValueError(f"--size must be two integers H,W. Received: {','.join(size)}") from e
    if height < 1 or width < 1:
        raise ValueError(f"--size must be positive. Received: {height},{width}")
    results = FLAGS.results
    if results is None:
        results = "benchmarks/RESULTS-quick.md" if FLAGS.quick else "benchmarks/RESULTS.md"
    return {"models": models, "height": height, "width": width, "results": results, **opts}


def _ceiling(log) -> dict:
    from keras_seg.benchmark.flops import conv_ceiling, matmul_ceiling  # pylint: disable=import-outside-toplevel

    mm, cv = matmul_ceiling(), conv_ceiling()
    log(f"ceiling: matmul {mm['gflops_per_s']:.1f} GFLOP/s, conv {cv['gflops_per_s']:.1f} GFLOP/s")
    return {"matmul": mm, "conv": cv}


def _spec(name: str, opts: dict, workdir: str) -> dict:
    return {"model": name, "num_classes": FLAGS.num_classes, "height": opts["height"], "width": opts["width"],
            "infer_batch": FLAGS.infer_batch, "train_batch": FLAGS.train_batch, "tiny": FLAGS.tiny,
            "iters": opts["iters"], "rounds": opts["rounds"], "steps_per_round": opts["steps_per_round"],
            "calibration": opts["calibration"], "skip": list(FLAGS.skip),
            "learning_rate": FLAGS.learning_rate, "workdir": os.path.join(workdir, name),
            "mixed_precision": FLAGS.mixed_precision}


def run_models(opts: dict, workdir: str, log, previous: Optional[dict] = None,
               after_each: Optional[Callable[[list], None]] = None, source: str = "") -> list:
    """Runs :mod:`keras_seg.benchmark.model_bench` once per model; returns the results in order.

    ``previous`` maps model names to earlier results; one measured with the same settings is
    reused instead of measured again. ``after_each(results so far)`` runs after every model.
    """
    from keras_seg.benchmark.report import resume_decision  # pylint: disable=import-outside-toplevel

    results = []
    for i, name in enumerate(opts["models"]):
        spec = _spec(name, opts, workdir)
        head = f"[{i + 1}/{len(opts['models'])}] {name} ({opts['height']}x{opts['width']}{', tiny' if FLAGS.tiny else ''})"
        reuse, why = resume_decision((previous or {}).get(name), spec)
        if reuse:
            log(f"{head}: reusing the result from {source} (--resume)")
            results.append((previous or {})[name])
            continue
        if why:
            log(f"{head}: measuring again: {why}")
        os.makedirs(spec["workdir"], exist_ok=True)
        out = os.path.join(workdir, f"{name}.json")
        log(head)
        t0 = time.time()
        cmd = [sys.executable, "-m", "keras_seg.benchmark.model_bench", json.dumps(spec), out]
        try:
            proc = subprocess.run(cmd, timeout=FLAGS.model_timeout, check=False)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        if code == 0 and os.path.isfile(out):
            result = json.load(open(out, encoding="utf-8"))
        else:
            why = (f"stopped after --model_timeout={FLAGS.model_timeout}s" if code == "timeout"
                   else f"its process exited with status {code} (killed for memory if -9)")
            result = {"spec": spec, "errors": {}, "fatal": why}
            log(f"  [{name}] FAILED: {why}")
        result["wall_s"] = time.time() - t0
        log(f"  [{name}] done in {result['wall_s']:.0f}s")
        shutil.rmtree(spec["workdir"], ignore_errors=True)
        results.append(result)
        if after_each is not None:
            after_each(results)
    return results


def load_previous(path: str) -> dict:
    """``{"models": {name: result}, "ceiling": [...]}`` from an earlier run's JSON.

    Raises:
      ValueError: the file is not a results JSON of this command.
    """
    try:
        raw = json.load(open(path, encoding="utf-8"))
        models = {r["spec"]["model"]: r for r in raw.get("models", [])}
        ceilings = list(raw.get("ceiling", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"--resume: {path} is not a results JSON of keras_seg.benchmark ({e}). "
                         "Run without --resume, or pass its --json.") from e
    return {"models": models, "ceiling": ceilings}


def ceiling_section(runs: list) -> Tuple[str, float]:
    """The ceiling table over every ceiling measurement, and the best rate."""
    from keras_seg.benchmark import report  # pylint: disable=import-outside-toplevel

    ceiling = max(c[k]["gflops_per_s"] for c in runs for k in ("matmul", "conv"))
    rows = []
    for c in runs:
        for k in ("matmul", "conv"):
            rows.append([f"{k} ({c.get('when', '')})", c[k]["shape"], f"{c[k]['gflops']:.1f}",
                         f"{c[k]['median_s'] * 1000:.1f}", f"{c[k]['gflops_per_s']:.1f}"])
    text = "\n".join([
        "## Machine ceiling", "",
        "float32, one `tf.function` on all cores, timed at the start and the end of the run; the best "
        "rate below is the ceiling the '% of ceiling' columns divide by.", "",
        report.markdown_table(["kernel", "shape", "GFLOP", "ms", "GFLOP/s"], rows, "llrrr"), "",
        f"Ceiling: **{ceiling:.1f} GFLOP/s**.",
    ])
    return text, ceiling


def models_section(results: list, opts: dict, ceiling: float) -> str:
    """The models section: settings, the per-model tables and the speed-up candidates."""
    from keras_seg.benchmark import tables  # pylint: disable=import-outside-toplevel
    from keras_seg.benchmark.timing import usable_cpus  # pylint: disable=import-outside-toplevel

    size = f"{opts['height']}x{opts['width']}"
    missing = [m for m in opts["models"] if m not in {r["spec"]["model"] for r in results}]
    return "\n".join([
        f"## Models at {size}{' (tiny options)' if FLAGS.tiny else ''}", "",
        f"Inference batch {FLAGS.infer_batch} (TFLite: 1), training batch {FLAGS.train_batch}, "
        f"{FLAGS.num_classes} classes, random weights, compute precision {FLAGS.mixed_precision}"
        f"{'' if FLAGS.mixed_precision == 'float32' else ' (SavedModel and TFLite: float32)'}, SGD momentum 0.9 at "
        f"{tables.learning_rates(results, FLAGS.learning_rate)}. Medians of {opts['iters']} inference calls after a "
        f"warm-up call, and of {opts['rounds'] * opts['steps_per_round']} training steps per method "
        f"({opts['rounds']} alternating rounds of {opts['steps_per_round']}, after one untimed step each). "
        f"Training % of ceiling counts {tables.TRAIN_FLOPS_FACTOR}x the forward FLOPs; inference % uses the faster "
        "of tf.function and XLA. `model.fit` is compiled with Keras's defaults (`jit_compile='auto'`, which Keras "
        "resolves to no XLA on a CPU-only machine).", "",
        *([f"**Partial:** not yet measured: {', '.join(missing)}. Continue with the same command and "
           "`--resume`.", ""] if missing else []),
        tables.model_tables(results, ceiling), "",
        "### Speed-up candidates per model (after / before, images/s)", "",
        tables.speedup_table(results, usable_cpus()),
    ])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]} (flags start with --).")
    from keras_seg.benchmark import report  # pylint: disable=import-outside-toplevel
    from keras_seg.benchmark.timing import machine_info  # pylint: disable=import-outside-toplevel

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        opts = resolve_options()
        results_path = opts.pop("results")
        if results_path and os.path.isfile(results_path):
            head = open(results_path, encoding="utf-8").readline().rstrip("\n")
            if head != report.TITLE:
                raise ValueError(f"{results_path} is not a results file (its first line is not {report.TITLE!r}); "
                                 "pass another --results.")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)

    started = time.time()
    info = machine_info()
    command = "python -m keras_seg.benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    log(f"keras_seg benchmark on {info['cpu']} ({info['cpus']} CPUs), load {info['load_average']}")
    json_path = FLAGS.json or (os.path.splitext(results_path)[0] + ".json" if results_path else None)
    previous = {"models": {}, "ceiling": []}
    if FLAGS.resume:
        if not json_path or not os.path.isfile(json_path):
            print(f"error: --resume needs the earlier run's JSON; {json_path} does not exist.", file=sys.stderr)
            sys.exit(1)
        try:
            previous = load_previous(json_path)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    sections, raw = {}, {"machine": info, "options": opts}
    if "models" not in FLAGS.sections and json_path and os.path.isfile(json_path):
        # A run of other sections keeps the models table's raw timings, machine and options.
        try:
            raw = dict(json.load(open(json_path, encoding="utf-8")))
        except (OSError, ValueError) as e:
            print(f"error: {json_path} is not a results JSON ({e}); pass another --json.", file=sys.stderr)
            sys.exit(1)
    ceilings = [c if c.get("when", "").startswith("earlier") else dict(c, when=f"earlier run, {c.get('when', '')}")
                for c in previous["ceiling"]]
    if "ceiling" in FLAGS.sections or "models" in FLAGS.sections:
        ceilings.append(dict(_ceiling(log), when="start"))

    def header() -> str:
        info["load_average_now"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        info["wall_minutes"] = round((time.time() - started) / 60, 1)
        return "\n".join([
            "## Run", "", f"`{command}`", "", report.machine_header(info), "",
            "Numbers depend on the machine and its load (the load average at the start and at the last "
            "write is above); ratios measured alternately in one run are the most robust part.",
        ])

    def write(partial_results: list) -> None:
        if "models" in FLAGS.sections or "ceiling" in FLAGS.sections or "models" not in raw:
            raw["models"], raw["ceiling"] = partial_results, ceilings
        if json_path:
            from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel

            os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
            atomic_write_json(json_path, raw)
        if ceilings:
            sections["ceiling"], ceiling = ceiling_section(ceilings)
            if partial_results:
                sections["models"] = models_section(partial_results, opts, ceiling)
        if "models" in FLAGS.sections or not (results_path and os.path.isfile(results_path)):
            sections["header"] = header()  # the header describes the models table's run
        if results_path:
            report.write_sections(results_path, sections, order=ORDER)

    results = []
    if "models" in FLAGS.sections:
        workdir = tempfile.mkdtemp(prefix="keras_seg_bench_")
        try:
            results = run_models(opts, workdir, log, previous["models"], after_each=write, source=json_path)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if ceilings and results:
        ceilings.append(dict(_ceiling(log), when="end"))
    write(results)
    if "realsize" in FLAGS.sections:
        from keras_seg.benchmark import realsize  # pylint: disable=import-outside-toplevel

        workdir = tempfile.mkdtemp(prefix="keras_seg_bench_realsize_")
        try:
            cases = [c for c in realsize.CASES if c.dataset == "shapes"] if FLAGS.quick else realsize.CASES
            raw["realsize"] = realsize.run_realsize(workdir, log, rounds=FLAGS.realsize_rounds, cases=cases)
            sections["realsize"] = realsize.realsize_section(raw["realsize"])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        write(results)
    if "pipeline" in FLAGS.sections:
        from keras_seg.benchmark.pipeline import run_pipeline_benchmarks  # pylint: disable=import-outside-toplevel

        workdir = tempfile.mkdtemp(prefix="keras_seg_bench_data_")
        try:
            sections.update(run_pipeline_benchmarks(workdir, quick=FLAGS.quick, log=log))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    write(results)
    for name in ORDER:
        if name in sections:
            print("\n" + sections[name] + "\n", flush=True)
    if results_path:
        log(f"Wrote {', '.join(sections)} to {results_path} in {info['wall_minutes']} min"
            f"{f' (raw timings: {json_path})' if json_path else ''}.")


if __name__ == "__main__":
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
