r"""What test-time augmentation and sliding windows cost, and buy, on CamVid-size frames.

    python benchmarks/inference_modes.py [--pretrained=enet_camvid] [--data_dir=data/camvid]
        [--split=val] [--images=20] [--rounds=2] [--results=PATH]

Runs every inference mode of ``keras_seg.inference`` (the code evaluate and predict run) on the
same images, one image per call, after one untimed warm-up call per mode:

- ``whole``: one forward pass (the baseline);
- ``flip``: the image and its mirror;
- ``scales``: six scales 0.5 ... 1.75 (the DeepLab / PSPNet protocol), each with its mirror;
- ``slide``: 240x320 windows at the default stride (two thirds of the window).

The model is shipped weights (``--pretrained``), so the mIoU column is a real score: on the
first ``--images`` frames of ``--split`` of a converted dataset when ``--data_dir`` exists,
else on random frames of 360x480 (mIoU then omitted). The table gives milliseconds per image
(best of ``--rounds`` alternating rounds), the cost as a ratio to ``whole``, and the mIoU on
those images: what each mode buys for what it costs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run as a script: make `benchmarks` and `keras_seg` importable
    sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402

from keras_seg.inference import InferenceConfig, make_probabilities  # noqa: E402
from keras_seg.metrics import scores_from_confusion_matrix  # noqa: E402
from keras_seg.predict import predict_batch  # noqa: E402
from keras_seg.pretrained import load_pretrained  # noqa: E402

MODES = {
    "whole": InferenceConfig(),
    "flip": InferenceConfig(flip=True),
    "scales 0.5-1.75 + flip": InferenceConfig(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True),
    "slide 240x320": InferenceConfig(mode="slide", window=(240, 320)),
}


def _examples(data_dir: str, split: str, count: int):
    if data_dir and os.path.isfile(os.path.join(data_dir, "manifest.json")):
        from keras_seg.parity import read_examples  # pylint: disable=import-outside-toplevel

        return list(read_examples(data_dir, split, count)), True
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8), None) for _ in range(count)], False


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", default="enet_camvid")
    p.add_argument("--data_dir", default="data/camvid")
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--results", default="", help="Append the table to this Markdown file ('': print only).")
    a = p.parse_args(argv)
    if a.images < 1 or a.rounds < 1:
        p.error(f"--images and --rounds must be >= 1. Received: images={a.images}, rounds={a.rounds}")
    model, info = load_pretrained(a.pretrained)
    examples, real = _examples(a.data_dir, a.split, a.images)
    probs = make_probabilities(model)
    n, ignore = int(info["num_classes"]), int(info["ignore_label"])
    for cfg in MODES.values():  # warm-up: trace every window and scale size once
        predict_batch(model, [examples[0][0]], info["preprocessing"], cfg, probs)
    seconds = {name: [] for name in MODES}
    miou = {}
    for _ in range(a.rounds):
        for name, cfg in MODES.items():
            cm = np.zeros((n, n), np.int64)
            t0 = time.perf_counter()
            for image, label in examples:
                labels, _ = predict_batch(model, [image], info["preprocessing"], cfg, probs)[0]
                if label is not None:
                    valid = label != ignore
                    cm += np.bincount(n * label[valid].astype(np.int64) + labels[valid], minlength=n * n).reshape(n, n)
            seconds[name].append(time.perf_counter() - t0)
            if real:
                miou[name] = scores_from_confusion_matrix(cm)["mean_iu"]

    from benchmarks.report import script_section  # pylint: disable=import-outside-toplevel

    best = {k: min(v) / len(examples) * 1000 for k, v in seconds.items()}
    rows = []
    for name, cfg in MODES.items():
        passes = f"{len(cfg.scales) * (2 if cfg.flip else 1)}" if cfg.mode == "whole" else "windows of the frame"
        rows.append([name, passes, f"{best[name]:.0f}", f"{best[name] / best['whole']:.2f}",
                     f"{100 * miou[name]:.1f}" if name in miou else "n/a"])
    where = f"the first {len(examples)} {a.split} frames of {a.data_dir}" if real else f"{len(examples)} random 360x480 frames"
    script_section(
        f"Inference modes ({a.pretrained}, {where})",
        f"`python benchmarks/inference_modes.py --pretrained={a.pretrained} --data_dir={a.data_dir} --split={a.split} "
        f"--images={a.images} --rounds={a.rounds}`; ms per image, best of {a.rounds} alternating rounds, batch 1; "
        f"load average {os.getloadavg()[0]:.1f} at the end.",
        ["mode", "forward passes", "ms / image", "cost / whole", "mIoU"], rows, a.results)


if __name__ == "__main__":
    main()
