"""Turns the per-model results of :mod:`benchmarks.model_bench` and the ceiling into markdown:
the ``ceiling`` and ``models`` sections of ``benchmarks/RESULTS.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from benchmarks.flops import TRAIN_FLOPS_FACTOR
from benchmarks.report import fmt, markdown_table, ratio
from benchmarks.timing import usable_cpus

if TYPE_CHECKING:
    from benchmarks.model_bench import BenchSpec

INFER_COLUMNS = (("tf_function", "tf.function"), ("xla", "XLA"), ("saved_model", "SavedModel"),
                 ("tflite_fp32", "TFLite fp32"), ("tflite_int8", "TFLite int8"))
TRAIN_COLUMNS = (("ours", "ours"), ("ours_xla", "ours + XLA"), ("fit", "model.fit"))


def _ips(result: Mapping[str, Any], group: str, key: str) -> Optional[float]:
    entry = result.get(group, {}).get(key, {})
    return entry.get("images_per_s")


def _ms(result: Mapping[str, Any], group: str, key: str) -> Optional[float]:
    entry = result.get(group, {}).get(key, {})
    s = entry.get("median_s")
    return None if s is None else s * 1000.0


def _first(result: Mapping[str, Any], group: str, key: str) -> Optional[float]:
    return result.get(group, {}).get(key, {}).get("first_s")


def ceiling_fraction(gflops_per_image: Optional[float], images_per_s: Optional[float], ceiling: float,
                     factor: float = 1.0) -> Optional[float]:
    """Achieved GFLOP/s (``factor`` x forward GFLOPs x images/s) as a fraction of ``ceiling`` GFLOP/s."""
    if not gflops_per_image or not images_per_s or not ceiling:
        return None
    return factor * gflops_per_image * images_per_s / ceiling


def model_tables(results: Sequence[Mapping[str, Any]], ceiling: float) -> str:
    """The inference, training, latency and export tables, and the list of failed phases."""
    rows: Dict[str, List[List[str]]] = {"infer": [], "train": [], "latency": [], "export": []}
    errors = []
    for r in results:
        name = r["spec"]["model"] if "spec" in r else r.get("model", "?")
        if "params" not in r:
            errors.append(f"- {name}: {r.get('fatal', 'no result')}")
            continue
        for table, row in _rows(name, r, ceiling).items():
            rows[table].append(row)
        for phase, line in sorted(r.get("errors", {}).items()):
            errors.append(f"- {name} / {phase}: {line}")
    parts = [
        "### Inference, images/s",
        "",
        markdown_table(["model", "params", "GFLOPs/img", *[h for _, h in INFER_COLUMNS], "peak RSS MB",
                        "% of ceiling"], rows["infer"]),
        "",
        "### Training, images/s",
        "",
        markdown_table(["model", *[h for _, h in TRAIN_COLUMNS], "ours / fit", "XLA / ours", "peak RSS MB",
                        "% of ceiling"], rows["train"]),
        "",
        "### Latency, ms per call (inference: per batch; training: per step)",
        "",
        markdown_table(["model", *[h for _, h in INFER_COLUMNS], "TFLite fp32 1 thread",
                        *[f"train {h}" for _, h in TRAIN_COLUMNS]], rows["latency"]),
        "",
        "### Export sizes and one-time costs",
        "",
        markdown_table(["model", "SavedModel MB", "TFLite fp32 MB", "TFLite int8 MB", "first tf.function call s",
                        "first XLA call s", "first train step s", "first XLA train step s", "SavedModel export s",
                        "fp32 convert s", "int8 convert s"], rows["export"]),
    ]
    if errors:
        parts += ["", "### Failed phases", "", *errors]
    return "\n".join(parts)


def _rows(name: str, r: Mapping[str, Any], ceiling: float) -> Dict[str, List[str]]:
    """One model's row of each table of :func:`model_tables`."""
    g = r.get("gflops")
    best_infer = max((v for v in (_ips(r, "infer", "tf_function"), _ips(r, "infer", "xla")) if v), default=None)
    ours, fit = _ips(r, "train", "ours"), _ips(r, "train", "fit")
    conv = r.get("convert_s", {})
    return {
        "infer": [
            name, f"{r['params']:,}", fmt(g, ".2f"),
            *[fmt(_ips(r, "infer", k), ".2f") for k, _ in INFER_COLUMNS],
            fmt(r.get("rss_mb", {}).get("infer"), ".0f"),
            fmt(_pct(ceiling_fraction(g, best_infer, ceiling)), ".1f"),
        ],
        "train": [
            name, *[fmt(_ips(r, "train", k), ".2f") for k, _ in TRAIN_COLUMNS],
            ratio(ours, fit), ratio(_ips(r, "train", "ours_xla"), ours),
            fmt(r.get("rss_mb", {}).get("train"), ".0f"),
            fmt(_pct(ceiling_fraction(g, ours, ceiling, TRAIN_FLOPS_FACTOR)), ".1f"),
        ],
        "latency": [
            name, *[fmt(_ms(r, "infer", k), ".1f") for k, _ in INFER_COLUMNS],
            fmt(_ms(r, "infer", "tflite_fp32_1thread"), ".1f"),
            *[fmt(_ms(r, "train", k), ".0f") for k, _ in TRAIN_COLUMNS],
        ],
        "export": [
            name, fmt(r.get("saved_model_mb"), ".1f"), fmt(r.get("tflite_mb", {}).get("tflite_fp32"), ".2f"),
            fmt(r.get("tflite_mb", {}).get("tflite_int8"), ".2f"),
            fmt(_first(r, "infer", "tf_function"), ".1f"), fmt(_first(r, "infer", "xla"), ".1f"),
            fmt(_first(r, "train", "ours"), ".1f"), fmt(_first(r, "train", "ours_xla"), ".1f"),
            fmt(r.get("saved_model_export_s"), ".1f"), fmt(conv.get("tflite_fp32"), ".1f"),
            fmt(conv.get("tflite_int8"), ".1f"),
        ],
    }


