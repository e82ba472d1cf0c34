"""The ``pipeline`` and ``pipeline-options`` sections of ``benchmarks/RESULTS.md``.

:func:`run_pipeline_benchmarks` writes synthetic CamVid-like data, runs every measurement of
:mod:`benchmarks.pipeline` on it and returns the two markdown sections.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Tuple

from benchmarks import pipeline
from benchmarks.pipeline_data import make_camvid_like, png_sizes, real_camvid_png_sizes
from benchmarks.report import fmt, markdown_table, ratio
from benchmarks.timing import usable_cpus


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How much one run measures (:data:`QUICK` or :data:`FULL`)."""

    images: int  # synthetic training examples
    batch: int  # of the throughput measurements
    tf_batches: int
    gen_batches: int
    steps: Tuple[Tuple[str, int, int, int, int], ...]  # (model, batch, rounds, block, settle)
    option_batches: int
    option_repeats: int


# On 2 loaded cores an ENet step at 352x480 takes ~2 s per image and its first call ~35 s;
# a U-Net (64..1024 filters) step ~25 s per image.
QUICK = _Plan(images=24, batch=4, tf_batches=10, gen_batches=4, steps=(("enet", 1, 1, 2, 1),),
              option_batches=6, option_repeats=1)
FULL = _Plan(images=96, batch=4, tf_batches=40, gen_batches=12,
             steps=(("enet", 4, 2, 3, 1), ("unet", 1, 1, 2, 0)), option_batches=20, option_repeats=2)


