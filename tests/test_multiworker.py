"""Distributed training: input sharding, MirroredStrategy and MultiWorkerMirroredStrategy
equivalence with one device, chief-only writes, Slurm clusters, and recovery from a killed
worker. Workers are real processes on 127.0.0.1 with ports picked at run time."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from data_prep.folder import convert_folder
from keras_seg.checkpoints import load_trained_model
from keras_seg.data import AugmentConfig, DataConfig, make_dataset
from keras_seg.data.manifest import load_manifest
from keras_seg.options import TrainConfig
from keras_seg.distribute import cluster_resolver
from keras_seg.training import train
from tests.cluster_utils import REPO, Processes, free_ports, max_relative_difference, tf_config, train_args, wait_for
from tests.data.fixtures import make_folder_dataset

TINY = {"base_width": 4, "depth": 2, "batch_norm": True, "dropout": 0.0}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same 8 train / 3 val examples as one file per split, and as 3 train / 2 val files."""
    root = tmp_path_factory.mktemp("mw")
    make_folder_dataset(root / "src", n_train=8, n_val=3)
    out = {}
    for name, mb in (("one", 64), ("many", 0.005)):
        convert_folder(str(root / "src/images"), str(root / "src/masks"), str(root / name), ["a", "b", "c"],
                       workers=1, shard_mb=mb, log=lambda m: None)
        out[name] = str(root / name)
    assert len(load_manifest(out["many"])["splits"]["train"]["files"]) == 3
    return out


def _images(ds):
    return [img.tobytes() for batch in ds for img in batch[0].numpy()]


@pytest.mark.parametrize("name", ["one", "many"])
@pytest.mark.parametrize("workers", [2, 3])
def test_each_worker_reads_its_own_shard(datasets, name, workers):
    data_dir = datasets[name]
    files = load_manifest(data_dir)["splits"]["train"]["files"]
    everything = _images(make_dataset(DataConfig(data_dir, "train", 1, training=False)))
    shards = [_images(make_dataset(DataConfig(data_dir, "train", workers, training=False),
                                   tf.distribute.InputContext(workers, i, workers))) for i in range(workers)]
    assert sorted(sum(shards, [])) == sorted(everything)  # every example exactly once
    assert all(shards)
    if len(files) >= workers:  # whole files per worker: files i::n
        for i, shard in enumerate(shards):
            own = sum((_file_images(data_dir, files, f) for f in files[i::workers]), [])
            assert sorted(shard) == sorted(own)


def _file_images(data_dir, files, name):
    """The images of file ``name`` alone: pipeline ``j`` of one pipeline per file reads file ``j``."""
    n = len(files)
    ctx = tf.distribute.InputContext(n, files.index(name), n)
    return _images(make_dataset(DataConfig(data_dir, "train", n, training=False), ctx))


@pytest.mark.parametrize("name,shards,workers", [("many", 2, 2), ("one", 4, 2)])
def test_global_batches_do_not_depend_on_the_number_of_workers(datasets, name, shards, workers):
    # "many": 3 files over 2 shards (whole files); "one": 1 file over 4 shards (examples), 2 each.
    aug = AugmentConfig(crop_size=(8, 8), ignore_label=255)

    def batches(n, skip=0, count=2):
        cfg = DataConfig(datasets[name], "train", 4, True, aug, seed=5, skip_batches=skip, num_shards=shards)
        if n == 1:
            return [b[1].numpy() for b in make_dataset(cfg).take(count)]
        parts = [[b[1].numpy() for b in make_dataset(cfg, tf.distribute.InputContext(n, i, n)).take(count)]
                 for i in range(n)]
        return [np.concatenate(p) for p in zip(*parts)]  # the global batch: worker 0's part first

    one, many = batches(1), batches(workers)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one[1:], batches(workers, skip=1, count=1)):  # resume: skip the consumed batches
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="must be a multiple of the 3 input pipeline"):
        make_dataset(DataConfig(datasets[name], "train", 6, True, aug, num_shards=shards),
                     tf.distribute.InputContext(3, 0, 3))


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from keras_seg.options import TrainConfig
    from keras_seg.training import train
    from keras_seg.checkpoints import load_trained_model
    data_dir, out = sys.argv[1], sys.argv[2]
    res = {}
    for name, strategy, jit in (("one", tf.distribute.OneDeviceStrategy("/cpu:0"), False),
                                ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), False),
                                ("one_xla", tf.distribute.OneDeviceStrategy("/cpu:0"), True)):
        cfg = TrainConfig(model="unet", num_classes=3, data_dir=data_dir, model_dir=f"{out}/{name}", jit_compile=jit,
                          model_options={"base_width": 4, "depth": 2, "batch_norm": True, "dropout": 0.0},
                          crop_size=(16, 16), batch_size=4, train_steps=3, learning_rate=0.05, log_every=1,
                          eval_split="", seed=7, optimizer="sgd")
        r = train(cfg, strategy=strategy, log=lambda m: None)
        m, _, _ = load_trained_model(f"{out}/{name}")
        res[name] = (strategy.num_replicas_in_sync, r.loss, [w.tolist() for w in m.get_weights()])
    try:  # XLA cannot place one compiled step on several devices: refused before any work
        train(TrainConfig(model="unet", num_classes=3, data_dir=data_dir, model_dir=f"{out}/two_xla", jit_compile=True,
                          crop_size=(16, 16), batch_size=4, train_steps=3, eval_split=""),
              strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), log=lambda m: None)
        res["two_xla"] = "trained"
    except ValueError as e:
        res["two_xla"] = str(e)
    json.dump(res, open(f"{out}/res.json", "w"))
