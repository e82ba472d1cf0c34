"""Mask R-CNN with a ResNet-FPN backbone, as one functional Keras model per mode.

He et al., 2017, https://arxiv.org/abs/1703.06870, with the FPN of Lin et al., 2017,
https://arxiv.org/abs/1612.03144. ``mode="train"`` takes the image and its padded ground
truth and returns the five losses; ``mode="inference"`` takes the image and returns padded
detections with their masks. Both modes give every weighted layer the same name, so
:func:`inference_model_from` moves trained weights across by name.

    >>> import numpy as np
    >>> model = build_mask_rcnn(3, (64, 64, 3), mode="inference", backbone="resnet18",
    ...                         backbone_options=dict(blocks=(1, 1, 1, 1), width=8), fpn_width=16,
    ...                         box_fc_width=32, mask_width=16, max_detections=5)
    >>> out = model(np.zeros((1, 64, 64, 3), "float32"))
    >>> sorted(out), tuple(out["masks"].shape)
    (['boxes', 'classes', 'masks', 'scores'], (1, 5, 28, 28))
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import keras

from keras_seg.detection.fpn import FPN_INPUT_LEVELS, fpn
from keras_seg.detection.heads import MultiLevelRoiAlign, SelectClassMasks, box_head, mask_head, rpn_head
from keras_seg.detection.layers import (
    BoxHeadLosses,
    Detections,
    ForegroundRois,
    MaskLoss,
    PasteMasks,
    Proposals,
    RoiSampler,
    RpnLosses,
)
from keras_seg.models.backbones import get_backbone
from keras_seg.models.blocks import check_common_args, check_positive_ints

__all__ = ["LOSS_NAMES", "build_mask_rcnn", "inference_model_from", "transfer_weights"]

#: Keys of the train-mode output dict, one scalar loss each.
LOSS_NAMES = ("rpn_objectness", "rpn_box", "classification", "box", "mask")
_LEVELS = (2, 3, 4, 5, 6)  # P2..P6 for the RPN; the heads pool from P2..P5
_MODES = ("train", "inference")


def _check_pair(arg: str, value) -> None:
    """Raises ValueError unless ``value`` is a (train, inference) pair of positive ints."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{arg} must be a (train, inference) pair of ints. Received: {arg}={value!r}")
    check_positive_ints(**{arg: value[0]})
    check_positive_ints(**{arg: value[1]})


def _check_options(o: Dict) -> None:
    """Validates :func:`build_mask_rcnn`'s arguments; ValueError naming the first bad one."""
    check_common_args(o["num_classes"], o["input_shape"])
    if o["input_shape"][0] is None or o["input_shape"][1] is None:
        raise ValueError("Mask R-CNN needs a static input height and width (its anchors are constants); "
                         f"pad or resize images to one size. Received: input_shape={o['input_shape']!r}")
    if o["mode"] not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}. Received: mode={o['mode']!r}")
    check_positive_ints(**{k: o[k] for k in ("fpn_width", "box_fc_width", "mask_width", "mask_num_convs",
                                              "max_instances", "max_detections", "rpn_batch_per_image",
                                              "roi_batch_per_image")})
    _check_pair("rpn_pre_nms_topk", o["rpn_pre_nms_topk"])
    _check_pair("rpn_post_nms_topk", o["rpn_post_nms_topk"])
    if len(o["anchor_sizes"]) != len(_LEVELS):
        raise ValueError(
            f"anchor_sizes needs one size per level {_LEVELS}. Received: anchor_sizes={o['anchor_sizes']!r}")
    if int(o["roi_batch_per_image"] * o["roi_fg_fraction"]) < 1:
        raise ValueError("roi_batch_per_image * roi_fg_fraction must allow at least one foreground RoI. "
                         f"Received: roi_fg_fraction={o['roi_fg_fraction']!r}")