def run_pipeline_benchmarks(workdir: str, quick: bool, log: Callable[[str], None] = print) -> Dict[str, str]:
    """Runs every measurement on synthetic CamVid-like data and returns the markdown sections.

    Args:
      workdir: scratch directory; the data go to a fresh subdirectory of it, deleted at the end.
      quick: small run (24 images, a few batches; about 2 minutes on 2 cores) instead of
        the full one (96 images, U-Net too; about 5-8 minutes).
      log: progress printer.

    Returns:
      ``{"pipeline": ..., "pipeline-options": ...}`` markdown sections.
    """
    import shutil  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    plan = QUICK if quick else FULL
    os.makedirs(workdir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="pipeline-", dir=workdir)
    try:
        return _run(plan, root, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _load() -> float:
    return os.getloadavg()[0]


def _run(plan: _Plan, root: str, log: Callable[[str], None]) -> Dict[str, str]:
    """The body of :func:`run_pipeline_benchmarks`, writing its data under ``root``."""
    load_start = _load()
    log(f"pipeline: writing {plan.images} CamVid-like examples under {root}")
    raw_dir, data_dir = make_camvid_like(root, plan.images, seed=0)
    sizes = _png_sizes(raw_dir)

    log("pipeline: tf.data throughput")
    tfd = pipeline.measure_tfdata(data_dir, plan.batch, plan.tf_batches)
    log(f"  tf.data: {tfd.images_per_s:.1f} images/s, {tfd.cpu_ms_per_image:.0f} CPU ms/image")
    log("pipeline: Python generator throughput")
    gen = pipeline.measure_generator(raw_dir, plan.batch, plan.gen_batches)
    log(f"  generator: {gen.images_per_s:.1f} images/s, {gen.cpu_ms_per_image:.0f} CPU ms/image")

    steps = []
    for model, batch, rounds, block, settle in plan.steps:
        log(f"pipeline: {model} step, real vs synthetic input (batch {batch})")
        steps.append(pipeline.step_time_real_vs_synthetic(data_dir, model, batch, rounds=rounds, block=block,
                                                          settle=settle, log=log))

    load_mid = _load()
    log("pipeline: tf.data options")
    options = pipeline.options_experiments(data_dir, plan.batch, plan.option_batches, repeats=plan.option_repeats,
                                           log=log)
    load_end = _load()
    return {"pipeline": _pipeline_section(plan, sizes, tfd, gen, steps, (load_start, load_mid)),
            "pipeline-options": _options_section(plan, options, (load_mid, load_end))}


def _png_sizes(raw_dir: str) -> str:
    """The synthetic PNGs' mean sizes, and real CamVid's where it is at hand."""
    img_bytes, lab_bytes = png_sizes(raw_dir)
    real_sizes = real_camvid_png_sizes()
    sizes = f"synthetic PNGs {img_bytes / 1e3:.0f} KB image / {lab_bytes / 1e3:.1f} KB label"
    if real_sizes:
        sizes += f" (real CamVid train: {real_sizes[0] / 1e3:.0f} KB / {real_sizes[1] / 1e3:.1f} KB)"
    return sizes


def _pipeline_section(plan: _Plan, sizes: str, tfd: pipeline.Throughput, gen: pipeline.Throughput,
                      steps: List[pipeline.StepComparison], loads: Tuple[float, float]) -> str:
    """The ``pipeline`` section: throughput of both inputs, and the step fed by each."""
    thr = markdown_table(
        ["input", "images/s", "vs generator", "CPU ms/image"],
        [["tf.data `make_dataset` (parallel, TFRecords)", fmt(tfd.images_per_s, ".1f"),
          ratio(tfd.images_per_s, gen.images_per_s), fmt(tfd.cpu_ms_per_image, ".0f")],
         ["PIL + NumPy generator (1 Python thread)", fmt(gen.images_per_s, ".1f"), "1.00",
          fmt(gen.cpu_ms_per_image, ".0f")]],
    )
    step_rows = [[s.model, s.batch, fmt(s.real_ms, ".0f"), fmt(s.synthetic_ms, ".0f"), fmt(s.ratio),
                  len(s.real.times)] for s in steps]
    step_table = markdown_table(["model", "batch", "real input ms/step", "one cached batch ms/step",
                                 "real / cached", "steps timed each"], step_rows)
    return "\n".join([
        "## Input pipeline",
        "",
        f"CamVid-like synthetic data: {plan.images} training images of 360x480 ({sizes}), "
        f"batch {plan.batch}, crop 352x480, scale 0.5-2.0, flip, photometric jitter; "
        f"{usable_cpus()} usable CPUs, 1-minute load average {loads[0]:.2f} at the start and "
        f"{loads[1]:.2f} at the end (other processes slow every wall-clock number). Throughput over "
        f"{plan.tf_batches} (tf.data) and {plan.gen_batches} (generator) batches after warm-up; CPU "
        "ms/image is this process's CPU time (all threads) per image.",
        "",
        thr,
        "",
        "Training step (`make_train_step`, MirroredStrategy, SGD momentum 0.9) fed by the real "
        "pipeline vs by one in-memory batch repeated; medians of alternating blocks. The pipeline "
        "shares the CPUs with the step, so the ratio is what input costs a CPU training run.",
        "",
        step_table,
    ])


def _joined(values, spec: str) -> str:
    return " / ".join(fmt(v, spec) for v in values)


def _options_section(plan: _Plan, options: List[pipeline.OptionResult], loads: Tuple[float, float]) -> str:
    """The ``pipeline-options`` section: before/after each ``tf.data.Options`` change."""
    opt_rows = [[res.name, _joined([b.images_per_s for b in res.before], ".1f"),
                 _joined([a.images_per_s for a in res.after], ".1f"), _joined(res.ratios, ".2f"),
                 _joined(res.cpu_ratios, ".2f")] for res in options]
    runs = " / ".join(str(i + 1) for i in range(plan.option_repeats))
    opt_table = markdown_table(["change", f"before images/s (run {runs})", f"after images/s (run {runs})",
                                "after / before images/s", "after / before CPU ms/image"], opt_rows)
    return "\n".join([
        "## tf.data options",
        "",
        f"`tfdata_throughput` (batch {plan.batch}, {plan.option_batches} batches after 3 warm-up) "
        f"without and with each change, measured back to back, {plan.option_repeats} time(s); the "
        f"A/A row changes nothing and shows the noise (1-minute load average {loads[0]:.2f} at the start, "
        f"{loads[1]:.2f} at the end). Options are applied to the "
        "whole `make_dataset` pipeline with `with_options`; the cache row is a separate stream "
        "that caches decoded examples before augmentation.",
        "",
        opt_table,
    ])