""")


def test_mirrored_two_devices_equals_single_device(datasets, tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(MIRRORED_SCRIPT)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    r = subprocess.run([sys.executable, str(script), datasets["one"], str(tmp_path)], capture_output=True,
                       text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["one"][0] == 1 and res["two"][0] == 2
    assert res["two"][1] == pytest.approx(res["one"][1], rel=1e-5)
    err = max_relative_difference([np.array(w) for w in res["one"][2]], [np.array(w) for w in res["two"][2]])
    print(f"MirroredStrategy 2 devices vs 1 device: max relative weight difference {err:.3g}")
    assert err <= 1e-5
    # --jit_compile: the step under XLA computes the same update on one replica ...
    assert res["one_xla"][1] == pytest.approx(res["one"][1], rel=1e-4)
    err = max_relative_difference([np.array(w) for w in res["one"][2]], [np.array(w) for w in res["one_xla"][2]])
    print(f"XLA vs no XLA, 1 device: max relative weight difference {err:.3g}")
    assert err <= 1e-4
    # ... and is refused, with the reason, on several.
    assert "--jit_compile" in res["two_xla"] and "2 replicas" in res["two_xla"], res["two_xla"]


def test_watchdog_kills_a_stuck_process_with_its_message(tmp_path):
    helper = os.path.join(REPO, "keras_seg", "_watchdog.py")
    with Processes(tmp_path) as procs:
        stuck = procs.start(["-c", "import time; time.sleep(120)"], "stuck")
        dog = subprocess.Popen([sys.executable, helper, str(stuck.pid)], stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        try:
            dog.stdin.write(b"60 not this one\n1.5 error: no progress while waiting for Godot\n")
            dog.stdin.flush()
            assert procs.wait(stuck, 30, "stuck") == -signal.SIGKILL
            assert dog.wait(timeout=30) == 0
            assert dog.stderr.read().decode() == "error: no progress while waiting for Godot\n"
        finally:
            dog.kill()
            dog.wait()


SLURM_ENV = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE",
             "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("env,want_spec,want_task,want_gpus", [
    # two CPU nodes, one task each
    (dict(SLURM_PROCID="1", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="node[01-02]",
          SLURM_STEP_TASKS_PER_NODE="1(x2)"), ["node01:9000", "node02:9000"], 1, None),
    # one node with two GPUs and two tasks: one GPU each, ports 9000 and 9001
    (dict(SLURM_PROCID="1", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="gpu7",
          SLURM_STEP_TASKS_PER_NODE="2", SLURM_GPUS_ON_NODE="2"), ["gpu7:9000", "gpu7:9001"], 1, "1"),
])
def test_slurm_cluster_resolver(monkeypatch, env, want_spec, want_task, want_gpus):
    for k in SLURM_ENV:  # set, then delete: monkeypatch restores each one's absence too
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = cluster_resolver("slurm", port_base=9000)
    assert r.cluster_spec().as_dict() == {"worker": want_spec}
    assert (r.task_type, r.task_id) == ("worker", want_task)
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == want_gpus
    assert r.num_accelerators().get("GPU", 0) == (1 if want_gpus else 0)
    monkeypatch.delenv("SLURM_STEP_NODELIST")
    with pytest.raises(ValueError, match="needs a Slurm job step"):
        cluster_resolver("slurm")


def _single_process_reference(data_dir, model_dir, **kw):
    cfg = TrainConfig(model="unet", num_classes=3, data_dir=data_dir, model_dir=model_dir, model_options=TINY,
                      crop_size=(16, 16), batch_size=4, learning_rate=0.05, log_every=1, seed=7,
                      optimizer="sgd", strategy="one_device", data_shards=2, **kw)
    cfg.validate()
    return train(cfg, log=lambda m: None)


@pytest.mark.slow
def test_two_workers_equal_one_process_and_only_the_chief_writes(datasets, tmp_path):
    data_dir, mw_dir = datasets["one"], str(tmp_path / "mw")  # one file: the workers share it by example
    flags = dict(train_steps=4, checkpoint_every=2, eval_split="val", eval_every=2, data_shards=2,
                 worker_timeout=120)
    ports = free_ports(2)
    with Processes(tmp_path) as procs:
        workers = [procs.start(train_args(data_dir, mw_dir, **flags), f"w{i}", {"TF_CONFIG": tf_config(ports, i)})
                   for i in range(2)]
        _single_process_reference(data_dir, str(tmp_path / "one"), train_steps=4, checkpoint_every=2,
                                  eval_split="val", eval_every=2)
        for i, w in enumerate(workers):
            assert procs.wait(w, 240, f"w{i}") == 0, procs.log(f"w{i}")[-3000:]
    assert "on 2 replica(s) of 2 workers" in procs.log("w1")
    want, _, _ = load_trained_model(str(tmp_path / "one"))
    got, _, _ = load_trained_model(mw_dir)
    err = max_relative_difference(want.get_weights(), got.get_weights())
    print(f"2 workers vs 1 process: max relative weight difference {err:.3g}")
    assert err <= 1e-5
    for step in (2, 4):  # every worker evaluated its shard; the chief wrote the sum
        got_m = json.loads(open(f"{mw_dir}/eval/metrics-{step:08d}.json").read())
        want_m = json.loads(open(f"{tmp_path}/one/eval/metrics-{step:08d}.json").read())
        assert got_m["confusion_matrix"] == want_m["confusion_matrix"]
        assert np.sum(got_m["confusion_matrix"]) == 3 * (20 * 24 - 3)
    assert sorted(os.listdir(mw_dir)) == ["best", "ckpt", "eval", "flags.txt", "model_config.json", "train"]
    assert len(os.listdir(f"{mw_dir}/train")) == 1  # the chief's event file only
    assert tf.train.latest_checkpoint(f"{mw_dir}/ckpt").endswith("ckpt-4")

    # A worker that does not see the chief's model_dir (no shared filesystem) is refused.
    flags.update(train_steps=6, eval_split="")
    dirs = [mw_dir, str(tmp_path / "not_shared")]
    with Processes(tmp_path) as procs:
        workers = [procs.start(train_args(data_dir, dirs[i], **flags), f"u{i}", {"TF_CONFIG": tf_config(ports, i)})
                   for i in range(2)]
        for i, w in enumerate(workers):
            assert procs.wait(w, 240, f"u{i}") == 1, procs.log(f"u{i}")[-3000:]
            assert "The workers resumed from different steps [4, 0]" in procs.log(f"u{i}")


@pytest.mark.slow
def test_killed_worker_exits_the_job_cleanly_and_a_rerun_resumes(datasets, tmp_path):
    data_dir, mw_dir = datasets["many"], str(tmp_path / "mw")
    flags = dict(train_steps=30, checkpoint_every=5, log_every=5, data_shards=2, worker_timeout=20)
    ports = free_ports(2)

    def start(i, name):
        return procs.start(train_args(data_dir, mw_dir, **flags), name, {"TF_CONFIG": tf_config(ports, i)})

    with Processes(tmp_path) as procs:
        chief, worker = start(0, "chief"), start(1, "worker")
        wait_for(lambda: os.path.exists(f"{mw_dir}/ckpt/ckpt-10.index") or chief.poll() is not None, 240,
                 "the checkpoint of step 10")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        restarted = start(1, "restarted")
        # The survivor sees the lost worker (heartbeats) and exits with status 75 and a message.
        assert procs.wait(chief, 60, "chief") == 75, procs.log("chief")[-3000:]
        lost = procs.log("chief")
        assert "error: Lost contact with another worker" in lost and "Restart every worker" in lost
        last = int(re.search(r"last checkpoint: \S+/ckpt-(\d+)\. ", lost).group(1))
        assert last >= 10
        # The restarted worker cannot join the dead job: it gives up after --worker_timeout (the
        # watchdog's SIGKILL), or at once if TF reports the failure.
        rc, out = procs.wait(restarted, 120, "restarted"), procs.log("restarted")
        assert (rc == -signal.SIGKILL and "error: no progress for 20s (--worker_timeout) while connecting" in out
                or rc == 75 and "error: Could not join the cluster" in out), out[-3000:]
        # Rerunning every worker resumes from the last checkpoint.
        again = [start(0, "chief2"), start(1, "worker2")]
        for i, p in enumerate(again):
            assert procs.wait(p, 240, ("chief2", "worker2")[i]) == 0, procs.log(("chief2", "worker2")[i])[-3000:]
    for name in ("chief2", "worker2"):
        assert f"Resumed from {mw_dir}/ckpt/ckpt-{last} at step {last}." in procs.log(name)
        assert "step 30/30" in procs.log(name)
    assert not [d for d in os.listdir(mw_dir) if d.startswith(".tmp-worker")]
