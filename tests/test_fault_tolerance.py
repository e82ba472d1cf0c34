"""Fault tolerance of the training loop: exact resume after SIGKILL, atomic checkpoints and
fallback past corrupt ones, the NaN guard, and write failures reported with their path."""

import errno
import os
import re
import shutil
import signal

import numpy as np
import pytest
import tensorflow as tf

from data_prep.folder import convert_folder
from keras_seg.training import loop as training  # the module whose names the tests patch
from keras_seg.training import checkpointing, seed_generator_states
from keras_seg.checkpoints import (
    CheckpointError,
    build_full_model,
    load_trained_model,
    remove_partial_writes,
    restore_newest,
)
from keras_seg.options import TrainConfig
from keras_seg.training import ModelDirWriteError, NonFiniteLossError, train
from tests.cluster_utils import Processes, max_relative_difference, train_args, wait_for
from tests.data.fixtures import make_folder_dataset

TINY = {"base_width": 4, "depth": 2, "batch_norm": True, "dropout": 0.0}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    make_folder_dataset(root / "src", n_train=8, n_val=2)
    convert_folder(str(root / "src/images"), str(root / "src/masks"), str(root / "tfr"), ["a", "b", "c"],
                   workers=1, log=lambda m: None)
    return str(root / "tfr")


def _cfg(data_dir, model_dir, **kw):
    base = dict(model="unet", num_classes=3, data_dir=data_dir, model_dir=str(model_dir), model_options=TINY,
                crop_size=(16, 16), batch_size=2, train_steps=4, learning_rate=0.01, log_every=1,
                checkpoint_every=2, strategy="one_device", seed=1, optimizer="adamw", eval_split="")
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def _step(path):
    return int(path.rsplit("-", 1)[1])


def test_sigkill_mid_run_then_rerun_ends_with_the_uninterrupted_weights(data_dir, tmp_path):
    # Dropout (RNG state), AdamW slots, a warm-up + poly schedule and the data position must
    # all come back for the weights to match.
    flags = dict(train_steps=30, checkpoint_every=5, log_every=5, dropout=0.5, deterministic=True,
                 strategy="one_device", optimizer="adamw", warmup_steps=3, batch_size=2)
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    with Processes(tmp_path) as procs:
        ref = procs.start(train_args(data_dir, ref_dir, **flags), "ref")
        run = procs.start(train_args(data_dir, run_dir, **flags), "killed")
        wait_for(lambda: os.path.exists(f"{run_dir}/ckpt/ckpt-10.index") or run.poll() is not None, 240,
                 "the checkpoint of step 10")
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL, procs.log("killed")[-3000:]
        killed_at = _step(tf.train.latest_checkpoint(f"{run_dir}/ckpt"))
        assert 5 <= killed_at < 30  # killed mid-run
        rerun = procs.start(train_args(data_dir, run_dir, **flags), "rerun")
        assert procs.wait(rerun, 240, "rerun") == 0, procs.log("rerun")[-3000:]
        assert procs.wait(ref, 240, "ref") == 0, procs.log("ref")[-3000:]
    assert f"Resumed from {run_dir}/ckpt/ckpt-{killed_at} at step {killed_at}." in procs.log("rerun")
    want, _, _ = load_trained_model(ref_dir)
    got, _, _ = load_trained_model(run_dir)
    err = max_relative_difference(want.get_weights(), got.get_weights())
    print(f"resume after SIGKILL at step {killed_at} vs uninterrupted: max relative weight difference {err:.3g}")
    assert err <= 1e-6


