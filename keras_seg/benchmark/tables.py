"""Turns the per-model results of :mod:`keras_seg.benchmark.model_bench` into markdown."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from keras_seg.benchmark.flops import TRAIN_FLOPS_FACTOR
from keras_seg.benchmark.report import fmt, markdown_table, ratio

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
    infer_rows, train_rows, latency_rows, export_rows, errors = [], [], [], [], []
    for r in results:
        name = r["spec"]["model"] if "spec" in r else r.get("model", "?")
        if "params" not in r:
            errors.append(f"- {name}: {r.get('fatal', 'no result')}")
            continue
        g = r.get("gflops")
        best_infer = max((v for v in (_ips(r, "infer", "tf_function"), _ips(r, "infer", "xla")) if v), default=None)
        infer_rows.append([
            name, f"{r['params']:,}", fmt(g, ".2f"),
            *[fmt(_ips(r, "infer", k), ".2f") for k, _ in INFER_COLUMNS],
            fmt(r.get("rss_mb", {}).get("infer"), ".0f"),
            fmt(_pct(ceiling_fraction(g, best_infer, ceiling)), ".1f"),
        ])
        ours, fit = _ips(r, "train", "ours"), _ips(r, "train", "fit")
        train_rows.append([
            name, *[fmt(_ips(r, "train", k), ".2f") for k, _ in TRAIN_COLUMNS],
            ratio(ours, fit), ratio(_ips(r, "train", "ours_xla"), ours),
            fmt(r.get("rss_mb", {}).get("train"), ".0f"),
            fmt(_pct(ceiling_fraction(g, ours, ceiling, TRAIN_FLOPS_FACTOR)), ".1f"),
        ])
        latency_rows.append([
            name, *[fmt(_ms(r, "infer", k), ".1f") for k, _ in INFER_COLUMNS],
            fmt(_ms(r, "infer", "tflite_fp32_1thread"), ".1f"),
            *[fmt(_ms(r, "train", k), ".0f") for k, _ in TRAIN_COLUMNS],
        ])
        conv = r.get("convert_s", {})
        export_rows.append([
            name, fmt(r.get("saved_model_mb"), ".1f"), fmt(r.get("tflite_mb", {}).get("tflite_fp32"), ".2f"),
            fmt(r.get("tflite_mb", {}).get("tflite_int8"), ".2f"),
            fmt(_first(r, "infer", "tf_function"), ".1f"), fmt(_first(r, "infer", "xla"), ".1f"),
            fmt(_first(r, "train", "ours"), ".1f"), fmt(_first(r, "train", "ours_xla"), ".1f"),
            fmt(r.get("saved_model_export_s"), ".1f"), fmt(conv.get("tflite_fp32"), ".1f"),
            fmt(conv.get("tflite_int8"), ".1f"),
        ])
        for phase, line in sorted(r.get("errors", {}).items()):
            errors.append(f"- {name} / {phase}: {line}")
    parts = [
        "### Inference, images/s",
        "",
        markdown_table(["model", "params", "GFLOPs/img", *[h for _, h in INFER_COLUMNS], "peak RSS MB",
                        "% of ceiling"], infer_rows),
        "",
        "### Training, images/s",
        "",
        markdown_table(["model", *[h for _, h in TRAIN_COLUMNS], "ours / fit", "XLA / ours", "peak RSS MB",
                        "% of ceiling"], train_rows),
        "",
        "### Latency, ms per call (inference: per batch; training: per step)",
        "",
        markdown_table(["model", *[h for _, h in INFER_COLUMNS], "TFLite fp32 1 thread",
                        *[f"train {h}" for _, h in TRAIN_COLUMNS]], latency_rows),
        "",
        "### Export sizes and one-time costs",
        "",
        markdown_table(["model", "SavedModel MB", "TFLite fp32 MB", "TFLite int8 MB", "first tf.function call s",
                        "first XLA call s", "first train step s", "first XLA train step s", "SavedModel export s",
                        "fp32 convert s", "int8 convert s"], export_rows),
    ]
    if errors:
        parts += ["", "### Failed phases", "", *errors]
    return "\n".join(parts)


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
