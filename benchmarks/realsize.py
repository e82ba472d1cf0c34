r"""Training at the sizes users train at: each shipped config's own crop and batch size.

    python -m benchmarks --sections=realsize          # the RESULTS.md section
    python -m benchmarks.realsize --flagfile=configs/enet_camvid.cfg --data_dir=D \
        --model_dir=M --train_steps=12 --log_every=3 --output=result.json   # one child

The parent writes a CamVid-like dataset (360x480 synthetic street scenes, 11 classes, see
:func:`benchmarks.pipeline_data.make_camvid_like`) and the built-in shapes dataset, then
runs the real trainer (:func:`keras_seg.training.train`, the code ``python -m
keras_seg.train`` runs) once per config and variant, each in a process of its own, so the
allocator setting of ``keras_seg._alloc`` (read at import) differs between them. The
variants alternate within each round:

* ``before``: what training did before issue 13: ``KERAS_SEG_ALLOCATOR=system`` (glibc's
  defaults), ``KERAS_SEG_FUSED_BATCH_NORM=0`` (Keras 3's composite batch norm),
  ``--steps_per_loop=1`` and ``--nojit_compile``;
* ``after``: the config as shipped, with today's defaults;
* ``after_xla``: the same with ``--jit_compile`` (XLA), to choose it per config.

Each child samples wall time and ``resource.getrusage`` (user and system CPU seconds of all
its threads, minor page faults) at every progress line; the first window (tracing, the
first steps) is dropped and the rest is reported per step. Every number is per process, so
the table shows where CPU time goes: a high sys/user ratio is allocator or page-fault
churn, not arithmetic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import REPO  # noqa: E402  (configs are relative to it; children run from it)


@dataclasses.dataclass(frozen=True)
class Case:
    """One shipped config and how long to measure it.

    Attributes:
      config: flagfile, relative to the repository root.
      dataset: ``camvid`` (CamVid-like, 11 classes) or ``shapes`` (the demo's data).
      log_every: steps per measured window (a progress line ends each).
      windows: measured windows after the first one, which is dropped.
    """

    config: str
    dataset: str
    log_every: int
    windows: int


#: The configs of issue 13: CPU-trainable CamVid models and the demo.
CASES = (
    Case("configs/enet_camvid.cfg", "camvid", 3, 3),
    Case("configs/linknet_camvid.cfg", "camvid", 3, 3),
    Case("configs/segnet_basic_camvid.cfg", "camvid", 3, 3),
    Case("configs/fc_densenet56_camvid.cfg", "camvid", 5, 3),
    Case("configs/unet.cfg", "shapes", 30, 3),
)
#: Environment and extra flags of each variant.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "before": {"env": {"KERAS_SEG_ALLOCATOR": "system", "KERAS_SEG_FUSED_BATCH_NORM": "0"},
               "flags": ["--steps_per_loop=1", "--nojit_compile"]},
    "after": {"env": {}, "flags": []},
    "after_xla": {"env": {}, "flags": ["--jit_compile"]},
}


def _usage() -> Dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"time": time.perf_counter(), "user": ru.ru_utime, "sys": ru.ru_stime, "minflt": float(ru.ru_minflt)}


def summarize(samples: Sequence[Dict[str, Any]], batch_size: int) -> Dict[str, Any]:
    """Per-step figures from progress samples ``[{step, time, user, sys, minflt}, ...]``.

    The first sample closes the warm-up window and is the baseline; the rest are measured.

    Raises:
      ValueError: fewer than two samples, or steps that do not increase.
    """
    if len(samples) < 2:
        raise ValueError(f"need at least two progress samples (warm-up + one window), got {len(samples)}")
    first, last = samples[0], samples[-1]
    steps = last["step"] - first["step"]
    if steps <= 0:
        raise ValueError(f"progress steps do not increase: {[s['step'] for s in samples]}")
    wall = last["time"] - first["time"]
    user, sys_ = last["user"] - first["user"], last["sys"] - first["sys"]
    return {
        "steps": steps, "batch_size": batch_size, "wall_s": wall,
        "images_per_s": steps * batch_size / wall if wall > 0 else None,
        "user_s_per_step": user / steps, "sys_s_per_step": sys_ / steps,
        "sys_over_user": sys_ / user if user > 0 else None,
        "minflt_per_step": (last["minflt"] - first["minflt"]) / steps,
    }


# ---------------------------------------------------------------- child process


def child_main(argv: List[str]) -> None:
    """``python -m benchmarks.realsize``: trains one config and writes ``--output``."""
    from absl import flags  # pylint: disable=import-outside-toplevel

    from keras_seg import _alloc  # pylint: disable=import-outside-toplevel
    from keras_seg import flags as ks_flags  # pylint: disable=import-outside-toplevel
    from keras_seg.fileio import atomic_write_json  # pylint: disable=import-outside-toplevel
    from keras_seg.training import train  # pylint: disable=import-outside-toplevel

    f = flags.FLAGS
    cfg = ks_flags.config_from_flags(f)
    samples: List[Dict[str, Any]] = []

    def on_progress(step: int) -> None:
        samples.append(dict(_usage(), step=step))

    result = train(cfg, log=lambda m: print(m, flush=True), on_progress=on_progress)
    out = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("model_dir", "data_dir")},
           "allocator": _alloc.applied(), "samples": samples, "final_loss": result.loss,
           **summarize(samples, cfg.batch_size)}
    atomic_write_json(f.output, out)


# ---------------------------------------------------------------- parent


def make_datasets(root: str, log: Callable[[str], None]) -> Dict[str, str]:
    """The CamVid-like and shapes datasets under ``root``; returns ``{dataset: tfrecord_dir}``."""
    from data_prep import shapes  # pylint: disable=import-outside-toplevel
    from data_prep.folder import convert_folder  # pylint: disable=import-outside-toplevel
    from benchmarks.pipeline_data import make_camvid_like  # pylint: disable=import-outside-toplevel

    _, camvid = make_camvid_like(os.path.join(root, "camvid"), n_train=30, log=log)
    raw = os.path.join(root, "shapes_raw")
    shapes.generate(raw, num_train=200, num_val=10, log=log)
    out = os.path.join(root, "shapes")
    convert_folder(os.path.join(raw, "images"), os.path.join(raw, "masks"), out,
                   ["background", "disk", "square", "triangle"], name="shapes", workers=1, log=log)
    return {"camvid": camvid, "shapes": out}


def run_case(case: Case, variant: str, data_dir: str, workdir: str, log: Callable[[str], None],
             timeout: float = 1800) -> Dict[str, Any]:
    """Runs one config under one variant in a child process; returns its result or ``{"error": ...}``."""
    tag = f"{os.path.splitext(os.path.basename(case.config))[0]}-{variant}"
    output, model_dir = os.path.join(workdir, f"{tag}.json"), os.path.join(workdir, tag)
    steps = case.log_every * (1 + case.windows)
    # A model_dir left by an earlier, interrupted run would resume (and train nothing).
    shutil.rmtree(model_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "benchmarks.realsize", f"--flagfile={case.config}",
           f"--data_dir={data_dir}", f"--model_dir={model_dir}", f"--train_steps={steps}",
           f"--log_every={case.log_every}", "--eval_split=", f"--checkpoint_every={steps}", "--keep_checkpoints=1",
           "--warmup_steps=0", f"--output={output}", *VARIANTS[variant]["flags"]]
    env = dict(os.environ, **VARIANTS[variant]["env"])
    for name in ("KERAS_SEG_ALLOCATOR", "KERAS_SEG_FUSED_BATCH_NORM"):
        if name not in VARIANTS[variant]["env"]:
            env.pop(name, None)
    log(f"realsize: {tag}: {steps} steps")
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not os.path.isfile(output):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        log(f"realsize: {tag} failed (exit {proc.returncode}): {' | '.join(tail)}")
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    with open(output, encoding="utf-8") as fh:
        result = json.load(fh)
    result["process_wall_s"] = time.time() - started
    log(f"realsize: {tag}: {result['images_per_s']:.2f} img/s, user {result['user_s_per_step']:.2f} s/step, "
        f"sys {result['sys_s_per_step']:.3f} s/step")
    return result


def run_realsize(workdir: str, log: Callable[[str], None], rounds: int = 1,
                 cases: Sequence[Case] = CASES) -> Dict[str, Any]:
    """Every case under every variant, alternating, ``rounds`` times; returns the raw results.

    ``{"cases": [case dicts], "runs": {config: {variant: [result per round]}}}``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1. Received: rounds={rounds}")
    started = (time.strftime("%Y-%m-%d %H:%M"), " ".join(f"{v:.2f}" for v in os.getloadavg()))
    data = make_datasets(os.path.join(workdir, "data"), log)
    runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {c.config: {v: [] for v in VARIANTS} for c in cases}
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for case in cases:
            for variant in order:
                runs[case.config][variant].append(
                    run_case(case, variant, data[case.dataset], os.path.join(workdir, f"round{r}"), log))
    return {"cases": [dataclasses.asdict(c) for c in cases], "rounds": rounds, "runs": runs,
            "machine": _machine_line(started)}


def _machine_line(started) -> str:
    from benchmarks.timing import cpu_flags, cpu_model, usable_cpus  # pylint: disable=import-outside-toplevel

    isa = [f for f in ("avx512_bf16", "avx512f", "avx2") if f in cpu_flags()]
    load_end = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{cpu_model()}, {usable_cpus()} usable CPUs, {isa[0] if isa else 'no AVX2'}; started {started[0]}, "
            f"load average {started[1]} at the start and {load_end} at the end")