def test_dropout_rng_state_is_checkpointed(tmp_path):
    config = {"model": "unet", "num_classes": 3, "model_options": dict(TINY, dropout=0.5)}
    model = build_full_model(config)
    states = seed_generator_states(model)
    assert list(states) == ["bottleneck_dropout_seed0"]
    for _ in range(3):
        model(tf.zeros((1, 16, 16, 3)), training=True)
    path = tf.train.Checkpoint(model=model, rng=states).write(str(tmp_path / "c"))
    fresh = build_full_model(config)
    tf.train.Checkpoint(model=fresh, rng=seed_generator_states(fresh)).read(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(seed_generator_states(fresh)["bottleneck_dropout_seed0"].numpy(),
                                  states["bottleneck_dropout_seed0"].numpy())


def test_checkpoint_without_rng_state_still_resumes(data_dir, tmp_path, monkeypatch):
    # Checkpoints written before they held the dropout RNG state resume, with a warning.
    model_dir = tmp_path / "old"
    opts = dict(TINY, dropout=0.5)
    with monkeypatch.context() as m:
        m.setattr(checkpointing, "seed_generator_states", lambda model: {})
        train(_cfg(data_dir, model_dir, model_options=opts, steps_per_run=2), log=lambda m: None)
    logs = []
    assert train(_cfg(data_dir, model_dir, model_options=opts), log=logs.append).step == 4
    assert any(m.startswith(f"warning: {model_dir}/ckpt/ckpt-2 holds no dropout RNG state") for m in logs)
    assert f"Resumed from {model_dir}/ckpt/ckpt-2 at step 2." in logs


def test_checkpoint_state_file_is_written_after_complete_data_files(tmp_path, monkeypatch):
    # CheckpointManager.save (what the chief uses) must name a checkpoint in the state file only
    # once its .index and .data files are in place and the temporary ones are gone.
    from tensorflow.python.checkpoint import checkpoint_management  # pylint: disable=import-outside-toplevel

    seen = []
    real = checkpoint_management.update_checkpoint_state_internal

    def record(save_dir, model_checkpoint_path, *args, **kwargs):
        prefix = os.path.join(save_dir, model_checkpoint_path)
        seen.append((os.path.basename(prefix), sorted(os.listdir(save_dir))))
        return real(save_dir, model_checkpoint_path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_management, "update_checkpoint_state_internal", record)
    v = tf.Variable(tf.zeros(1 << 16))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(tmp_path), max_to_keep=2)
    for step in (1, 2):
        manager.save(checkpoint_number=step)
    assert seen and all(prefix.startswith("ckpt-") for prefix, _ in seen)
    for prefix, files in seen:
        assert f"{prefix}.index" in files and f"{prefix}.data-00000-of-00001" in files, files
        assert not [f for f in files if "_temp" in f or "tempstate" in f], files


