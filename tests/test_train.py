"""The training loop, resume and the CLIs (train / evaluate / predict); distributed training
and fault tolerance are in test_multiworker.py and test_fault_tolerance.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep.folder import convert_folder
from keras_seg.checkpoints import CheckpointError, load_trained_model
from keras_seg.options import TrainConfig
from keras_seg.training import NonFiniteLossError, train
from tests.data.fixtures import make_folder_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"base_width": 4, "depth": 2, "batch_norm": True, "dropout": 0.0}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    make_folder_dataset(root / "src", n_train=8, n_val=2)
    convert_folder(str(root / "src/images"), str(root / "src/masks"), str(root / "tfr"), ["a", "b", "c"],
                   workers=1, log=lambda m: None)
    return str(root / "tfr")


def _cfg(data_dir, model_dir, **kw):
    base = dict(model="unet", num_classes=3, data_dir=data_dir, model_dir=str(model_dir), model_options=TINY,
                crop_size=(16, 16), batch_size=2, train_steps=4, learning_rate=0.01, log_every=2,
                checkpoint_every=2, strategy="one_device", seed=1, optimizer="adamw")
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def _run(args, **kw):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=REPO, env=env, **kw)


def test_train_writes_model_dir_and_resumes_exactly(data_dir, tmp_path):
    logs = []
    res = train(_cfg(data_dir, tmp_path / "a", eval_every=2), log=logs.append)
    assert res.step == 4 and np.isfinite(res.loss)
    for sub in ("model_config.json", "ckpt/checkpoint", "best/best.json", "eval/metrics-00000002.json",
                "eval/metrics-00000004.json"):
        assert (tmp_path / "a" / sub).exists(), sub
    assert any(l.startswith("step 2/4  loss") and "img/s" in l and "ETA" in l for l in logs)
    rec = json.loads((tmp_path / "a/eval/metrics-00000004.json").read_text())
    assert set(rec) >= {"acc", "acc_cls", "mean_iu", "fwavacc", "iu", "confusion_matrix"}
    assert np.sum(rec["confusion_matrix"]) == 2 * (20 * 24 - 3)  # every non-ignored val pixel
    assert os.listdir(tmp_path / "a/train")  # TensorBoard events

    # Interrupted run: 2 steps, then the same config to 4 steps resumes and matches.
    train(_cfg(data_dir, tmp_path / "b", steps_per_run=2), log=lambda m: None)
    logs_b = []
    train(_cfg(data_dir, tmp_path / "b"), log=logs_b.append)
    assert any("Resumed from" in l and "at step 2" in l for l in logs_b)
    wa, _, _ = load_trained_model(str(tmp_path / "a"))
    wb, _, _ = load_trained_model(str(tmp_path / "b"))
    for x, y in zip(wa.get_weights(), wb.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_refuses_mismatches(data_dir, tmp_path):
    with pytest.raises(ValueError, match="manifest.json has num_classes=3"):
        train(_cfg(data_dir, tmp_path / "m", num_classes=4), log=lambda m: None)
    train(_cfg(data_dir, tmp_path / "m", train_steps=1), log=lambda m: None)
    other = dict(TINY, base_width=8)
    with pytest.raises(ValueError, match="holds a run with model_options"):
        train(_cfg(data_dir, tmp_path / "m", model_options=other), log=lambda m: None)
    with pytest.raises(ValueError, match=r"--model_opt keys \['nope'\]"):
        _cfg(data_dir, tmp_path / "x", model_options={"nope": 1})


def test_nan_loss_stops_with_step_and_checkpoint(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path / "n", class_weights=(1e38, 1e38, 1e38), train_steps=3)
    with pytest.raises(NonFiniteLossError, match=r"at step 1\. Last good checkpoint: none"):
        train(cfg, log=lambda m: None)


def test_unwritable_model_dir(data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="is not writable"):
        train(_cfg(data_dir, blocker / "sub"), log=lambda m: None)


def test_cli_flagfiles_nest_and_unknown_flag_hint(data_dir, tmp_path):
    base = tmp_path / "base.cfg"
    base.write_text(f"--data_dir={data_dir}\n--num_classes=3\n--crop_size=16,16\n--batch_size=2\n--train_steps=5\n")
    top = tmp_path / "top.cfg"
    top.write_text(f"--flagfile={base}\n--model=unet\n--model_opt=base_width=4\n--model_opt=depth=2\n"
                   f"--train_steps=2\n--model_dir={tmp_path / 'cli'}\n--log_every=1\n--strategy=one_device\n")
    r = _run(["-m", "keras_seg.train", f"--flagfile={top}"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 2/2" in r.stdout and "mean_iu" in r.stdout  # the last value wins: 2 steps, not 5
    flags_txt = (tmp_path / "cli/flags.txt").read_text()
    assert "--train_steps=2" in flags_txt and "--model_opt=depth=2" in flags_txt

    r = _run(["-m", "keras_seg.evaluate", f"--model_dir={tmp_path / 'cli'}"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mean_iu" in r.stdout and list((tmp_path / "cli/eval").glob("evaluate-val-00000002.json"))

    img = np.random.default_rng(0).integers(0, 255, (37, 51, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "pic.jpg")
    r = _run(["-m", "keras_seg.predict", f"--model_dir={tmp_path / 'cli'}", f"--out={tmp_path / 'pred'}",
              str(tmp_path / "pic.jpg")])
    assert r.returncode == 0, r.stderr[-2000:]
    lab = np.asarray(Image.open(tmp_path / "pred/pic_label.png"))
    ov = np.asarray(Image.open(tmp_path / "pred/pic_overlay.png"))
    assert lab.shape == (37, 51) and lab.max() < 3 and ov.shape == (37, 51, 3)

    r = _run(["-m", "keras_seg.train", f"--flagfile={top}", "--learning_rat=0.1"])
    assert r.returncode != 0 and "learning_rat" in r.stderr and "learning_rate" in r.stderr


def test_evaluate_and_predict_refuse_untrained_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not a keras_seg training directory"):
        load_trained_model(str(tmp_path))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    r = _run(["-m", "keras_seg.predict", f"--model_dir={tmp_path}", str(tmp_path / "x.png")])
    assert r.returncode == 1 and "not a keras_seg training directory" in r.stderr
    r = _run(["-m", "keras_seg.predict", f"--model_dir={tmp_path}", str(tmp_path / "missing.png")])
    assert r.returncode == 1 and "missing.png: file not found" in r.stderr  # inputs are checked first


@pytest.mark.parametrize("jit_compile", [False, True])
def test_corrupt_record_during_training_names_the_data_and_the_verifier(data_dir, tmp_path, jit_compile):
    import shutil

    from keras_seg.data.manifest import load_manifest

    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    for name in load_manifest(str(bad))["splits"]["train"]["files"]:
        path = bad / name
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # flip a byte inside a record's payload: its CRC fails
        path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"(?s)failed at step 0.*python -m data_prep.verify"):
        train(_cfg(str(bad), tmp_path / "run", jit_compile=jit_compile), log=lambda m: None)


def test_evaluate_under_xla_gives_the_same_confusion_matrix(data_dir, tmp_path):
    from keras_seg.evaluate import run as run_evaluate

    train(_cfg(data_dir, tmp_path / "e", train_steps=2, eval_split=""), log=lambda m: None)
    plain, _ = run_evaluate(str(tmp_path / "e"), out=str(tmp_path / "plain.json"), log=lambda m: None)
    xla, _ = run_evaluate(str(tmp_path / "e"), out=str(tmp_path / "xla.json"), log=lambda m: None, jit_compile=True)
    cm_plain, cm_xla = np.asarray(plain["confusion_matrix"]), np.asarray(xla["confusion_matrix"])
    assert cm_plain.sum() == cm_xla.sum() == 2 * (20 * 24 - 3)
    # XLA may round differently; at most one near-tied pixel may change its argmax.
    assert np.abs(cm_plain - cm_xla).sum() <= 2


def test_steps_per_loop_trains_exactly_like_one_step_per_call(data_dir, tmp_path):
    """7 steps per tf.function call vs 1: same weights, and logs/checkpoints/evals at the same steps."""
    runs = {}
    for spl in (1, 7):
        logs = []
        progress = []
        cfg = _cfg(data_dir, tmp_path / f"spl{spl}", train_steps=10, log_every=3, checkpoint_every=4, eval_every=5,
                   steps_per_loop=spl, deterministic=True)
        res = train(cfg, log=logs.append, on_progress=progress.append)
        assert res.step == 10
        runs[spl] = load_trained_model(str(tmp_path / f"spl{spl}"))[0].get_weights()
        assert progress == [3, 6, 9, 10]
        assert [l.split()[1] for l in logs if l.startswith("step ")] == ["3/10", "6/10", "9/10", "10/10"]
        assert sorted(f for f in os.listdir(tmp_path / f"spl{spl}/eval") if f.startswith("metrics")) == ["metrics-00000005.json", "metrics-00000010.json"]
        ckpts = {f.split(".")[0] for f in os.listdir(tmp_path / f"spl{spl}/ckpt") if f.startswith("ckpt-")}
        assert ckpts == {"ckpt-4", "ckpt-8", "ckpt-10"}
    assert len(runs[1]) == len(runs[7])
    for a, b in zip(runs[1], runs[7]):
        np.testing.assert_array_equal(a, b)


def test_steps_until_boundary():
    from keras_seg.training import steps_until_boundary

    assert steps_until_boundary(0, 100, 10, 50, 500, 0) == 10
    assert steps_until_boundary(45, 100, 10, 50, 500, 0) == 5  # log at 50
    assert steps_until_boundary(95, 97, 10, 50, 500, 0) == 2  # stop at 97
    assert steps_until_boundary(0, 100, 10, 3, 4, 5) == 3
    assert steps_until_boundary(3, 100, 10, 3, 4, 5) == 1  # checkpoint at 4
    assert steps_until_boundary(0, 100, 1, 50, 500, 0) == 1


def test_logged_learning_rate_is_the_one_the_logged_step_used(data_dir, tmp_path):
    # Poly with power 1 from 0.01 over 4 steps: step k (k = 1..4) uses 0.01 * (1 - (k - 1) / 4).
    logs = []
    train(_cfg(data_dir, tmp_path / "lr", poly_power=1.0, log_every=1, eval_split=""), log=logs.append)
    got = [float(l.split("  lr ")[1].split()[0]) for l in logs if l.startswith("step ")]
    np.testing.assert_allclose(got, [0.01, 0.0075, 0.005, 0.0025], rtol=1e-6)
    from keras_seg.plot import curves

    logged = {s: v for s, _, v in curves(str(tmp_path / "lr"))["train"]["learning_rate"]}
    np.testing.assert_allclose([logged[k] for k in (1, 2, 3, 4)], got, rtol=1e-6)


def test_init_from_starts_a_new_run_from_another_runs_weights(data_dir, tmp_path):
    plain = dict(TINY, batch_norm=False)  # no moving statistics: only the optimizer moves the weights
    train(_cfg(data_dir, tmp_path / "src", model_options=plain, train_steps=3), log=lambda m: None)
    src, _, _ = load_trained_model(str(tmp_path / "src"))
    # A step at a negligible rate leaves the initial weights: those of the source run with
    # --init_from, a fresh initialisation without it.
    tiny_step = dict(model_options=plain, train_steps=1, warmup_steps=0, learning_rate=1e-12)
    logs = []
    res = train(_cfg(data_dir, tmp_path / "ft", init_from=str(tmp_path / "src"), **tiny_step), log=logs.append)
    assert res.step == 1  # the step and schedule start afresh
    assert any(l.startswith("Initialised the model from") and "ckpt-3" in l for l in logs)
    train(_cfg(data_dir, tmp_path / "fresh", **tiny_step), log=lambda m: None)
    ft, config, _ = load_trained_model(str(tmp_path / "ft"))
    fresh, _, _ = load_trained_model(str(tmp_path / "fresh"))
    assert config["init_from"] == str(tmp_path / "src") and config["init_checkpoint"] == "latest"
    for x, y in zip(src.get_weights(), ft.get_weights()):
        np.testing.assert_allclose(x, y, atol=1e-7)
    assert max(np.abs(x - y).max() for x, y in zip(src.get_weights(), fresh.get_weights())) > 1e-3

    # Once the run has its own checkpoint it resumes from it, and --init_from is not read again.
    logs = []
    train(_cfg(data_dir, tmp_path / "ft", init_from=str(tmp_path / "src"), **dict(tiny_step, train_steps=2)),
          log=logs.append)
    assert any("Resumed from" in l for l in logs) and not any("Initialised" in l for l in logs)

    with pytest.raises(CheckpointError, match=r"--init_from=.*src holds a run with model_options"):
        train(_cfg(data_dir, tmp_path / "other", init_from=str(tmp_path / "src"), train_steps=1), log=lambda m: None)
    with pytest.raises(CheckpointError, match=r"ckpt-99' not found"):
        train(_cfg(data_dir, tmp_path / "other2", init_from=str(tmp_path / "src"),
                   init_checkpoint=str(tmp_path / "src/ckpt/ckpt-99"),
                    **tiny_step), log=lambda m: None)
    with pytest.raises(CheckpointError, match="is not a keras_seg training directory"):
        train(_cfg(data_dir, tmp_path / "other3", init_from=str(tmp_path / "nowhere"), **tiny_step), log=lambda m: None)
