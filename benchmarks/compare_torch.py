r"""keras_seg's U-Net, FCN-8s and ENet side by side with their PyTorch twins, on the same weights.

    python benchmarks/compare_torch.py [--models unet,fcn8s] [--size 256 | --size H,W]
        [--train_batch_size 2] [--infer_batch_size 1] [--rounds 3] [--num_classes 21] [--class_weights none]
        [--tiny] [--results benchmarks/RESULTS.md] [--section pytorch]

ENet at its CamVid training setting (configs/enet_camvid.cfg: crop 352x480, batch 10, 11
classes, ENet class weighting), in its own section of the results file:

    python benchmarks/compare_torch.py --models enet --size 352,480 --train_batch_size 10 \
        --num_classes 11 --class_weights enet --section pytorch-enet

For each model it builds the Keras network (paper defaults, ``--num_classes`` classes) and
its twin from ``benchmarks/torch_models.py``, copies the Keras weights into the twin and
prints the largest logit difference as a sanity check. It then times, alternately (round r
runs each side once):

* inference: ``tf.function(lambda x: model(x, training=False))`` against ``model.eval()``
  under ``torch.inference_mode()``, each returning a NumPy array;
* training: ``keras_seg.training.make_train_step`` under ``tf.distribute.MirroredStrategy``
  with SGD(0.01, momentum 0.9), fed by a distributed ``tf.data`` iterator, against
  ``CrossEntropyLoss(ignore_index=255)`` and ``torch.optim.SGD(lr=0.01, momentum=0.9)``.
  With ``--class_weights enet`` both losses weight class c by ENet's ``1 / ln(1.02 + p_c)``
  (``p_c``: its share of the labelled pixels of the random batch).

Both sides get the same random NHWC input (converted to NCHW for PyTorch before timing) and
labels. The table goes to stdout and to the ``--section`` section (default ``pytorch``) of
the results file.
PyTorch runs ``--torch_threads`` threads (default: the usable CPUs) with
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (see the comment below).
Needs PyTorch: ``pip install -e .[bench-torch]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# PyTorch's OpenMP (libgomp) threads spin after every parallel region. Where the cores are
# shared (another process, or TensorFlow's own pool in this very process) a spinning thread
# holds a core the other side needs: measured on a loaded 2-core machine, a tiny U-Net's
# torch inference took 660 ms with the default policy and 5 ms with PASSIVE, and the Keras
# side ran 2x faster too. PASSIVE threads sleep while idle; set it before torch loads.
# Override it from the environment (OMP_WAIT_POLICY=ACTIVE) to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run as a script: make `benchmarks` and `keras_seg` importable
    sys.path.insert(0, _REPO)

try:
    import torch  # noqa: E402
except ImportError as err:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "benchmarks/compare_torch.py needs PyTorch (the CPU build): pip install -e .[bench-torch]"
    ) from err

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_seg  # noqa: E402
from benchmarks import report, timing  # noqa: E402
from benchmarks.model_bench import FitStepTimer  # noqa: E402
from benchmarks.torch_models import TorchENet, TorchFCN8s, TorchUNet, copy_keras_weights  # noqa: E402
from keras_seg.data.manifest import enet_weights  # noqa: E402
from keras_seg.losses import WeightedPixelCrossEntropy  # noqa: E402
from keras_seg.training import make_train_step  # noqa: E402

IGNORE_LABEL = 255
TWINS = {"unet": TorchUNet, "fcn8s": TorchFCN8s, "enet": TorchENet}
# FCN zero-initialises its score layers, which makes the logits of a fresh model exactly 0
# and the logit check vacuous; Glorot-initialised scores cost the same to run.
_EXTRA_OPTIONS = {"fcn8s": {"zero_init_scores": False}}
HEADERS = ["model", "size", "batch", "mode", "keras img/s", "torch img/s", "ours/torch", "keras ms", "torch ms"]


def _log(msg: str) -> None:
    print(f"[compare_torch] {msg}", flush=True)


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _size(text: str) -> tuple:
    """``"S"`` (square) or ``"H,W"`` -> ``(H, W)``, for argparse."""
    try:
        hw = tuple(int(v) for v in text.split(","))
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise argparse.ArgumentTypeError(f"must be S or H,W with positive integers. Received: {text!r}")
    return hw


def _row(label, size, batch, mode, timings):
    k, t = timings["keras"], timings["torch"]
    return [label, "x".join(map(str, size)), batch, mode,
            report.fmt(k.per_second(batch)), report.fmt(t.per_second(batch)),
            report.ratio(k.per_second(batch), t.per_second(batch)),
            report.fmt(k.median_s * 1000, ".1f"), report.fmt(t.median_s * 1000, ".1f")]


def compare_model(name: str, args, strategy) -> tuple:
    """Builds, checks and times one model; returns (table rows, note line)."""
    options = {**(keras_seg.tiny_options(name) if args.tiny else {}), **_EXTRA_OPTIONS.get(name, {})}
    label = f"{name} (tiny)" if args.tiny else name
    num_classes, (height, width) = args.num_classes, args.size
    rng = np.random.default_rng(0)
    n = max(args.train_batch_size, args.infer_batch_size)
    x_all = rng.normal(size=(n, height, width, 3)).astype(np.float32)
    x, x_inf = x_all[: args.train_batch_size], x_all[: args.infer_batch_size]
    y = rng.integers(0, num_classes, size=(args.train_batch_size, height, width)).astype(np.int32)
    y[rng.random(y.shape) < 0.05] = IGNORE_LABEL  # a few unlabelled pixels, ignored by both
    w = np.ones(y.shape, np.float32)
    class_weights = None
    if args.class_weights == "enet":
        class_weights = enet_weights(np.bincount(y[y != IGNORE_LABEL], minlength=num_classes).tolist())

    _log(f"{label}: building Keras and torch models (options {options or 'paper defaults'})")
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    with strategy.scope():
        model = keras_seg.build_model(name, num_classes, **options)
    twin = copy_keras_weights(model, TWINS[name](num_classes, **options))
    _log(f"{label}: {model.count_params():,} parameters; weights copied")

    # Inference.
    infer = tf.function(lambda t: model(t, training=False))
    xk, xt = tf.constant(x_inf), _nchw(x_inf)
    twin.eval()

    def torch_infer():
        with torch.inference_mode():
            return twin(xt).numpy()

    ours = infer(xk).numpy()
    theirs = torch_infer().transpose(0, 2, 3, 1)
    diff, scale = float(np.abs(ours - theirs).max()), float(np.abs(ours).max())
    flag = "" if diff <= 1e-3 * max(1.0, scale) else "  WARNING: the twins disagree"
    note = f"{label}: max |logit diff| {diff:.2e} (max |logit| {scale:.3g}) at {height}x{width}"
    note += f", options {options}" if options else ""
    _log(note + flag)
    _log(f"{label}: timing inference, batch {args.infer_batch_size}, {args.rounds} rounds")
    infer_t = timing.time_alternating(
        {"keras": lambda: infer(xk).numpy(), "torch": torch_infer}, rounds=args.rounds)
    _log(f"{label}: inference warm-up call keras {infer_t['keras'].first_s:.2f}s torch "
         f"{infer_t['torch'].first_s:.2f}s; median keras {infer_t['keras'].median_s * 1000:.1f} ms "
         f"torch {infer_t['torch'].median_s * 1000:.1f} ms")

    # Training.
    with strategy.scope():
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        optimizer.build(model.trainable_variables)
    dataset = tf.data.Dataset.from_tensors((x, y, w)).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    steps = {"keras": make_train_step(model, optimizer, strategy, num_classes, ignore_label=IGNORE_LABEL,
                                      class_weights=class_weights)}
    if not args.no_xla:
        steps["keras_xla"] = make_train_step(model, optimizer, strategy, num_classes, ignore_label=IGNORE_LABEL,
                                             class_weights=class_weights, jit_compile=True)

    # Plain model.fit on a twin with the same weights (Keras's default compile: on a CPU-only
    # machine jit_compile="auto" resolves to no XLA); each call fits one step, and its time is
    # the one the callback sees, so fit's per-call set-up is left out.
    keras.utils.set_random_seed(0)
    fit_model = keras_seg.build_model(name, num_classes, **options)
    fit_model.set_weights(model.get_weights())
    fit_model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=WeightedPixelCrossEntropy(num_classes, ignore_label=IGNORE_LABEL,
                                                     class_weights=class_weights))
    fit_data = tf.data.Dataset.from_tensors((x, y)).repeat()
    fit_timer = FitStepTimer()

    twin.train()
    torch_opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32),
        ignore_index=IGNORE_LABEL)
    xt_train, yt = _nchw(x), torch.from_numpy(y.astype(np.int64))
    losses = {"keras": [], "keras_xla": [], "fit": [], "torch": []}

    def keras_step(side):
        def run():
            losses[side].append(float(steps[side](iterator)))
        return run

    def fit_step():
        history = fit_model.fit(fit_data, steps_per_epoch=1, epochs=1, verbose=0, callbacks=[fit_timer])
        losses["fit"].append(float(history.history["loss"][-1]))

    def torch_step():
        torch_opt.zero_grad()
        loss = loss_fn(twin(xt_train), yt)
        loss.backward()
        torch_opt.step()
        losses["torch"].append(loss.item())

    _log(f"{label}: timing training, batch {args.train_batch_size}, {args.rounds} rounds "
         f"({', '.join(steps)}, fit, torch alternately)")
    train_t = timing.time_alternating(
        {**{side: keras_step(side) for side in steps}, "fit": fit_step, "torch": torch_step}, rounds=args.rounds)
    train_t["fit"].times = fit_timer.times[-args.rounds:]  # the steps themselves, without fit's set-up
    for side, values in losses.items():
        if not np.all(np.isfinite(values)):
            raise FloatingPointError(f"{label}: {side} training loss is not finite: {values}")
    _log(f"{label}: training warm-up step " + ", ".join(f"{k} {v.first_s:.2f}s" for k, v in train_t.items())
         + "; first losses " + ", ".join(f"{k} {v[0]:.4f}" for k, v in losses.items() if v))
    rows = [_row(label, args.size, args.infer_batch_size, "inference", infer_t)]
    for side, mode in (("keras", "training: our loop"), ("keras_xla", "training: our loop + XLA"),
                       ("fit", "training: model.fit")):
        if side in train_t:
            rows.append(_row(label, args.size, args.train_batch_size, mode,
                             {"keras": train_t[side], "torch": train_t["torch"]}))
    note += (f"; first training loss keras {losses['keras'][0]:.4f}, torch {losses['torch'][0]:.4f}"
             " (dropout masks differ)")
    return rows, note


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="unet,fcn8s", help=f"comma-separated subset of {','.join(TWINS)}")
    p.add_argument("--size", type=_size, default=(256, 256), help="input size: H,W, or S for S x S (default 256)")
    p.add_argument("--train_batch_size", "--batch", type=int, default=2, help="training batch (--batch: old name)")
    p.add_argument("--infer_batch_size", "--infer_batch", type=int, default=1,
                   help="inference batch (--infer_batch: old name)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (after one warm-up call each)")
    p.add_argument("--num_classes", type=int, default=21, help="classes of the logits and the random labels")
    p.add_argument("--class_weights", choices=("none", "enet"), default="none",
                   help="loss class weights on both sides: none, or ENet's 1/ln(1.02 + p) of the random labels")
    p.add_argument("--no_xla", action="store_true", help="leave out our loop with jit_compile=True")
    p.add_argument("--tiny", action="store_true", help="the tiny test variants instead of the paper networks")
    p.add_argument("--torch_threads", type=int, default=None,
                   help="torch.set_num_threads (default: the usable CPUs, as TensorFlow uses)")
    p.add_argument("--results", default=os.path.join(_REPO, "benchmarks", "RESULTS.md"),
                   help="results file; only its --section section is rewritten")
    p.add_argument("--section", default="pytorch",
                   help="section of the results file to rewrite (lower-case words), e.g. pytorch-enet "
                        "for a run that should not replace the U-Net / FCN-8s table")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(TWINS))
    if unknown or not models:
        p.error(f"--models takes a subset of {sorted(TWINS)}. Received: --models={args.models!r}")
    if not re.fullmatch(r"[a-z0-9_-]+", args.section):  # benchmarks.report's section names
        p.error(f"--section takes lower-case words (a-z, 0-9, _ and -). Received: --section={args.section!r}")
    for flag in ("train_batch_size", "infer_batch_size", "rounds", "num_classes", "torch_threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1. Received: --{flag}={getattr(args, flag)}")

    torch.set_num_threads(args.torch_threads or timing.usable_cpus())
    info = {**timing.machine_info(), "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset")}
    _log(f"torch {torch.__version__} with {torch.get_num_threads()} threads, tensorflow {tf.__version__}")
    strategy = tf.distribute.MirroredStrategy()
    rows, notes = [], []
    t0 = time.perf_counter()
    for name in models:
        model_rows, note = compare_model(name, args, strategy)
        rows += model_rows
        notes.append(note)
    info["load_average_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    table = report.markdown_table(HEADERS, rows, align="lrrlrrrrr")
    command = shlex.join(["python", "benchmarks/compare_torch.py", *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join([
        "## Side by side with PyTorch",
        "",
        f"`{command}`",
        "",
        report.machine_header(info),
        "",
        f"{args.num_classes} classes"
        + ("" if args.class_weights == "none" else f", {args.class_weights} class weights in both losses")
        + "; the same weights on both sides (copied from Keras into the PyTorch "
        "twins of benchmarks/torch_models.py), the same random input and labels. img/s at the "
        "median call; ours/torch is keras img/s over torch img/s (above 1: keras_seg is faster). "
        "Inference: `tf.function(model(x, training=False))` vs `eval()` + `torch.inference_mode()`. "
        "Training: `keras_seg.training.make_train_step` under `MirroredStrategy` (with and without "
        "`jit_compile`) and plain `model.fit` (Keras's default compile; the step time its callback "
        "sees) vs CrossEntropyLoss + backward + SGD step; SGD(0.01, momentum 0.9) everywhere. "
        "All training contenders run alternately, one step each per round, on the same batch.",
        "",
        table,
        "",
        *[f"- {n}" for n in notes],
    ])
    print(table, flush=True)
    report.write_sections(args.results, {args.section: text})
    _log(f"done in {time.perf_counter() - t0:.0f}s; wrote the `{args.section}` section of {args.results}")
    return text


if __name__ == "__main__":
    main()
