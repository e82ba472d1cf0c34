r"""Why TFLite int8 is (not) faster than fp32: which ops leave XNNPACK, and what they cost.

    python benchmarks/int8_ops.py [--models=enet,segnet] [--size=256] [--threads=N]
        [--rounds=15] [--iters=3] [--calibration=4] [--detail] [--tiny]
        [--results=benchmarks/RESULTS.md] [--json=PATH]

For each registered model (default: all), in a process of its own: build it (paper options,
or the registry's tiny ones with ``--tiny``; 21 classes, random weights) at ``--size``,
convert it to TFLite fp32 and int8 as :mod:`keras_seg.export` does
(:func:`~keras_seg.export.write_tflite_source`, :func:`~keras_seg.export.convert_tflite`; int8
calibrated on ``--calibration`` random images, as the benchmark does), then

* time both under LiteRT with XNNPACK on ``--threads`` threads (default: every usable CPU),
  alternately, ``--rounds`` invocations each; the best invocation counts, which other load
  on the machine disturbs least;
* list the int8 model's nodes that XNNPACK does not run (:mod:`benchmarks.litert_ops`)
  and time each alone on the values it sees in the model: its share is that time over the
  whole int8 invocation.

With ``--detail`` every node of both models is timed alone and a second table gives, per
model, the op types whose int8 nodes take longer than their fp32 twins (delegated or not).
The table goes to stdout and to the ``int8-ops`` section of ``--results`` ('': print only);
raw numbers (every timed node) to ``--json`` (default: beside ``--results``, ``int8_ops.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run as a script: make `benchmarks` and `keras_seg` importable
    sys.path.insert(0, _REPO)

from benchmarks import litert_ops, report, timing  # noqa: E402

NUM_CLASSES = 21
#: --detail lists int8 op types costing at least this fraction of the int8 invocation more than in fp32.
MIN_EXTRA = 0.005
HEADERS = ["model", "fp32 ms", "int8 ms", "int8/fp32 speed", "int8 XNNPACK partitions",
           "int8 ops not delegated to XNNPACK (share of int8 time)"]


def _log(msg: str) -> None:
    print(f"[int8_ops] {msg}", file=sys.stderr, flush=True)


def measure(name: str, size: int, threads: int, rounds: int, iters: int, calibration: int, detail: bool,
            tiny: bool = False) -> dict:
    """Builds, converts and profiles one model (see the module docstring); returns JSON-ready results."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    import keras_seg  # pylint: disable=import-outside-toplevel
    from keras_seg.export import convert_tflite, write_tflite_source  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    options = keras_seg.tiny_options(name) if tiny else {}
    model = keras_seg.build_model(name, NUM_CLASSES, input_shape=(size, size, 3), **options)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(1, size, size, 3), dtype=np.uint8) for _ in range(calibration)]

    def representative():
        for image in images:
            yield {"image": image}

    blobs = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_tflite_source(model, (size, size), os.path.join(tmp, "source"))
        for kind in ("fp32", "int8"):
            t0 = time.perf_counter()
            blobs[kind] = convert_tflite(os.path.join(tmp, "source"), kind, representative)
            _log(f"{name}: {kind} converted in {time.perf_counter() - t0:.0f}s ({len(blobs[kind]) / 2**20:.1f} MB)")
    del model
    x = litert_ops.random_input(blobs["int8"])
    fp32_ms, int8_ms = litert_ops.time_models([blobs["fp32"], blobs["int8"]], x, threads, rounds)
    result = {"model": name, "size": size, "threads": threads, "fp32_ms": fp32_ms, "int8_ms": int8_ms}
    for kind in ("int8", "fp32") if detail else ("int8",):
        nodes, partitions = litert_ops.profile_ops(blobs[kind], x, threads, iters, only_undelegated=not detail)
        result[kind] = {"partitions": partitions, "node_count": len(nodes),
                        "delegated_count": sum(n.delegated for n in nodes),
                        "nodes": [vars(n) for n in nodes if n.ms is not None]}  # the timed ones
    return result


def _nodes(result: dict, kind: str):
    return [litert_ops.OpInfo(**n) for n in result[kind]["nodes"]]


def table_row(result: dict) -> list:
    """One row of the main table."""
    if "error" in result:
        return [result["model"], "n/a", "n/a", "n/a", "n/a", f"failed: {result['error']}"]
    int8_ms = result["int8_ms"]
    undelegated = litert_ops.by_op(_nodes(result, "int8"), delegated=False)
    cells = [f"{op} {dtype} x{count} {100 * ms / int8_ms:.1f}%" for (op, dtype), (count, ms) in undelegated.items()]
    total = sum(ms for _, ms in undelegated.values())
    summary = f"{100 * total / int8_ms:.1f}% in all: " + ", ".join(cells) if cells else "none"
    return [result["model"], report.fmt(result["fp32_ms"], ".1f"), report.fmt(int8_ms, ".1f"),
            report.ratio(result["fp32_ms"], int8_ms), str(result["int8"]["partitions"]), summary]