def _pyramid(image, o: Dict) -> Dict[int, "keras.KerasTensor"]:
    """Backbone features, then the FPN: ``{level: P_level}`` for levels 2..6."""
    entry = get_backbone(o["backbone"], family="resnet")
    options = dict(o["backbone_options"] or {})
    entry.check(**options, weights=o["backbone_weights"])
    features = entry.features(image, **options)
    return fpn(features, width=o["fpn_width"], name="fpn")


def _roi_features(pyramid, rois, output_size: int, name: str):
    """Multi-level RoIAlign of ``rois`` on P2..P5."""
    maps = [pyramid[level] for level in FPN_INPUT_LEVELS]
    return MultiLevelRoiAlign(output_size, 2, min(FPN_INPUT_LEVELS), max(FPN_INPUT_LEVELS), name=name)(maps, rois)


def _box_branch(pyramid, rois, o: Dict):
    """7x7 RoIAlign and the box head: ``(class_logits, deltas)``."""
    features = _roi_features(pyramid, rois, 7, "box_head_roi_align")
    return box_head(features, o["num_classes"], fc_width=o["box_fc_width"], name="box_head")


def _mask_branch(pyramid, rois, o: Dict):
    """14x14 RoIAlign and the mask head: ``[B, R, 28, 28, K]`` logits."""
    features = _roi_features(pyramid, rois, 14, "mask_head_roi_align")
    return mask_head(features, o["num_classes"], width=o["mask_width"], num_convs=o["mask_num_convs"],
                     name="mask_head")


def _anchor_config(o: Dict) -> Dict:
    """Keyword arguments that let a layer rebuild the anchors."""
    return dict(image_size=tuple(o["input_shape"][:2]), levels=_LEVELS, anchor_sizes=tuple(o["anchor_sizes"]),
                aspect_ratios=tuple(o["aspect_ratios"]))


def _proposals(objectness, deltas, o: Dict, phase: int):
    """RPN proposals with the train (``phase=0``) or inference (``phase=1``) top-k sizes."""
    layer = Proposals(**_anchor_config(o), pre_nms_topk=o["rpn_pre_nms_topk"][phase],
                      post_nms_topk=o["rpn_post_nms_topk"][phase], nms_iou=o["rpn_nms_iou"], name="rpn_proposals")
    return layer(objectness, deltas)[0]


def _train_graph(o: Dict):
    """Inputs and loss outputs of the train model."""
    height, width = o["input_shape"][:2]
    m = o["max_instances"]
    inputs = {
        "image": keras.Input(tuple(o["input_shape"]), name="image"),
        "gt_boxes": keras.Input((m, 4), name="gt_boxes"),
        "gt_classes": keras.Input((m,), dtype="int32", name="gt_classes"),
        "gt_masks": keras.Input((m, height, width), dtype="uint8", name="gt_masks"),
    }
    gt = (inputs["gt_boxes"], inputs["gt_classes"])
    pyramid = _pyramid(inputs["image"], o)
    objectness, deltas = rpn_head(pyramid, len(o["aspect_ratios"]), name="rpn")
    rpn_losses = RpnLosses(**_anchor_config(o), batch_per_image=o["rpn_batch_per_image"], seed=o["seed"],
                         name="rpn_loss")(objectness, deltas, *gt)
    proposals = _proposals(objectness, deltas, o, phase=0)
    rois, classes, box_targets, matched = RoiSampler(
        o["roi_batch_per_image"], o["roi_fg_fraction"], seed=o["seed"] + 1, name="roi_sampling")(proposals, *gt)
    class_logits, box_deltas = _box_branch(pyramid, rois, o)
    head_losses = BoxHeadLosses(name="box_head_loss")(class_logits, box_deltas, classes, box_targets)
    fg_count = int(o["roi_batch_per_image"] * o["roi_fg_fraction"])
    fg_rois, fg_classes, fg_matched = ForegroundRois(fg_count, name="mask_head_foreground")(rois, classes, matched)
    mask_logits = _mask_branch(pyramid, fg_rois, o)
    mask = MaskLoss(name="mask_head_loss")(mask_logits, inputs["gt_masks"], fg_rois, fg_classes, fg_matched)
    return inputs, dict(zip(LOSS_NAMES, (*rpn_losses, *head_losses, mask)))


