"""U-Net++ (Zhou, Rahman Siddiquee, Tajbakhsh and Liang, "UNet++: A Nested U-Net Architecture
for Medical Image Segmentation", DLMIA 2018). https://arxiv.org/abs/1807.10165

Node ``X(i, j)`` sits at depth ``i`` (``i`` poolings below the input) and skip index ``j``.
The backbone column ``X(i, 0)`` is the U-Net encoder; every other node is

    X(i, j) = unit([up(X(i + 1, j - 1)), X(i, 0), ..., X(i, j - 1)])

a VGG-style unit (two 3x3 convolutions) on the concatenation of the 2x2 up-convolution of the
node below and **all** earlier nodes of its row: the nested, dense skip pathways. The heads
``L1`` .. ``L4`` are 1x1 classifiers on ``X(0, 1)`` .. ``X(0, 4)``.

Where the paper leaves a detail open this follows the authors' Keras code,
MrGiovanni/UNetPlusPlus ``model.py`` (``standard_unit`` and ``Nest_Net``, commit
6bc3551aa11a8855159b617e0d5ca107e54207ac): filters 32, 64, 128, 256, 512; ELU after each
convolution, each followed by dropout 0.5; up-convolutions with no activation; the
up-sampled node first in each concatenation. With one input channel and one class that
network has 9,041,601 parameters, the paper's Table 1 "9.04M" (tests/models/test_unet_pp.py).

Deep supervision (Sec. 2): ``deep_supervision=True`` puts a head on each of ``X(0, 1..4)``.
Training sums the four heads' losses (``aux_outputs=True``: ``L4`` is the main output, ``L1``
.. ``L3`` are auxiliary outputs of loss weight 1.0). At inference, ``head`` selects the
paper's two modes: ``"mean"`` (accurate mode: the average of the four heads' softmax
probabilities, returned as their logarithm, so that the softmax and argmax of the output
are exactly those of the average) or ``"L1"`` .. ``"L4"`` (fast mode with model pruning:
only the nodes ``X(i, j)`` with ``i + j <= k`` that head ``Lk`` needs are built, so ``L1``
is a 2-level network). ``head`` does not change the variables: a model trained with deep
supervision is evaluated or exported at any head with ``--inference_options=head=L2``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from keras_seg.models.blocks import (
    CropLike,
    PadToMultiple,
    check_common_args,
    conv_bn_act,
    load_weights_if_given,
    logits_layer,
)
from keras_seg.registry import register

__all__ = ["build_unet_pp", "HEADS", "MeanProbabilityLogits"]

#: Paper widths of the five levels (the authors' ``nb_filter``).
PAPER_FILTERS: Tuple[int, ...] = (32, 64, 128, 256, 512)


def _head_names(depth: int) -> Tuple[str, ...]:
    return tuple(f"L{k}" for k in range(1, depth + 1))


#: Inference heads of the paper's depth-4 network (``"mean"`` averages all four).
HEADS: Tuple[str, ...] = ("mean",) + _head_names(4)


@keras.saving.register_keras_serializable(package="keras_seg")
class MeanProbabilityLogits(keras.layers.Layer):
    """``log(mean_k softmax(logits_k))``: logits whose softmax is the heads' mean probability.

    ``floor`` keeps the logarithm finite where every head gives a class probability 0 in
    float32; it changes no argmax and moves no probability by more than ``floor``.
    """

    def __init__(self, floor: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.floor = float(floor)

    def call(self, inputs):
        probs = [tf.nn.softmax(tf.cast(x, tf.float32), axis=-1) for x in inputs]
        return tf.math.log(tf.math.add_n(probs) / float(len(probs)) + self.floor)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "floor": self.floor}


def _unit(x, filters: int, name: str, batch_norm: bool, activation: str, dropout: float):
    """The authors' ``standard_unit``: (3x3 conv [+ BN] + activation [+ dropout]) x 2."""
    for k in (1, 2):
        x = conv_bn_act(x, filters, f"{name}_{k}", use_bn=batch_norm, activation=activation)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_{k}_dropout")(x)
    return x


