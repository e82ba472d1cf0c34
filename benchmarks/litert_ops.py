"""Which TFLite ops LiteRT hands to XNNPACK, and how long each op takes.

The LiteRT Python interpreter applies the XNNPACK delegate by default and has no op
profiler (``litert-benchmark`` times whole models only). This module reads what the
interpreter exposes and measures the rest:

* :func:`delegation`: every node of the model's first subgraph and the XNNPACK partition
  that replaced it (``None``: it runs on LiteRT's builtin kernels). The interpreter lists
  the original nodes and, after them, one ``DELEGATE`` node per partition with the
  partition's external input and output tensors; a node belongs to a partition exactly when
  it lies on a path from the partition's inputs to its outputs.
* :func:`profile_ops`: the whole model's time with XNNPACK, and each node's time alone:
  the node is cut out into a one-op model (:func:`extract_nodes`) and run on the values
  it sees in the whole model (one undelegated run keeps every intermediate tensor), with
  XNNPACK if the node was delegated in the whole model and on the builtin kernels
  otherwise. A node's share is its time over the whole model's. On a quiet machine the
  nodes' times alone add up to about the whole invocation (ENet int8 at 256x256: 16.2 ms
  against 16.1 ms); under other load the few timed invocations of a node can all be
  disturbed, and shares come out too high.

No TensorFlow import: ``ai-edge-litert`` and NumPy only.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

DELEGATE = "DELEGATE"


@dataclasses.dataclass
class OpInfo:
    """One node of a TFLite model as LiteRT runs it.

    Attributes:
      index: node index (the operator's index in the first subgraph).
      op: builtin op name, e.g. ``CONV_2D``.
      dtype: NumPy name of the first output's type (``int8``, ``float32``, ...).
      partition: the XNNPACK partition (its ``DELEGATE`` node index) that runs the node,
        or ``None`` when LiteRT's own kernel runs it.
      ms: the node's time alone in milliseconds (``None`` until profiled).
    """

    index: int
    op: str
    dtype: str
    partition: Optional[int]
    ms: Optional[float] = None

    @property
    def delegated(self) -> bool:
        return self.partition is not None


def _interpreter(model_content: bytes, threads: int, xnnpack: bool = True, keep_all: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # pylint: disable=import-outside-toplevel

    resolver = OpResolverType.BUILTIN if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_content=model_content, num_threads=threads, experimental_op_resolver_type=resolver,
                     experimental_preserve_all_tensors=keep_all)
    it.allocate_tensors()
    return it


def delegation(model_content: bytes, threads: int = 1) -> Tuple[List[OpInfo], int]:
    """The model's nodes with the XNNPACK partition of each, and the number of partitions.

    Args:
      model_content: a ``.tflite`` flatbuffer.
      threads: interpreter threads (delegation does not depend on it).

    Returns:
      ``(nodes, partitions)``: one :class:`OpInfo` per original node, in execution order.
    """
    it = _interpreter(model_content, threads)
    details = it._get_ops_details()  # pylint: disable=protected-access
    original = [d for d in details if d["op_name"] != DELEGATE]
    delegates = [d for d in details if d["op_name"] == DELEGATE]
    producer = {t: d["index"] for d in original for t in d["outputs"]}
    partition: Dict[int, int] = {}
    for d in delegates:
        stop, stack, seen = set(d["inputs"]), list(d["outputs"]), set()
        while stack:
            t = stack.pop()
            if t in seen or t in stop or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            partition[node] = d["index"]
            stack.extend(details[node]["inputs"])
    nodes = [
        OpInfo(d["index"], d["op_name"], d["result_types"][0].__name__ if d["result_types"] else "",
               partition.get(d["index"]))
        for d in original
    ]
    return nodes, len(delegates)


def parse_model(model_content: bytes):
    """The flatbuffer as a mutable object (``schema_py_generated.ModelT``) for :func:`extract_nodes`."""
    from ai_edge_litert.tools import flatbuffer_utils  # pylint: disable=import-outside-toplevel

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model_content))


def extract_nodes(model, node_ids: Sequence[int]) -> Tuple[bytes, List[int]]:
    """A model made of some nodes of another, for timing them alone.

    Its inputs are the non-constant tensors the nodes read and do not produce; its outputs
    the tensors they produce that the rest of the model reads (or all they produce). Only
    the constants the nodes read are kept.

    Args:
      model: a ``.tflite`` flatbuffer, or its :func:`parse_model` object (parse once to cut
        many pieces out of a large model).
      node_ids: node (operator) indices of the first subgraph.

    Returns:
      ``(flatbuffer, input tensor indices in the original model, in input order)``.
    """
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
    from ai_edge_litert.tools import flatbuffer_utils  # pylint: disable=import-outside-toplevel

    if isinstance(model, (bytes, bytearray)):
        model = parse_model(model)
    graph = model.subgraphs[0]
    chosen = set(node_ids)
    ops = [graph.operators[i] for i in sorted(chosen)]

    def const(t):
        data = model.buffers[graph.tensors[t].buffer].data
        return data is not None and len(data) > 0

    produced = {t for op in ops for t in op.outputs if t >= 0}
    read = {t for op in ops for t in op.inputs if t >= 0}
    read_elsewhere = {t for i, op in enumerate(graph.operators) if i not in chosen for t in op.inputs if t >= 0}
    inputs = sorted(t for t in read - produced if not const(t))
    outputs = sorted(t for t in produced if t in read_elsewhere or t in set(graph.outputs)) or sorted(produced)
    used = sorted(read | produced)
    new_index = {t: i for i, t in enumerate(used)}
    buffers, tensors = [schema.BufferT()], []
    for t in used:
        tensor = schema.TensorT()
        tensor.__dict__.update(graph.tensors[t].__dict__)
        if const(t):
            buffers.append(model.buffers[graph.tensors[t].buffer])
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
        tensors.append(tensor)
    new_ops = []
    for op in ops:
        new = schema.OperatorT()
        new.__dict__.update(op.__dict__)
        new.inputs = [new_index[t] if t >= 0 else -1 for t in op.inputs]
        new.outputs = [new_index[t] for t in op.outputs]
        new.intermediates = [new_index[t] for t in op.intermediates] if op.intermediates else None
        new_ops.append(new)
    sub = schema.SubGraphT()
    sub.tensors, sub.operators = tensors, new_ops
    sub.inputs, sub.outputs = [new_index[t] for t in inputs], [new_index[t] for t in outputs]
    out = schema.ModelT()
    out.version, out.operatorCodes, out.description = model.version, model.operatorCodes, model.description
    out.buffers, out.subgraphs = buffers, [sub]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(out)), inputs


def _best_ms(it, iters: int) -> float:
    """The fastest of ``iters`` invocations after one warm-up, in ms: the least disturbed by other load."""
    it.invoke()
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        it.invoke()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def random_input(model_content: bytes, seed: int = 0) -> np.ndarray:
    """A random value for the model's single input (uint8 images: uniform 0-255)."""
    it = _interpreter(model_content, 1, xnnpack=False)
    spec = it.get_input_details()[0]
    rng = np.random.default_rng(seed)
    if np.issubdtype(spec["dtype"], np.integer):
        info = np.iinfo(spec["dtype"])
        return rng.integers(info.min, int(info.max) + 1, size=spec["shape"]).astype(spec["dtype"])
    return rng.normal(size=spec["shape"]).astype(spec["dtype"])


def time_models(models: Sequence[bytes], x: np.ndarray, threads: int, rounds: int) -> List[float]:
    """Best ms per invocation of each model with XNNPACK, invoked alternately ``rounds`` times."""
    its = []
    for content in models:
        it = _interpreter(content, threads)
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        its.append(it)
    best = [float("inf")] * len(its)
    for _ in range(rounds):
        for i, it in enumerate(its):
            t0 = time.perf_counter()
            it.invoke()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [b * 1e3 for b in best]


def profile_ops(model_content: bytes, x: np.ndarray, threads: int, iters: int = 3,
                only_undelegated: bool = False) -> Tuple[List[OpInfo], int]:
    """Times every node alone (see the module docstring) on the values input ``x`` gives it.

    Args:
      model_content: a ``.tflite`` flatbuffer with one input.
      x: that input.
      threads: interpreter threads, as the whole model runs.
      iters: timed invocations per node (the best counts).
      only_undelegated: time only the nodes XNNPACK does not run (their ``ms`` is set,
        the others' stays ``None``).

    Returns:
      ``(nodes, partitions)`` as :func:`delegation`, with ``ms`` filled in.
    """
    nodes, partitions = delegation(model_content, threads)
    reference = _interpreter(model_content, 1, xnnpack=False, keep_all=True)
    reference.set_tensor(reference.get_input_details()[0]["index"], x)
    reference.invoke()
    parsed = parse_model(model_content)
    for node in nodes:
        if only_undelegated and node.delegated:
            continue
        content, inputs = extract_nodes(parsed, [node.index])
        it = _interpreter(content, threads, xnnpack=node.delegated)
        for spec, t in zip(it.get_input_details(), inputs):
            it.set_tensor(spec["index"], reference.get_tensor(t))
        node.ms = _best_ms(it, iters)
    return nodes, partitions


def by_op(nodes: Sequence[OpInfo], delegated: Optional[bool] = None) -> Dict[Tuple[str, str], Tuple[int, float]]:
    """``{(op, dtype): (count, total ms)}`` of the timed nodes, slowest first.

    Args:
      nodes: profiled nodes.
      delegated: only delegated (True) or undelegated (False) nodes; ``None``: all.
    """
    acc: Dict[Tuple[str, str], List[float]] = collections.defaultdict(lambda: [0, 0.0])
    for n in nodes:
        if n.ms is None or (delegated is not None and n.delegated != delegated):
            continue
        acc[(n.op, n.dtype)][0] += 1
        acc[(n.op, n.dtype)][1] += n.ms
    return {k: (int(c), ms) for k, (c, ms) in sorted(acc.items(), key=lambda kv: -kv[1][1])}
