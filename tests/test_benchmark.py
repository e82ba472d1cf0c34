"""benchmarks (``python -m benchmarks``, ``keras-seg benchmark``): FLOP counts against hand arithmetic,
the results file's sections, the tables' arithmetic, the flags, and one end-to-end run of the command
on a tiny model. No timings are asserted: only that every measurement is present and well formed."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags

import keras_seg
from benchmarks import flops, report, tables, timing
from benchmarks.model_bench import BenchSpec
from keras_seg import benchmark as forwarder
from keras_seg import flags as ks_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_profiler_flops_equal_hand_arithmetic():
    # A 3x3 conv (with bias) then a 1x1 conv without bias, 'same' padding, on 10x12x3.
    x = keras.Input((10, 12, 3))
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    y = keras.layers.Conv2D(5, 1, use_bias=False)(y)
    model = keras.Model(x, y)
    conv1 = 2 * 10 * 12 * 3 * 3 * 3 * 8  # 2 FLOPs per multiply-add
    bias1 = 10 * 12 * 8
    conv2 = 2 * 10 * 12 * 8 * 5
    assert flops.forward_flops(model, (10, 12, 3)) == conv1 + bias1 + conv2


def test_profiler_flops_scale_with_the_input_area():
    model = keras_seg.build_model("unet", 3, **keras_seg.tiny_options("unet"))
    small, large = flops.forward_flops(model, (32, 32, 3)), flops.forward_flops(model, (64, 64, 3))
    assert large == pytest.approx(4 * small, rel=0.02)


def test_ceiling_fraction_arithmetic():
    # 10 GFLOPs per image at 5 images/s is 50 GFLOP/s; training counts 3x.
    assert tables.ceiling_fraction(10.0, 5.0, 100.0) == pytest.approx(0.5)
    assert tables.ceiling_fraction(10.0, 5.0, 100.0, factor=3) == pytest.approx(1.5)
    assert tables.ceiling_fraction(None, 5.0, 100.0) is None


def test_time_alternating_interleaves_and_counts():
    calls = []
    out = timing.time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  rounds=3, calls_per_round=2, warmup=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert len(out["a"].times) == 6 and out["a"].first_s is not None
    with pytest.raises(ValueError, match="rounds"):
        timing.time_alternating({"a": lambda: None}, rounds=0)


def test_peak_rss_sees_a_large_allocation():
    timing.reset_peak_rss()
    before = timing.peak_rss_mb()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched
    assert timing.peak_rss_mb() >= before + 60
    del block


def test_results_sections_are_replaced_kept_and_refused(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    report.write_sections(path, {"models": "## Models\nold", "pytorch": "## Torch\nkept"}, order=("models",))
    report.write_sections(path, {"models": "## Models\nnew"})
    text = open(path, encoding="utf-8").read()
    assert text.startswith(report.TITLE)
    assert "new" in text and "old" not in text and "kept" in text
    assert report.read_sections(path) == {"models": "## Models\nnew", "pytorch": "## Torch\nkept"}
    assert [p for p in os.listdir(tmp_path) if p != "RESULTS.md"] == []  # no temporary left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600
    os.chmod(path, 0o640)
    report.write_sections(path, {"models": "## Models\nagain"})
    assert os.stat(path).st_mode & 0o777 == 0o640  # an existing file keeps its mode
    other = tmp_path / "notes.md"
    other.write_text("# my notes\n")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        report.write_sections(str(other), {"models": "x"})
    assert other.read_text() == "# my notes\n"


def test_markdown_table_checks_its_rows():
    assert report.markdown_table(["a", "b"], [["x", 1]]) == "| a | b |\n|---|---:|\n| x | 1 |"
    with pytest.raises(ValueError, match="2 columns"):
        report.markdown_table(["a", "b"], [["x"]])
    assert report.ratio(1.0, 0.0) == "n/a" and report.ratio(3.0, 2.0) == "1.50"


def test_bench_spec_validation():
    with pytest.raises(ValueError, match="--train_batch_size must be an integer >= 1. Received: train_batch_size=0"):
        BenchSpec("unet", train_batch_size=0).validate()
    with pytest.raises(ValueError, match="height must be an integer >= 1"):
        BenchSpec("unet", height=0).validate()
    with pytest.raises(ValueError, match=r"unknown phases to skip \['nope'\]"):
        BenchSpec("unet", skip=["nope"]).validate()


def test_bench_spec_flags_keep_the_old_batch_names():
    fv = flags.FlagValues()
    ks_flags.define_flags(BenchSpec, flag_values=fv)
    fv(["bench", "--train_batch=4", "--infer_batch=3", "--skip=xla,tflite", "--tiny"])
    spec = ks_flags.config_from_flags(fv, BenchSpec)
    assert (spec.train_batch_size, spec.infer_batch_size, spec.skip, spec.tiny) == (4, 3, ["xla", "tflite"], True)
    assert spec.model == "" and spec.num_classes == 21  # the suite sets the model; the rest are the defaults


def test_forwarder_without_a_checkout_says_where_the_benchmarks_are(tmp_path, monkeypatch, capsys):
    assert forwarder.checkout_root() == pathlib.Path(REPO).resolve()
    monkeypatch.setattr(forwarder, "__file__", str(tmp_path / "site-packages" / "keras_seg" / "benchmark.py"))
    assert forwarder.checkout_root() is None
    with pytest.raises(SystemExit) as exit_info:
        forwarder.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "ship with the keras_seg source repository" in err and "python -m benchmarks" in err


def _run(args, module="keras_seg.benchmark", **kw):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600, **kw)


def test_command_refuses_bad_options(tmp_path):
    r = _run(["--models=unet,nope", "--results", str(tmp_path / "R.md")], module="benchmarks")  # no forwarder
    assert r.returncode == 1 and "--models: unknown ['nope']" in r.stderr
    r = _run(["--size=10", "--results", str(tmp_path / "R.md")])
    assert r.returncode == 1 and "--size must be two integers" in r.stderr
    notes = tmp_path / "notes.md"
    notes.write_text("# not results\n")
    r = _run(["--models=unet", "--results", str(notes)])
    assert r.returncode == 1 and "not a results file" in r.stderr
    assert notes.read_text() == "# not results\n"


# Slow tier: about 60 s (a child benchmark run); the default suite stays under 15 minutes.
@pytest.mark.slow
def test_command_end_to_end_on_a_tiny_model(tmp_path):
    results, raw = tmp_path / "RESULTS.md", tmp_path / "raw.json"
    r = _run(["--models=unet", "--tiny", "--size=32,32", "--iters=1", "--rounds=1", "--steps_per_round=1",
              "--calibration=1", "--skip=xla", "--sections=ceiling,models", f"--results={results}",
              f"--json={raw}"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sections = report.read_sections(str(results))
    assert set(sections) == {"header", "ceiling", "models"}
    data = json.loads(raw.read_text())
    (res,) = data["models"]
    model = keras_seg.build_model("unet", 21, input_shape=(32, 32, 3), **keras_seg.tiny_options("unet"))
    assert res["params"] == model.count_params()
    assert res["gflops"] * 1e9 == flops.forward_flops(model, (32, 32, 3))
    assert res["errors"] == {}
    for path in ("tf_function", "saved_model", "tflite_fp32", "tflite_int8", "tflite_fp32_1thread"):
        assert res["infer"][path]["images_per_s"] > 0, path
    assert set(res["train"]) == {"ours", "fit"}  # --skip=xla leaves out ours_xla
    assert all(res["train"][m]["images_per_s"] > 0 for m in ("ours", "fit"))
    assert res["train"]["fit"]["jit_compile"] is False  # Keras's 'auto' on a CPU-only machine
    assert res["rss_mb"]["train"] > 100 and res["tflite_mb"]["tflite_int8"] < res["tflite_mb"]["tflite_fp32"]
    rows = [l for l in sections["models"].splitlines() if l.startswith("| unet |")]
    assert len(rows) == 5  # inference, training, latency, export and speed-up tables
    assert "Failed phases" not in sections["models"]

    # --resume reuses a model measured with the same settings and keeps other sections.
    report.write_sections(str(results), {"pytorch": "## Torch\nkept"})
    # Another learning rate measures the same speed, so it does not force a new measurement.
    r = _run(["--models=unet", "--tiny", "--size=32,32", "--iters=1", "--rounds=1", "--steps_per_round=1",
              "--calibration=1", "--skip=xla", "--sections=ceiling,models", f"--results={results}",
              f"--json={raw}", "--resume", "--learning_rate=0.003"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"unet (32x32, tiny): reusing the result from {raw} (--resume)" in r.stdout
    assert "SGD momentum 0.9 at learning rate 0.0001." in report.read_sections(str(results))["models"]
    again = json.loads(raw.read_text())
    assert again["models"][0]["train"] == res["train"]
    assert [c["when"] for c in again["ceiling"]] == ["earlier run, start", "earlier run, end", "start", "end"]
    assert report.read_sections(str(results))["pytorch"] == "## Torch\nkept"


def test_resume_reuses_only_complete_results_measured_the_same_way():
    spec = {"model": "unet", "height": 64, "width": 64, "iters": 3, "learning_rate": 1e-4, "workdir": "/a"}
    done = {"spec": dict(spec, workdir="/b", learning_rate=0.01), "errors": {}, "params": 1}
    assert report.resume_decision(done, spec) == (True, "")
    assert report.resume_decision(None, spec) == (False, "")
    reuse, why = report.resume_decision(dict(done, errors={"ours": "FloatingPointError: loss is nan"}), spec)
    assert not reuse and why == "the earlier run has failed phases (ours)"
    reuse, why = report.resume_decision({"spec": spec, "errors": {}, "fatal": "killed"}, spec)
    assert not reuse and "killed" in why
    reuse, why = report.resume_decision(dict(done, spec=dict(spec, iters=5)), spec)
    assert not reuse and why == "the earlier run used other settings"
    # Results written before the --batch_size names: the same settings under the old keys.
    old = dict(done, spec=dict(spec, train_batch=2, infer_batch=1))
    assert report.resume_decision(old, dict(spec, train_batch_size=2, infer_batch_size=1)) == (True, "")
    assert report.resume_decision(old, dict(spec, train_batch_size=4, infer_batch_size=1))[0] is False


def test_learning_rates_are_listed_per_model_where_they_differ():
    def result(model, lr):
        return {"spec": {"model": model, "learning_rate": lr}}
    assert tables.learning_rates([result("unet", 0.01), result("enet", 0.01)], 1e-4) == "learning rate 0.01"
    assert tables.learning_rates([{"spec": {"model": "unet"}}], 1e-4) == "learning rate 0.0001"
    assert (tables.learning_rates([result("unet", 0.01), result("refinenet", 1e-4), result("enet", 0.01)], 1e-4)
            == "learning rates 0.0001: refinenet; 0.01: unet, enet")


def test_bench_spec_refuses_a_bad_learning_rate():
    for bad in (0, -1e-3, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
            BenchSpec("unet", learning_rate=bad).validate()
