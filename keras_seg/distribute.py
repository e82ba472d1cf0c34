"""Strategies, clusters (``TF_CONFIG`` or Slurm) and bounded waits on the other workers.

See docs/distributed.md. Under ``MultiWorkerMirroredStrategy`` every wait on the other
workers is bounded by ``worker_timeout``: collective ops time out, and a :class:`Watchdog`
process ends a worker stuck where TensorFlow cannot time out (connecting to the cluster).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from keras_seg.checkpoints import error_line

RESTART_EXIT_CODE = 75
"""Exit status after a lost worker: rerun every worker with the same command to resume."""


class WorkerLostError(RuntimeError):
    """Another worker of a multi-worker job died, restarted or stopped answering."""


CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                  tf.errors.AbortedError)
"""What a collective op raises when a peer is lost: aborted by the heartbeat or timed out."""


class Watchdog:
    """Bounds the waits on the other workers: a wait longer than ``seconds`` ends the process.

    The countdown runs in a helper process (``keras_seg/_watchdog.py``): while TensorFlow
    connects to the cluster it holds the GIL, so a thread could not act, and it catches
    SIGTERM. On expiry the helper prints a message naming the wait, the step and the last
    checkpoint, and SIGKILLs this process (exit status 137). Checkpoints are written
    atomically, so nothing is lost but the steps since the last one.
    """

    def __init__(self, seconds: float, context: Callable[[], str] = lambda: ""):
        self.seconds, self._context = float(seconds), context
        helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_watchdog.py")
        self._proc = subprocess.Popen([sys.executable, helper, str(os.getpid())], stdin=subprocess.PIPE)

    def arm(self, what: str) -> None:
        """Starts (or restarts) the countdown for ``what``."""
        message = (f"error: no progress for {self.seconds:g}s (--worker_timeout) while {what}: another worker is "
                   f"down, restarting or stuck. {self._context()}Restart every worker with the same command; "
                   "training resumes from the last checkpoint.")
        self._send(f"{self.seconds} {message}")

    @contextlib.contextmanager
    def armed(self, what: str) -> Iterator[None]:
        """Bounds the ``with`` block; the helper ends with it."""
        self.arm(what)
        try:
            yield
        finally:
            self.close()

    def close(self) -> None:
        """Stops the countdown and ends the helper."""
        if self._proc.stdin and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def _send(self, line: str) -> None:
        try:
            self._proc.stdin.write((line.replace("\n", " ") + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # the helper is gone: nothing to bound
            pass


def _max_tasks_per_node(spec: str) -> int:
    """``SLURM_STEP_TASKS_PER_NODE`` such as ``"2(x3),1"`` -> 2."""
    return max(int(part.split("(")[0]) for part in spec.split(",") if part)


def slurm_cluster_resolver(port_base: int = 8888) -> tf.distribute.cluster_resolver.ClusterResolver:
    """The cluster of a Slurm job step (``srun``), with GPUs or CPU only.

    Tasks are listed node by node from ``SLURM_STEP_NODELIST`` and
    ``SLURM_STEP_TASKS_PER_NODE``; the tasks of a node listen on ``port_base``,
    ``port_base + 1``, ... (``tf.distribute.cluster_resolver.SlurmClusterResolver``). The
    node's GPUs (``CUDA_VISIBLE_DEVICES``, else ``SLURM_GPUS_ON_NODE``) are split evenly
    between its tasks by setting ``CUDA_VISIBLE_DEVICES``; without GPUs each task runs on
    its CPU (which ``SlurmClusterResolver`` alone cannot do).

    Args:
      port_base: port of the first task on each node.

    Returns:
      A resolved ``ClusterResolver`` (``task_type`` and ``task_id`` set).

    Raises:
      ValueError: not inside a Slurm job step, or fewer GPUs than tasks on a node.
    """
    missing = [v for v in ("SLURM_PROCID", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE") if v not in os.environ]
    if missing:
        raise ValueError(f"--cluster=slurm needs a Slurm job step (run under srun); {missing} are not set.")
    tasks_per_node = _max_tasks_per_node(os.environ["SLURM_STEP_TASKS_PER_NODE"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        node_gpus = len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    else:
        node_gpus = int(os.environ.get("SLURM_GPUS_ON_NODE", "0") or 0)
    resolvers = tf.distribute.cluster_resolver
    if node_gpus:
        if node_gpus < tasks_per_node:
            raise ValueError(
                f"{node_gpus} GPU(s) per node cannot be split between {tasks_per_node} tasks per node; "
                "start one task per node or per GPU (srun --ntasks-per-node)."
            )
        resolver = resolvers.SlurmClusterResolver(port_base=port_base, gpus_per_node=node_gpus,
                                                  gpus_per_task=node_gpus // tasks_per_node, auto_set_gpu=True)
        resolver.cluster_spec()  # resolves task_type/task_id and sets CUDA_VISIBLE_DEVICES
        return resolver
    # CPU only: SlurmClusterResolver needs a GPU per task; borrow its task layout only.
    layout = resolvers.SlurmClusterResolver(port_base=port_base, gpus_per_node=tasks_per_node,
                                            gpus_per_task=1, auto_set_gpu=False)
    spec = layout.cluster_spec()
    return resolvers.SimpleClusterResolver(spec, task_type=layout.task_type, task_id=layout.task_id,
                                           num_accelerators={}, rpc_layer="grpc")


def cluster_resolver(cluster: str = "tf_config", port_base: int = 8888) -> tf.distribute.cluster_resolver.ClusterResolver:
    """``tf_config``: the ``TF_CONFIG`` environment variable; ``slurm``: :func:`slurm_cluster_resolver`."""
    if cluster == "tf_config":
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if cluster == "slurm":
        return slurm_cluster_resolver(port_base)
    raise ValueError(f"Unknown cluster. Received: cluster={cluster!r}")


def make_strategy(name: str = "auto", device: Optional[str] = None, *, cluster: str = "tf_config",
                  port_base: int = 8888, worker_timeout: float = 600.0) -> tf.distribute.Strategy:
    """``mirrored`` (all local devices), ``one_device``, ``multi_worker`` or ``auto``.

    Args:
      name: ``auto`` picks ``multi_worker`` when the cluster (``cluster``) has more than one
        task, else ``mirrored``.
      device: the device of ``one_device``.
      cluster: where ``multi_worker`` finds its cluster: ``tf_config`` or ``slurm``
        (:func:`cluster_resolver`).
      port_base: with ``cluster="slurm"``, the port of the first task on each node.
      worker_timeout: ``multi_worker``: seconds to wait for the other workers to come up, and
        the timeout of every collective operation; past it the process ends with an error.

    Returns:
      The strategy.
    """
    if name in ("auto", "multi_worker"):
        resolver = cluster_resolver(cluster, port_base)
        spec = resolver.cluster_spec().as_dict()
        tasks = sum(len(v) for v in spec.values())
        if name == "auto":
            name = "multi_worker" if tasks > 1 else "mirrored"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(device or "/cpu:0")
    if name == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout)
        try:
            with Watchdog(worker_timeout).armed(f"connecting to the {tasks} tasks of the cluster {spec}"):
                return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                                 communication_options=options)
        except CLUSTER_ERRORS as e:
            raise WorkerLostError(
                f"Could not join the cluster {spec} ({error_line(e)}). Restart every worker with the same "
                "command; training resumes from the last checkpoint."
            ) from e
        except tf.errors.UnknownError as e:
            if "Could not start gRPC server" not in str(e):
                raise
            address = spec[resolver.task_type][resolver.task_id]
            raise ValueError(
                f"Could not listen on {address}, this task's address in the cluster: the port is in use "
                "(is an earlier run of this task still running?)."
            ) from e
    raise ValueError(f"Unknown strategy. Received: strategy={name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one task that writes checkpoints, summaries and metrics."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Number of worker processes (1 unless ``MultiWorkerMirroredStrategy`` spans several)."""
    return strategy.num_replicas_in_sync // max(len(strategy.extended.worker_devices), 1)


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This worker's position among the workers (the chief is 0), as ``tf.distribute`` counts it."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or num_workers(strategy) == 1:
        return 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return 0
    return resolver.task_id + (1 if has_chief else 0)


def sum_over_workers(strategy: tf.distribute.Strategy, value) -> np.ndarray:
    """Sums a host value over the workers (a collective: every worker must call it)."""
    value = np.asarray(value)
    if num_workers(strategy) == 1:
        return value
    local = len(strategy.extended.worker_devices)
    zeros = np.zeros_like(value)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(value if ctx.replica_id_in_sync_group % local == 0 else zeros))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
