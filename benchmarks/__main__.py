r"""Benchmarks every registered model and writes ``benchmarks/RESULTS.md``.

    python -m benchmarks                      # all models, 256x256, the full table
    python -m benchmarks --quick              # a smoke run: < 10 min on 2 cores
    python -m benchmarks --models=unet,enet --size=512,512 --train_batch_size=4

Run it from the repository root; ``keras-seg benchmark`` (:mod:`keras_seg.benchmark`) does the
same from anywhere in a checkout.

Per model (each in its own process, :mod:`benchmarks.model_bench`): parameters,
forward GFLOPs (TF profiler), inference images/s through ``tf.function``, XLA, the serving
SavedModel, TFLite fp32 and int8 (LiteRT, XNNPACK), training images/s of our loop, our loop
with XLA and ``model.fit`` (timed alternately), peak resident memory, and the fraction of
the machine's ceiling (a large matmul and a large convolution, timed at the start and the
end of the same run). Then the trainer at real sizes (:mod:`benchmarks.realsize`) and the
input pipeline (:mod:`benchmarks.pipeline_sections`).

The tables are printed and written into their sections of ``--results``; sections written
by other commands (``benchmarks/compare_torch.py``) are kept. Models run with random
weights: speed does not depend on the weights' values. The per-model flags
(``--train_batch_size``, ``--iters``, ...) are the options of
:class:`benchmarks.model_bench.BenchSpec`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, NoReturn, Optional, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import REPO  # noqa: E402
from benchmarks.model_bench import BenchSpec  # noqa: E402
from keras_seg import flags as ks_flags  # noqa: E402

FLAGS = flags.FLAGS
SECTIONS = ("ceiling", "models", "realsize", "pipeline")
ORDER = ("header", "decisions", "ceiling", "models", "realsize", "pipeline", "pipeline-options", "pytorch")
#: What --quick runs: the default model and the mobile one, small, few repeats.
QUICK = {"models": "unet,enet", "size": "128,128", "iters": 2, "rounds": 1, "steps_per_round": 2,
         "calibration": 2}

flags.DEFINE_list("models", None, "Registered models to measure (default: all; --quick: unet,enet).")
flags.DEFINE_list("size", ["256", "256"], "Input height,width.")
ks_flags.define_flags(BenchSpec)  # --num_classes, --train_batch_size, --iters, ...: every model's spec
flags.adopt_module_key_flags(ks_flags)  # --help lists them with the flags above
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


@dataclasses.dataclass(frozen=True)
class Plan:
    """The resolved command line (nothing below :func:`main` reads ``FLAGS``).

    Attributes:
      models: registered models to measure, in order.
      spec: how to measure each (its ``model`` and ``workdir`` are set per model).
      results: the markdown file ('': print only); json_path: the raw timings (None: none).
      sections: the parts of :data:`SECTIONS` to run.
      quick, resume, realsize_rounds, model_timeout: the flags of these names.
    """

    models: List[str]
    spec: BenchSpec
    results: str
    json_path: Optional[str]
    sections: Tuple[str, ...]
    quick: bool
    resume: bool
    realsize_rounds: int
    model_timeout: int

    def options_record(self) -> dict:
        """The ``options`` entry of the raw JSON."""
        s = self.spec
        return {"models": self.models, "height": s.height, "width": s.width, "iters": s.iters, "rounds": s.rounds,
                "steps_per_round": s.steps_per_round, "calibration": s.calibration}


def _size(values: List[str]) -> Tuple[int, int]:
    try:
        height, width = (int(v) for v in values)
    except ValueError as e:
        raise ValueError(f"--size must be two integers H,W. Received: {','.join(values)}") from e
    if height < 1 or width < 1:
        raise ValueError(f"--size must be positive. Received: {height},{width}")
    return height, width


def resolve_options() -> Plan:
    """The effective options, with --quick's defaults where a flag was not given.

    Raises:
      ValueError: an unknown model, section or phase, a bad size or a bad model option.
    """
    import keras_seg  # pylint: disable=import-outside-toplevel

    quick = {k: v for k, v in QUICK.items() if FLAGS.quick and not FLAGS[k].present}
    models = list((quick["models"].split(",") if "models" in quick else FLAGS.models) or keras_seg.list_models())
    unknown = sorted(set(models) - set(keras_seg.list_models()))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}. Registered: {keras_seg.list_models()}")
    if FLAGS.realsize_rounds < 1:
        raise ValueError(f"--realsize_rounds must be >= 1. Received: {FLAGS.realsize_rounds}")
    bad = sorted(set(FLAGS.sections) - set(SECTIONS))
    if bad:
        raise ValueError(f"--sections: unknown {bad}; choose from {list(SECTIONS)}")
    height, width = _size(quick["size"].split(",") if "size" in quick else FLAGS.size)
    counts = {k: v for k, v in quick.items() if k not in ("models", "size")}
    spec = dataclasses.replace(ks_flags.config_from_flags(FLAGS, BenchSpec), height=height, width=width, **counts)
    results = FLAGS.results
    if results is None:
        results = "benchmarks/RESULTS-quick.md" if FLAGS.quick else "benchmarks/RESULTS.md"
    json_path = FLAGS.json or (os.path.splitext(results)[0] + ".json" if results else None)
    return Plan(models, spec, results, json_path, tuple(FLAGS.sections), FLAGS.quick, FLAGS.resume,
                FLAGS.realsize_rounds, FLAGS.model_timeout)


def _ceiling(log) -> dict:
    from benchmarks.flops import conv_ceiling, matmul_ceiling  # pylint: disable=import-outside-toplevel

    mm, cv = matmul_ceiling(), conv_ceiling()
    log(f"ceiling: matmul {mm['gflops_per_s']:.1f} GFLOP/s, conv {cv['gflops_per_s']:.1f} GFLOP/s")
    return {"matmul": mm, "conv": cv}


def _measure(name: str, spec: dict, out: str, timeout: int, log) -> dict:
    """Runs :mod:`benchmarks.model_bench` on ``spec`` in a child process; its result, or a ``fatal`` one."""
    t0 = time.time()
    # From the repository root, where `python -m benchmarks.model_bench` finds the package.
    cmd = [sys.executable, "-m", "benchmarks.model_bench", json.dumps(spec), out]
    try:
        code = subprocess.run(cmd, timeout=timeout, check=False, cwd=REPO).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    if code == 0 and os.path.isfile(out):
        with open(out, encoding="utf-8") as f:
            result = json.load(f)
    else:
        why = (f"stopped after --model_timeout={timeout}s" if code == "timeout"
               else f"its process exited with status {code} (killed for memory if -9)")
        result = {"spec": spec, "errors": {}, "fatal": why}
        log(f"  [{name}] FAILED: {why}")
    result["wall_s"] = time.time() - t0
    log(f"  [{name}] done in {result['wall_s']:.0f}s")
    return result


def run_models(plan: Plan, workdir: str, log, previous: Optional[dict] = None,
               after_each: Optional[Callable[[list], None]] = None) -> list:
    """Runs :mod:`benchmarks.model_bench` once per model, each in a process stopped after
    ``plan.model_timeout`` seconds; returns the results in order.

    ``previous`` maps model names to earlier results; one measured with the same settings is
    reused instead of measured again. ``after_each(results so far)`` runs after every model.
    """
    from benchmarks.report import resume_decision  # pylint: disable=import-outside-toplevel

    results = []
    for i, name in enumerate(plan.models):
        spec = dataclasses.asdict(dataclasses.replace(plan.spec, model=name, workdir=os.path.join(workdir, name)))
        head = (f"[{i + 1}/{len(plan.models)}] {name} "
                f"({spec['height']}x{spec['width']}{', tiny' if spec['tiny'] else ''})")
        reuse, why = resume_decision((previous or {}).get(name), spec)
        if reuse:
            log(f"{head}: reusing the result from {plan.json_path} (--resume)")
            results.append((previous or {})[name])
            continue
        if why:
            log(f"{head}: measuring again: {why}")
        os.makedirs(spec["workdir"], exist_ok=True)
        log(head)
        results.append(_measure(name, spec, os.path.join(workdir, f"{name}.json"), plan.model_timeout, log))
        shutil.rmtree(spec["workdir"], ignore_errors=True)
        if after_each is not None:
            after_each(results)
    return results


def load_previous(path: str) -> dict:
    """``{"models": {name: result}, "ceiling": [...]}`` from an earlier run's JSON.

    Raises:
      ValueError: the file is not a results JSON of this command.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        models = {r["spec"]["model"]: r for r in raw.get("models", [])}
        ceilings = list(raw.get("ceiling", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"--resume: {path} is not a results JSON of python -m benchmarks ({e}). "
                         "Run without --resume, or pass its --json.") from e
    return {"models": models, "ceiling": ceilings}


class ResultsWriter:
    """The run's sections and raw timings, rewritten after every model and section.

    Attributes:
      sections: markdown section name -> text, written into ``plan.results`` (if set).
      raw: the raw JSON (machine, options, models, ceilings, realsize), written to ``plan.json_path``.
      ceilings: every ceiling measurement, earlier runs' first.
    """

    def __init__(self, plan: Plan, raw: dict, ceilings: list, info: dict, command: str, started: float):
        self.plan, self.raw, self.ceilings = plan, raw, ceilings
        self.info, self.command, self.started = info, command, started
        self.sections: Dict[str, str] = {}

    def minutes(self) -> float:
        return round((time.time() - self.started) / 60, 1)

    def header(self) -> str:
        from benchmarks import report  # pylint: disable=import-outside-toplevel

        self.info["load_average_now"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        self.info["wall_minutes"] = self.minutes()
        return "\n".join([
            "## Run", "", f"`{self.command}`", "", report.machine_header(self.info), "",
            "Numbers depend on the machine and its load (the load average at the start and at the last "
            "write is above); ratios measured alternately in one run are the most robust part.",
        ])

    def write(self, partial_results: list) -> None:
        """Rewrites the raw JSON and the sections of the results file with ``partial_results``."""
        from benchmarks import report, tables  # pylint: disable=import-outside-toplevel
        from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel

        results_path, json_path, wanted = self.plan.results, self.plan.json_path, self.plan.sections
        if "models" in wanted or "ceiling" in wanted or "models" not in self.raw:
            self.raw["models"], self.raw["ceiling"] = partial_results, self.ceilings
        if json_path:
            os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
            atomic_write_json(json_path, self.raw)
        if self.ceilings:
            self.sections["ceiling"], ceiling = tables.ceiling_section(self.ceilings)
            if partial_results:
                self.sections["models"] = tables.models_section(partial_results, self.plan.models, self.plan.spec,
                                                                ceiling)
        if "models" in wanted or not (results_path and os.path.isfile(results_path)):
            self.sections["header"] = self.header()  # the header describes the models table's run
        if results_path:
            report.write_sections(results_path, self.sections, order=ORDER)


def _check_results_file(path: str) -> None:
    from benchmarks import report  # pylint: disable=import-outside-toplevel

    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            head = f.readline().rstrip("\n")
        if head != report.TITLE:
            raise ValueError(f"{path} is not a results file (its first line is not {report.TITLE!r}); "
                             "pass another --results.")


def _earlier(plan: Plan, info: dict) -> Tuple[dict, dict]:
    """``(previous results, raw JSON to extend)`` of this run.

    ``previous`` holds what ``--resume`` may reuse. A run without the models section keeps the
    models table's raw timings, machine and options from ``plan.json_path``.

    Raises:
      ValueError: ``--resume`` without a readable earlier JSON, or an unreadable ``--json``.
    """
    json_path = plan.json_path
    previous = {"models": {}, "ceiling": []}
    if plan.resume:
        if not json_path or not os.path.isfile(json_path):
            raise ValueError(f"--resume needs the earlier run's JSON; {json_path} does not exist.")
        previous = load_previous(json_path)
    raw = {"machine": info, "options": plan.options_record()}
    if "models" not in plan.sections and json_path and os.path.isfile(json_path):
        try:
            with open(json_path, encoding="utf-8") as f:
                raw = dict(json.load(f))
        except (OSError, ValueError) as e:
            raise ValueError(f"{json_path} is not a results JSON ({e}); pass another --json.") from e
    return previous, raw


def _in_workdir(prefix: str, fn: Callable[[str], object]):
    """``fn(a fresh temporary directory)``, the directory removed afterwards."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    try:
        return fn(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _realsize(writer: ResultsWriter, log) -> None:
    from benchmarks import realsize  # pylint: disable=import-outside-toplevel

    plan = writer.plan
    cases = [c for c in realsize.CASES if c.dataset == "shapes"] if plan.quick else realsize.CASES
    writer.raw["realsize"] = _in_workdir("keras_seg_bench_realsize_", lambda d: realsize.run_realsize(
        d, log, rounds=plan.realsize_rounds, cases=cases))
    writer.sections["realsize"] = realsize.realsize_section(writer.raw["realsize"])


def _pipeline(writer: ResultsWriter, log) -> None:
    from benchmarks.pipeline_sections import run_pipeline_benchmarks  # pylint: disable=import-outside-toplevel

    writer.sections.update(_in_workdir("keras_seg_bench_data_", lambda d: run_pipeline_benchmarks(
        d, quick=writer.plan.quick, log=log)))


def _fail(error: Exception) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def _run(plan: Plan, writer: ResultsWriter, previous: dict, log) -> None:
    """Runs the sections of ``plan``, rewriting the results after each, and prints them."""
    ceilings = writer.ceilings
    if "ceiling" in plan.sections or "models" in plan.sections:
        ceilings.append(dict(_ceiling(log), when="start"))
    results = []
    if "models" in plan.sections:
        results = _in_workdir("keras_seg_bench_", lambda d: run_models(
            plan, d, log, previous["models"], after_each=writer.write))
    if ceilings and results:
        ceilings.append(dict(_ceiling(log), when="end"))
    writer.write(results)
    if "realsize" in plan.sections:
        _realsize(writer, log)
        writer.write(results)
    if "pipeline" in plan.sections:
        _pipeline(writer, log)
    writer.write(results)
    for name in ORDER:
        if name in writer.sections:
            print("\n" + writer.sections[name] + "\n", flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]} (flags start with --).")
    from benchmarks.timing import machine_info  # pylint: disable=import-outside-toplevel

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        plan = resolve_options()
        _check_results_file(plan.results)
    except ValueError as e:
        _fail(e)
    started = time.time()
    info = machine_info()
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    log(f"keras_seg benchmark on {info['cpu']} ({info['cpus']} CPUs), load {info['load_average']}")
    try:
        previous, raw = _earlier(plan, info)
    except ValueError as e:
        _fail(e)
    ceilings = [c if c.get("when", "").startswith("earlier") else dict(c, when=f"earlier run, {c.get('when', '')}")
                for c in previous["ceiling"]]
    writer = ResultsWriter(plan, raw, ceilings, info, command, started)
    _run(plan, writer, previous, log)
    if plan.results:
        log(f"Wrote {', '.join(writer.sections)} to {plan.results} in {writer.minutes()} min"
            f"{f' (raw timings: {plan.json_path})' if plan.json_path else ''}.")


if __name__ == "__main__":
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