def _inference_graph(o: Dict):
    """Input and detection outputs of the inference model."""
    image = keras.Input(tuple(o["input_shape"]), name="image")
    pyramid = _pyramid(image, o)
    objectness, deltas = rpn_head(pyramid, len(o["aspect_ratios"]), name="rpn")
    proposals = _proposals(objectness, deltas, o, phase=1)
    class_logits, box_deltas = _box_branch(pyramid, proposals, o)
    boxes, classes, scores = Detections(
        o["input_shape"][:2], score_threshold=o["score_threshold"], nms_iou=o["detection_nms_iou"],
        max_detections=o["max_detections"], name="box_head_detections")(class_logits, box_deltas, proposals)
    masks = SelectClassMasks(dtype="float32", name="mask_head_select")(_mask_branch(pyramid, boxes, o), classes)
    outputs = {"boxes": boxes, "classes": classes, "scores": scores, "masks": masks}
    if o["image_masks"]:
        outputs["image_masks"] = PasteMasks(o["input_shape"][:2], name="mask_head_paste")(masks, boxes)
    return image, outputs


def build_mask_rcnn(
    num_classes: int,
    input_shape=(None, None, 3),
    *,
    mode: str = "train",
    backbone: str = "resnet50",
    backbone_options: Optional[Dict] = None,
    backbone_weights=None,
    fpn_width: int = 256,
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_batch_per_image: int = 256,
    rpn_pre_nms_topk=(2000, 1000),
    rpn_post_nms_topk=(2000, 1000),
    rpn_nms_iou: float = 0.7,
    roi_batch_per_image: int = 512,
    roi_fg_fraction: float = 0.25,
    box_fc_width: int = 1024,
    mask_width: int = 256,
    mask_num_convs: int = 4,
    max_instances: int = 100,
    score_threshold: float = 0.05,
    detection_nms_iou: float = 0.5,
    max_detections: int = 100,
    image_masks: bool = False,
    seed: int = 0,
    name: str = "mask_rcnn",
) -> keras.Model:
    """Mask R-CNN (He et al., 2017, https://arxiv.org/abs/1703.06870) with a ResNet-FPN backbone.

    ResNet C2..C5 -> FPN P2..P6 (:func:`~keras_seg.detection.fpn.fpn`) -> shared RPN head on
    P2..P6 with one anchor size per level -> proposals (per-level NMS) -> 7x7 RoIAlign on
    P2..P5 and the 2fc box head -> 14x14 RoIAlign and the mask head (28x28 per-class masks).

    ``mode="train"``: inputs ``{"image": [B, H, W, 3], "gt_boxes": [B, M, 4] float32,
    "gt_classes": [B, M] int32 (1..K, -1 padding), "gt_masks": [B, M, H, W] uint8}``; outputs
    the dict of scalar losses :data:`LOSS_NAMES` (sum them to train; call the model with
    ``training=True``). Targets are sampled with stop-gradient and seeded generators
    (``seed`` for the RPN, ``seed + 1`` for the RoIs) that advance once per call. The mask
    head runs on the first ``int(roi_batch_per_image * roi_fg_fraction)`` sampled RoIs, which
    hold every foreground RoI.

    ``mode="inference"``: input ``image``; outputs ``boxes [B, D, 4]`` (image pixels,
    ``[y1, x1, y2, x2]``), ``classes [B, D]`` (1..K, -1 padding), ``scores [B, D]``, ``masks
    [B, D, 28, 28]`` (probabilities of the detected class's mask, in its box) and, with
    ``image_masks=True``, ``image_masks [B, D, H, W]`` (pasted probabilities; threshold at 0.5).

    Args:
      num_classes: ``K``, object classes without the background.
      input_shape: static ``(H, W, 3)``; anchors are built for this size.
      mode: ``"train"`` or ``"inference"``.
      backbone: a ResNet of the backbone registry (``"resnet50"``, ...).
      backbone_options: extra backbone keyword arguments, e.g. ``dict(blocks=(1, 1, 1, 1),
        width=8)`` for tests.
      backbone_weights: ``None``, ``"imagenet"`` or a path; see the backbone registry.
      fpn_width: channels of the pyramid and of the RPN convolution (256).
      anchor_sizes: anchor size of P2..P6.
      aspect_ratios: anchor ratios ``h / w``, ``A`` per location.
      rpn_batch_per_image: anchors sampled per image for the RPN losses.
      rpn_pre_nms_topk: (train, inference) candidates per level before NMS.
      rpn_post_nms_topk: (train, inference) proposals per image after NMS.
      rpn_nms_iou: NMS IoU of the proposals.
      roi_batch_per_image: ``S``, RoIs sampled per image for the heads.
      roi_fg_fraction: largest foreground fraction of the sampled RoIs.
      box_fc_width: width of the box head's two hidden layers (1024).
      mask_width: channels of the mask head (256).
      mask_num_convs: 3x3 convolutions of the mask head (4).
      max_instances: ``M``, ground-truth slots per image (train mode).
      score_threshold: smallest detection score (exclusive).
      detection_nms_iou: per-class NMS IoU of the detections.
      max_detections: ``D``, detections per image.
      image_masks: also output masks pasted into the full image (inference mode).
      seed: seed of the target sampling.
      name: model name.

    Returns:
      A functional ``keras.Model`` with dict outputs; ``model.mask_rcnn_options`` holds these
      arguments for :func:`inference_model_from`.

    Raises:
      ValueError: for a dynamic input size or any invalid argument (naming it).
    """
    options = {k: v for k, v in locals().items() if k != "name"}
    _check_options(options)
    inputs, outputs = _train_graph(options) if mode == "train" else _inference_graph(options)
    model = keras.Model(inputs, outputs, name=name)
    get_backbone(backbone, family="resnet").load_weights(model, backbone_weights)
    model.mask_rcnn_options = options
    return model