def detail_rows(result: dict) -> list:
    """Op types whose int8 nodes together take longer than their fp32 nodes (``--detail``)."""
    if "error" in result or "fp32" not in result:
        return []
    int8 = litert_ops.by_op(_nodes(result, "int8"))
    fp32 = litert_ops.by_op(_nodes(result, "fp32"))
    rows = []
    for (op, dtype), (count, ms) in int8.items():
        # The fp32 twin of an int8 node computes in float32; int32/bool nodes stay as they are.
        _, f_ms = fp32.get((op, "float32" if dtype == "int8" else dtype), (0, 0.0))
        if op not in ("QUANTIZE", "DEQUANTIZE") and ms - f_ms >= MIN_EXTRA * result["int8_ms"]:
            rows.append([result["model"], f"{op} {dtype}", str(count), report.fmt(ms, ".2f"), report.fmt(f_ms, ".2f"),
                         f"{100 * (ms - f_ms) / result['int8_ms']:.1f}%"])
    return rows


def _worker(args) -> int:
    result = measure(args.worker, args.size, args.threads, args.rounds, args.iters, args.calibration, args.detail,
                     args.tiny)
    with open(args.worker_out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated registered models (default: all)")
    p.add_argument("--size", type=int, default=256, help="square input side (the benchmark's 256)")
    p.add_argument("--threads", type=int, default=None, help="LiteRT threads (default: the usable CPUs)")
    p.add_argument("--rounds", type=int, default=15, help="alternating fp32/int8 invocations (the best counts)")
    p.add_argument("--iters", type=int, default=3, help="invocations of each node alone (the best counts)")
    p.add_argument("--calibration", type=int, default=4, help="random images for the int8 calibration")
    p.add_argument("--detail", action="store_true", help="time every node of both models; add the int8-slower table")
    p.add_argument("--tiny", action="store_true", help="the registry's tiny variants (a smoke run)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds one model's process may run")
    p.add_argument("--results", default=os.path.join(_REPO, "benchmarks", "RESULTS.md"),
                   help="results file whose `int8-ops` section is rewritten ('': print only)")
    p.add_argument("--json", default=None, help="raw results (default: int8_ops.json beside --results)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker_out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.threads = args.threads or timing.usable_cpus()
    for flag in ("size", "threads", "rounds", "iters", "calibration", "timeout"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1. Received: --{flag}={getattr(args, flag)}")
    if args.worker:
        return _worker(args)

    import keras_seg  # pylint: disable=import-outside-toplevel

    models = [m for m in args.models.split(",") if m] or keras_seg.list_models()
    unknown = sorted(set(models) - set(keras_seg.list_models()))
    if unknown:
        p.error(f"unknown models {unknown}; registered: {keras_seg.list_models()}")
    info = timing.machine_info()
    results, t0 = [], time.perf_counter()
    passed = [f"--{k}={getattr(args, k)}" for k in ("size", "threads", "rounds", "iters", "calibration")]
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "result.json")
            cmd = [sys.executable, os.path.abspath(__file__), f"--worker={name}", f"--worker_out={out}", *passed]
            cmd += ["--detail"] * args.detail + ["--tiny"] * args.tiny
            try:
                proc = subprocess.run(cmd, timeout=args.timeout, check=False)
                if proc.returncode == 0:
                    results.append(json.load(open(out, encoding="utf-8")))
                else:
                    results.append({"model": name, "error": f"exit code {proc.returncode}"})
            except subprocess.TimeoutExpired:
                results.append({"model": name, "error": f"timed out after {args.timeout}s"})
        _log(" | ".join(table_row(results[-1])))
    info["load_average_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    info["wall_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    table = report.markdown_table(HEADERS, [table_row(r) for r in results], align="lrrrrl")
    command = shlex.join(["python", "benchmarks/int8_ops.py", *(sys.argv[1:] if argv is None else argv)])
    parts = [
        "## TFLite int8 against fp32, op by op",
        "",
        f"`{command}`",
        "",
        report.machine_header(info),
        "",
        f"{'Tiny' if args.tiny else 'Paper'} options, {NUM_CLASSES} classes, random weights, batch 1 at {args.size}x{args.size}; "
        "converted as `keras_seg.export` converts (int8 calibrated on random images). LiteRT with "
        f"XNNPACK on {args.threads} thread(s); ms is the best of {args.rounds} alternating invocations; "
        "int8/fp32 speed is fp32 ms / int8 ms (above 1: int8 is faster). Each undelegated node "
        "is timed alone on the values it sees in the model (`benchmarks.litert_ops`); "
        "its share is that time over the int8 invocation.",
        "",
        table,
    ]
    detail = [row for r in results for row in detail_rows(r)]
    if args.detail:
        parts += ["", "Op types whose int8 nodes, each timed alone, take longer than their fp32 nodes "
                  f"(extra: the difference over the int8 invocation, listed from {100 * MIN_EXTRA:.1f}%):", "",
                  report.markdown_table(["model", "int8 op", "nodes", "int8 ms", "fp32 ms", "extra"], detail, "llrrrr")
                  if detail else "none"]
    text = "\n".join(parts)
    print(text, flush=True)
    if args.results:
        report.write_sections(args.results, {"int8-ops": text})
        json_path = args.json or os.path.join(os.path.dirname(os.path.abspath(args.results)), "int8_ops.json")
    else:
        json_path = args.json
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump({"info": info, "command": command, "results": results}, f, indent=1)
    return text


if __name__ == "__main__":
    out = main()
    sys.exit(out if isinstance(out, int) else 0)