def _median(values: Sequence[float]) -> Optional[float]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def realsize_section(raw: Dict[str, Any]) -> str:
    """The ``realsize`` section of RESULTS.md from :func:`run_realsize`'s result."""
    from benchmarks.report import fmt, markdown_table, ratio  # pylint: disable=import-outside-toplevel

    rows, ratio_rows = [], []
    for case in raw["cases"]:
        per_variant = {}
        for variant, results in raw["runs"][case["config"]].items():
            ok = [r for r in results if "error" not in r]
            if not ok:
                rows.append([f"`{case['config']}`", variant, "failed: " + results[0].get("error", "?")[:80]] + [""] * 7)
                continue
            cfg = ok[0]["config"]
            med = {k: _median([r[k] for r in ok]) for k in
                   ("images_per_s", "user_s_per_step", "sys_s_per_step", "sys_over_user", "minflt_per_step")}
            per_variant[variant] = med
            rows.append([f"`{case['config']}`", variant, cfg["model"], f"{cfg['crop_size'][0]}x{cfg['crop_size'][1]}",
                         cfg["batch_size"], fmt(med["images_per_s"]), fmt(med["user_s_per_step"], ".3f"),
                         fmt(med["sys_s_per_step"], ".3f"), fmt(100 * med["sys_over_user"] if med["sys_over_user"]
                                                                is not None else None, ".1f"),
                         fmt(med["minflt_per_step"], ".0f")])
        if "before" in per_variant and "after" in per_variant:
            b, a = per_variant["before"], per_variant["after"]
            x = per_variant.get("after_xla", {})
            ratio_rows.append([f"`{case['config']}`", ratio(a["images_per_s"], b["images_per_s"]),
                               ratio(b["user_s_per_step"], a["user_s_per_step"]),
                               ratio(b["sys_s_per_step"], a["sys_s_per_step"]),
                               ratio(x.get("images_per_s"), a["images_per_s"])])
    headers = ["config", "variant", "model", "crop", "batch", "img/s", "user s/step", "sys s/step", "sys % of user",
               "minor faults/step"]
    return "\n".join([
        "## Training at real sizes (each config's crop and batch)", "",
        "`python -m benchmarks --sections=realsize`: the real trainer (`keras_seg.training.train`) "
        "on CamVid-like synthetic 360x480 data (and the demo's shapes), one process per config and variant, "
        f"{raw['rounds']} round(s), variants alternating. `before`: `KERAS_SEG_ALLOCATOR=system "
        "KERAS_SEG_FUSED_BATCH_NORM=0 --steps_per_loop=1 --nojit_compile`; `after`: the shipped config with today's defaults; `after_xla`: that with "
        "`--jit_compile`. Per-step figures exclude the first window (tracing); CPU times are `getrusage` of the "
        "whole process (all threads). Medians over rounds.", "",
        f"Machine: {raw.get('machine', 'not recorded')}.", "",
        markdown_table(headers, rows, align="lllllrrrrr"), "",
        "after / before (higher is better for every column):", "",
        markdown_table(["config", "img/s", "user CPU per step", "sys CPU per step", "img/s with XLA / without"],
                       ratio_rows, align="lrrrr"),
    ])


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        from absl import app  # pylint: disable=import-outside-toplevel

        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    child_main(argv)


if __name__ == "__main__":
    from absl import app, flags

    from keras_seg.flags import define_flags

    define_flags()
    flags.DEFINE_string("output", None, "JSON file for this child's result.", required=True)
    app.run(main)