def _pct(v: Optional[float]) -> Optional[float]:
    return None if v is None else 100.0 * v


def speedup_rows(results: Sequence[Mapping[str, Any]]) -> List[List[str]]:
    """Before/after ratios (after / before, in images/s) of the per-model speed-up candidates."""
    rows = []
    for r in results:
        if "params" not in r:
            continue
        name = r["spec"]["model"]
        rows.append([name,
                     ratio(_ips(r, "infer", "xla"), _ips(r, "infer", "tf_function")),
                     ratio(_ips(r, "train", "ours_xla"), _ips(r, "train", "ours")),
                     ratio(_ips(r, "infer", "tflite_fp32"), _ips(r, "infer", "tflite_fp32_1thread")),
                     ratio(_ips(r, "infer", "tflite_int8"), _ips(r, "infer", "tflite_fp32"))])
    return rows


def speedup_table(results: Sequence[Mapping[str, Any]], threads: int) -> str:
    """The per-model before/after table of :func:`speedup_rows`."""
    return markdown_table(
        ["model", "XLA inference / tf.function", "XLA train step / ours",
         f"TFLite fp32 {threads} threads / 1 thread", "TFLite int8 / fp32"],
        speedup_rows(results))


def summarize_errors(results: Sequence[Mapping[str, Any]]) -> Dict[str, List[str]]:
    """Model name -> failed phases."""
    return {r["spec"]["model"]: sorted(r.get("errors", {})) for r in results if r.get("errors") and "spec" in r}


def learning_rates(results: Sequence[Mapping[str, Any]], default: float) -> str:
    """'learning rate 0.0001', or the models at each rate where they differ (after --resume);
    ``default`` where no result records one."""
    rates = {r["spec"]["model"]: r["spec"].get("learning_rate") for r in results if "spec" in r}
    distinct = sorted({v for v in rates.values() if v is not None})
    if len(distinct) <= 1:
        return f"learning rate {distinct[0] if distinct else default:g}"
    return "learning rates " + "; ".join(
        f"{v:g}: {', '.join(m for m, r in rates.items() if r == v)}" for v in distinct)


def ceiling_section(runs: list) -> Tuple[str, float]:
    """The ceiling table over every ceiling measurement, and the best rate."""
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
        markdown_table(["kernel", "shape", "GFLOP", "ms", "GFLOP/s"], rows, "llrrr"), "",
        f"Ceiling: **{ceiling:.1f} GFLOP/s**.",
    ])
    return text, ceiling


def models_section(results: list, models: Sequence[str], spec: "BenchSpec", ceiling: float) -> str:
    """The models section: settings, the per-model tables of ``results`` (of ``models``, each
    measured as ``spec`` says) and the speed-up candidates."""
    s = spec
    missing = [m for m in models if m not in {r["spec"]["model"] for r in results}]
    return "\n".join([
        f"## Models at {s.height}x{s.width}{' (tiny options)' if s.tiny else ''}", "",
        f"Inference batch {s.infer_batch_size} (TFLite: 1), training batch {s.train_batch_size}, "
        f"{s.num_classes} classes, random weights, compute precision {s.mixed_precision}"
        f"{'' if s.mixed_precision == 'float32' else ' (SavedModel and TFLite: float32)'}, SGD momentum 0.9 at "
        f"{learning_rates(results, s.learning_rate)}. Medians of {s.iters} inference calls after a "
        f"warm-up call, and of {s.rounds * s.steps_per_round} training steps per method "
        f"({s.rounds} alternating rounds of {s.steps_per_round}, after one untimed step each). "
        f"Training % of ceiling counts {TRAIN_FLOPS_FACTOR}x the forward FLOPs; inference % uses the faster "
        "of tf.function and XLA. `model.fit` is compiled with Keras's defaults (`jit_compile='auto'`, which Keras "
        "resolves to no XLA on a CPU-only machine).", "",
        *([f"**Partial:** not yet measured: {', '.join(missing)}. Continue with the same command and "
           "`--resume`.", ""] if missing else []),
        model_tables(results, ceiling), "",
        "### Speed-up candidates per model (after / before, images/s)", "",
        speedup_table(results, usable_cpus()),
    ])