def _check(filters, depth, deep_supervision, head, aux_outputs, dropout, activation) -> str:
    """Validates the options; returns the resolved head."""
    if (not isinstance(filters, (list, tuple)) or len(filters) < 2
            or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in filters)):
        raise ValueError(f"filters must be a list of at least 2 ints >= 1, one per level. Received: filters={filters!r}")
    if depth != len(filters) - 1:
        raise ValueError(f"depth must be len(filters) - 1 = {len(filters) - 1} (one width per level). Received: depth={depth!r}")
    if not isinstance(deep_supervision, bool):
        raise ValueError(f"deep_supervision must be a bool. Received: deep_supervision={deep_supervision!r}")
    if not isinstance(aux_outputs, bool):
        raise ValueError(f"aux_outputs must be a bool. Received: aux_outputs={aux_outputs!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    try:
        keras.activations.get(activation)
    except ValueError as err:
        raise ValueError(f"activation must be a Keras activation name. Received: activation={activation!r}") from err
    heads = _head_names(depth)
    if head is None:
        return "mean" if deep_supervision else heads[-1]
    if head not in ("mean",) + heads:
        raise ValueError(f"head must be one of {('mean',) + heads}. Received: head={head!r}")
    if not deep_supervision and head != heads[-1]:
        raise ValueError(f"head={head!r} needs deep_supervision=True: without it only the last head "
                         f"{heads[-1]!r} is trained. Received: head={head!r}")
    return head


@register(
    "unet_pp",
    tiny=dict(filters=(4, 8, 8), depth=2, dropout=0.0, batch_norm=True, deep_supervision=True),
    paper="Zhou et al., UNet++, DLMIA 2018, https://arxiv.org/abs/1807.10165",
    aux_weights={"aux_l1": 1.0, "aux_l2": 1.0, "aux_l3": 1.0},
    inference_options=("head",),
)
def build_unet_pp(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    filters: Sequence[int] = PAPER_FILTERS,
    depth: int = 4,
    batch_norm: bool = False,
    activation: str = "elu",
    dropout: float = 0.5,
    deep_supervision: bool = False,
    head: Optional[str] = None,
    aux_outputs: bool = False,
    weights: Optional[str] = None,
    name: str = "unet_pp",
) -> keras.Model:
    """Builds U-Net++, returning logits ``(B, H, W, num_classes)`` at the input size.

    Args:
      num_classes: number of classes of the logits.
      input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None``. Any size is taken: the input
        is zero-padded to a multiple of ``2**depth`` and the logits are cropped back.
      filters: width of each level (paper: 32, 64, 128, 256, 512).
      depth: number of 2x2 poolings; must be ``len(filters) - 1`` (paper: 4).
      batch_norm: batch normalisation after every 3x3 convolution (not in the authors' code).
      activation: activation after every 3x3 convolution (authors' code: ELU).
      dropout: dropout rate after every 3x3 convolution (authors' code: 0.5); 0 disables it.
      deep_supervision: a head on each of ``X(0, 1)`` .. ``X(0, depth)``.
      head: the inference output: ``"mean"`` (the default with deep supervision) or
        ``"L1"`` .. ``"L{depth}"`` (pruned to that head; ``"L{depth}"`` is the default and
        the only choice without deep supervision). Ignored when ``aux_outputs=True``.
      aux_outputs: with deep supervision, the training graph: returns
        ``[logits (head L{depth}), aux_l1, ..., aux_l{depth-1}]``, all at the input size.
        Without deep supervision the model has one output whatever this says.
      weights: ``None`` or a path to a ``.weights.h5`` file of this same graph.
      name: model name.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for bad arguments, naming the argument and the value received.
    """
    check_common_args(num_classes, input_shape, weights)
    filters = tuple(filters) if isinstance(filters, (list, tuple)) else filters
    head = _check(filters, depth, deep_supervision, head, aux_outputs, dropout, activation)
    training_graph = deep_supervision and aux_outputs
    if training_graph or head == "mean":
        levels = depth
    else:
        levels = int(head[1:])  # pruning: head Lk needs the nodes with i + j <= k only

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = PadToMultiple(2**depth, name="pad")(inputs)
    nodes: Dict[Tuple[int, int], keras.KerasTensor] = {}
    for i in range(levels + 1):  # the backbone column X(i, 0)
        if i:
            x = keras.layers.MaxPooling2D(2, name=f"x{i - 1}_0_pool")(nodes[(i - 1, 0)])
        nodes[(i, 0)] = _unit(x, filters[i], f"x{i}_0", batch_norm, activation, dropout)
        for j in range(1, i + 1):  # the nodes this new level completes: X(i - j, j)
            row = i - j
            up = keras.layers.Conv2DTranspose(filters[row], 2, strides=2, name=f"x{row}_{j}_up")(nodes[(row + 1, j - 1)])
            cat = keras.layers.Concatenate(name=f"x{row}_{j}_concat")([up] + [nodes[(row, k)] for k in range(j)])
            nodes[(row, j)] = _unit(cat, filters[row], f"x{row}_{j}", batch_norm, activation, dropout)

    if not deep_supervision:
        out = CropLike(name="logits", dtype="float32")(logits_layer(nodes[(0, depth)], num_classes, "logits_full"), inputs)
        return load_weights_if_given(keras.Model(inputs, out, name=name), weights)

    wanted = range(1, depth + 1) if levels == depth and (training_graph or head == "mean") else [levels]
    heads = {k: logits_layer(nodes[(0, k)], num_classes, f"head_l{k}") for k in wanted}
    if training_graph:
        outputs = [CropLike(name="logits", dtype="float32")(heads[depth], inputs)]
        outputs += [CropLike(name=f"aux_l{k}", dtype="float32")(heads[k], inputs) for k in range(1, depth)]
    elif head == "mean":
        mean = MeanProbabilityLogits(name="heads_mean", dtype="float32")([heads[k] for k in wanted])
        outputs = CropLike(name="logits", dtype="float32")(mean, inputs)
    else:
        outputs = CropLike(name="logits", dtype="float32")(heads[levels], inputs)
    return load_weights_if_given(keras.Model(inputs, outputs, name=name), weights)