def _damage(prefix, how):
    data, index = f"{prefix}.data-00000-of-00001", f"{prefix}.index"
    if how == "truncated data":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
    elif how == "truncated index":
        with open(index, "r+b") as f:
            f.truncate(os.path.getsize(index) // 2)
    elif how == "flipped data byte":
        raw = bytearray(open(data, "rb").read())
        raw[len(raw) // 2] ^= 0xFF
        open(data, "wb").write(bytes(raw))
    else:
        os.remove(data)


@pytest.mark.parametrize("how", ["truncated data", "truncated index", "flipped data byte", "missing data"])
def test_restore_falls_back_past_a_corrupt_latest_checkpoint(tmp_path, how):
    a, b = tf.Variable(tf.zeros(4096)), tf.Variable(tf.zeros(3))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(a=a, b=b), str(tmp_path), max_to_keep=3)
    for step in (1, 2, 3):
        a.assign(tf.fill([4096], float(step)))
        b.assign(tf.fill([3], float(step)))
        manager.save(checkpoint_number=step)
    _damage(str(tmp_path / "ckpt-3"), how)
    a.assign(tf.zeros(4096))
    logs = []
    path, bad = restore_newest(lambda p: tf.train.Checkpoint(a=a, b=b), str(tmp_path), logs.append)
    assert (path, bad) == (str(tmp_path / "ckpt-2"), [str(tmp_path / "ckpt-3")])
    assert logs and str(tmp_path / "ckpt-3") in logs[0] and str(tmp_path / "ckpt-2") in logs[0]
    np.testing.assert_array_equal(a.numpy(), 2.0)  # nothing of the failed attempt survives
    np.testing.assert_array_equal(b.numpy(), 2.0)

    for step in (1, 2):
        _damage(str(tmp_path / f"ckpt-{step}"), "truncated index")
    with pytest.raises(CheckpointError, match="None of the checkpoints"):
        restore_newest(lambda p: tf.train.Checkpoint(a=a, b=b), str(tmp_path), logs.append)


def test_resume_skips_partial_writes_and_sets_corrupt_checkpoint_aside(data_dir, tmp_path):
    model_dir = tmp_path / "m"
    train(_cfg(data_dir, model_dir), log=lambda m: None)  # ckpt-2, ckpt-4
    ckpt = model_dir / "ckpt"
    _damage(str(ckpt / "ckpt-4"), "truncated data")
    # What a save killed half-way leaves: TF writes <prefix>_temp/ and *.tempstate* files and
    # renames them into place, and the state file (via checkpoint.tmp*) only after that.
    (ckpt / "ckpt-6_temp").mkdir()
    (ckpt / "ckpt-6_temp/part-00000-of-00001.index").write_bytes(b"\0" * 7)
    (ckpt / "ckpt-6.index.tempstate123").write_bytes(b"\0" * 7)
    (ckpt / "checkpoint.tmp0123abcd").write_text("model_checkpoint_path: \"ckpt-6\"\n")
    logs = []
    res = train(_cfg(data_dir, model_dir, train_steps=6), log=logs.append)
    assert res.step == 6
    warning = next(m for m in logs if m.startswith("warning:"))
    assert f"{ckpt}/ckpt-4 cannot be restored" in warning and f"previous one, {ckpt}/ckpt-2" in warning
    assert f"Resumed from {ckpt}/ckpt-2 at step 2." in logs
    assert sum("left by a checkpoint write that was interrupted" in m for m in logs) == 3
    assert (ckpt / "ckpt-4.data-00000-of-00001.corrupt").exists()
    assert remove_partial_writes(str(ckpt)) == []
    state = tf.train.get_checkpoint_state(str(ckpt))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-4", "ckpt-6"]
    load_trained_model(str(model_dir))  # the re-written ckpt-6 reads back


def test_nan_after_a_checkpoint_names_it_and_keeps_it(data_dir, tmp_path):
    model_dir = tmp_path / "n"
    train(_cfg(data_dir, model_dir, steps_per_run=2), log=lambda m: None)
    good = str(model_dir / "ckpt" / "ckpt-2")
    before = load_trained_model(str(model_dir))[0].get_weights()
    with pytest.raises(NonFiniteLossError, match=re.escape(f"at step 3. Last good checkpoint: {good}; it is kept")):
        train(_cfg(data_dir, model_dir, class_weights=(1e38, 1e38, 1e38)), log=lambda m: None)
    model, _, path = load_trained_model(str(model_dir))
    assert path == good
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_full_disk_is_reported_before_training(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(ModelDirWriteError, match=r"--model_dir .* has 0\.0 MiB free but its checkpoints need"):
        train(_cfg(data_dir, tmp_path / "full"), log=lambda m: None)
    assert not (tmp_path / "full" / "ckpt").exists()


def _replace_dir_with_file(path):
    shutil.rmtree(path)
    path.write_text("not a directory")


@pytest.mark.parametrize("what", ["checkpoint", "metrics", "summaries"])
def test_failing_write_mid_run_names_path_and_step(data_dir, tmp_path, monkeypatch, what):
    model_dir = tmp_path / what

    def log(message):  # the checkpoint directory stops being one after step 2's save
        if what == "checkpoint" and message.startswith("step 3/"):
            _replace_dir_with_file(model_dir / "ckpt")

    if what == "checkpoint":
        cfg, where, step = _cfg(data_dir, model_dir), f"checkpoint {model_dir}/ckpt/ckpt-4", 4
    elif what == "metrics":  # the disk fills up when the metrics of the first evaluation are written
        def full(path, obj):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        monkeypatch.setattr(training, "atomic_write_json", full)
        cfg, where, step = _cfg(data_dir, model_dir, eval_split="val", eval_every=2), \
            f"metrics {model_dir}/eval/metrics-00000002.json", 2
    else:  # the disk fills up at step 3's TensorBoard summaries
        real = training.write_scalar

        def write_scalar(name, value, step):
            if step == 3:
                raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
            real(name, value, step)
        monkeypatch.setattr(training, "write_scalar", write_scalar)
        cfg, where, step = _cfg(data_dir, model_dir), f"TensorBoard summaries to {model_dir}/train", 3
    with pytest.raises(ModelDirWriteError) as info:
        train(cfg, log=log)
    msg = str(info.value)
    assert msg.startswith(f"Writing {where} failed at step {step}: "), msg
    assert f"Last good checkpoint: {model_dir}/ckpt/ckpt-2" in msg


def test_cli_reports_an_unwritable_model_dir_without_a_traceback(data_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    with Processes(tmp_path) as procs:
        p = procs.start(train_args(data_dir, str(tmp_path / "file" / "run")), "cli")
        assert procs.wait(p, 120, "cli") == 1
    out = procs.log("cli")
    assert f"error: --model_dir {tmp_path}/file/run is not writable" in out
    assert "Traceback" not in out
