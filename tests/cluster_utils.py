"""Launching ``python -m keras_seg.train`` processes (single or TF_CONFIG workers) in tests.

Every process is started through a :class:`Processes` context, which SIGKILLs and reaps
whatever is still running when the block ends, also when a test fails.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OPTS = ["--model_opt=base_width=4", "--model_opt=depth=2", "--model_opt=batch_norm=True"]


def train_args(data_dir, model_dir, **flags):
    """Command line of a tiny U-Net run on ``data_dir``; ``flags`` override the defaults."""
    base = dict(model="unet", num_classes=3, data_dir=data_dir, model_dir=model_dir, crop_size="16,16",
                batch_size=4, train_steps=4, learning_rate=0.05, log_every=1, checkpoint_every=2,
                eval_split="", seed=7, optimizer="sgd", strategy="auto")
    base.update(flags)
    dropout = base.pop("dropout", 0.0)
    return ["-m", "keras_seg.train", *TINY_OPTS, f"--model_opt=dropout={dropout}",
            *(f"--{k}={v}" for k, v in base.items())]


def free_ports(n):
    """``n`` distinct free TCP ports on 127.0.0.1 (free when checked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports, index):
    """TF_CONFIG of worker ``index`` of a cluster of workers on 127.0.0.1:``ports``."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class Processes:
    """Starts processes whose output goes to log files; kills and reaps them on exit."""

    def __init__(self, log_dir):
        self.log_dir = str(log_dir)
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p, _ in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()

    def start(self, args, name, env=None):
        """Runs ``sys.executable args`` in the repo with PYTHONPATH set; returns the Popen."""
        full_env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        full_env.update(PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        log = open(os.path.join(self.log_dir, f"{name}.log"), "w")  # pylint: disable=consider-using-with
        p = subprocess.Popen([sys.executable, *args], cwd=REPO, env=full_env, stdout=log,
                             stderr=subprocess.STDOUT)
        log.close()
        self.procs.append((p, name))
        return p

    def log(self, name):
        """The output of process ``name`` so far."""
        with open(os.path.join(self.log_dir, f"{name}.log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait(self, p, timeout, name=""):
        """Waits for ``p``; on timeout kills it and fails with the tail of its log."""
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            tail = self.log(name)[-3000:] if name else ""
            raise AssertionError(f"process {name or p.args} still running after {timeout}s\n{tail}") from None


def wait_for(predicate, timeout, what, poll=0.05):
    """Polls ``predicate`` until true; fails naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def max_relative_difference(a, b):
    """Largest ``max|a - b| / max|a|`` over matching weight lists (of equal length and shapes)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise AssertionError(f"weight lists differ in length: {len(a)} against {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        if np.shape(x) != np.shape(y):
            raise AssertionError(f"weight {i}: shape {np.shape(x)} against {np.shape(y)}")
    return max(float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(x))), 1e-12)) for x, y in zip(a, b))