def transfer_weights(source: keras.Model, target: keras.Model) -> keras.Model:
    """Copies the weights of every weighted layer of ``target`` from the same-named layer of ``source``.

    Returns:
      ``target``.

    Raises:
      ValueError: if ``source`` lacks a layer or its weights have other shapes.
    """
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            values = source.get_layer(layer.name).get_weights()
        except ValueError as err:
            raise ValueError(
                f"Model {source.name!r} has no layer {layer.name!r}. Received: source={source.name!r}") from err
        shapes = [tuple(v.shape) for v in layer.get_weights()]
        if shapes != [tuple(v.shape) for v in values]:
            raise ValueError(f"Layer {layer.name!r} has weight shapes {shapes} in the target and "
                             f"{[v.shape for v in values]} in the source. Received: source={source.name!r}")
        layer.set_weights(values)
    return target


def inference_model_from(train_model: keras.Model, **overrides) -> keras.Model:
    """The inference model of a :func:`build_mask_rcnn` train model, sharing its current weights.

    Rebuilds the model with the train model's arguments and ``mode="inference"`` (overrides,
    e.g. ``input_shape``, ``score_threshold``, ``max_detections`` or ``image_masks``, apply
    on top; weights do not depend on the input size), then copies every weight by layer
    name with :func:`transfer_weights`.

    Raises:
      ValueError: if ``train_model`` was not built by :func:`build_mask_rcnn`.
    """
    options = getattr(train_model, "mask_rcnn_options", None)
    if options is None:
        raise ValueError("train_model must be a model returned by build_mask_rcnn. "
                         f"Received: train_model={getattr(train_model, 'name', train_model)!r}")
    name = overrides.pop("name", train_model.name)
    kwargs = {**dict(options), **overrides, "mode": "inference", "backbone_weights": None}
    return transfer_weights(train_model, build_mask_rcnn(**kwargs, name=name))
