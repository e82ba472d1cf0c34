"""Keras layers around Mask R-CNN's TensorFlow functions: proposals, targets, losses, outputs.

Each layer is a thin, registered wrapper with ``get_config`` around a pure function of
:mod:`~keras_seg.detection.proposals`, :mod:`~keras_seg.detection.targets`,
:mod:`~keras_seg.detection.roi_align` or :mod:`~keras_seg.detection.losses`, so that
:func:`~keras_seg.detection.model.build_mask_rcnn` stays a functional model. Anchors are
constants rebuilt from the static image size. The sampling layers own a
``keras.random.SeedGenerator``: its state is ``[seed, step]`` and advances once per call, so
a run from the same initial weights and seed samples the same anchors and RoIs.
He et al., 2017: https://arxiv.org/abs/1703.06870.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import keras
import tensorflow as tf

from keras_seg.detection.boxes import concat_anchors, fpn_anchors
from keras_seg.detection.losses import box_head_loss, classification_loss, mask_loss, rpn_box_loss, rpn_objectness_loss
from keras_seg.detection.proposals import detect, generate_proposals, paste_masks
from keras_seg.detection.roi_align import crop_mask_targets
from keras_seg.detection.targets import roi_targets, rpn_targets

__all__ = [
    "BoxHeadLosses",
    "Detections",
    "ForegroundRois",
    "MaskLoss",
    "PasteMasks",
    "Proposals",
    "RoiSampler",
    "RpnLosses",
]


def _anchors(image_size, levels, sizes, aspect_ratios) -> Tuple[tf.Tensor, Tuple[int, ...]]:
    """Concatenated FPN anchors ``[N, 4]`` and the anchor count of each level."""
    by_level = fpn_anchors(tuple(image_size), tuple(levels), tuple(sizes), tuple(aspect_ratios))
    return concat_anchors(by_level), tuple(int(by_level[level].shape[0]) for level in sorted(by_level))


def _next_seed(generator: keras.random.SeedGenerator) -> tf.Tensor:
    """The generator's next ``[2]`` seed as int32, for ``tf.random.stateless_*``."""
    return tf.cast(tf.math.floormod(tf.cast(generator.next(), tf.int64), 2**31 - 1), tf.int32)


class _AnchorConfig(keras.layers.Layer):
    """Base of the layers that rebuild the FPN anchors of a static image size."""

    def __init__(self, image_size: Sequence[int], levels: Sequence[int] = (2, 3, 4, 5, 6),
                 anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size)
        self.levels, self.anchor_sizes = tuple(levels), tuple(anchor_sizes)
        self.aspect_ratios = tuple(aspect_ratios)
        _anchors(self.image_size, self.levels, self.anchor_sizes, self.aspect_ratios)  # validates

    def anchors(self) -> Tuple[tf.Tensor, Tuple[int, ...]]:
        return _anchors(self.image_size, self.levels, self.anchor_sizes, self.aspect_ratios)

    def get_config(self):
        return {**super().get_config(), "image_size": list(self.image_size), "levels": list(self.levels),
                "anchor_sizes": list(self.anchor_sizes), "aspect_ratios": list(self.aspect_ratios)}


@keras.saving.register_keras_serializable(package="keras_seg")
class Proposals(_AnchorConfig):
    """:func:`~keras_seg.detection.proposals.generate_proposals` on the FPN anchors.

    Called as ``layer(objectness [B, N], deltas [B, N, 4])``; returns ``(proposals [B, P, 4],
    scores [B, P])``. Arguments beyond the anchor configuration are those of
    ``generate_proposals``.
    """

    def __init__(self, image_size, *, pre_nms_topk: int = 1000, post_nms_topk: int = 1000, nms_iou: float = 0.7,
                 min_size: float = 0.0, **kwargs):
        super().__init__(image_size, **kwargs)
        self.pre_nms_topk, self.post_nms_topk = int(pre_nms_topk), int(post_nms_topk)
        self.nms_iou, self.min_size = float(nms_iou), float(min_size)

    def call(self, objectness, deltas):
        anchors, counts = self.anchors()
        return generate_proposals(
            objectness, deltas, anchors, self.image_size, level_counts=counts,
            pre_nms_topk_per_level=self.pre_nms_topk, post_nms_topk=self.post_nms_topk, nms_iou=self.nms_iou,
            min_size=self.min_size)

    def get_config(self):
        return {**super().get_config(), "pre_nms_topk": self.pre_nms_topk, "post_nms_topk": self.post_nms_topk,
                "nms_iou": self.nms_iou, "min_size": self.min_size}


@keras.saving.register_keras_serializable(package="keras_seg")
class RpnLosses(_AnchorConfig):
    """RPN targets (:func:`~keras_seg.detection.targets.rpn_targets`) and both RPN losses.

    Called as ``layer(objectness, deltas, gt_boxes, gt_classes)``; returns the scalars
    ``(objectness_loss, box_loss)``. Sampling options are those of ``rpn_targets``.
    """

    def __init__(self, image_size, *, batch_per_image: int = 256, positive_fraction: float = 0.5,
                 positive_iou: float = 0.7, negative_iou: float = 0.3, seed: int = 0, **kwargs):
        super().__init__(image_size, **kwargs)
        self.batch_per_image, self.positive_fraction = int(batch_per_image), float(positive_fraction)
        self.positive_iou, self.negative_iou, self.seed = float(positive_iou), float(negative_iou), int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name=f"{self.name}_seed")

    def call(self, objectness, deltas, gt_boxes, gt_classes):
        anchors, _ = self.anchors()
        labels, targets = rpn_targets(
            anchors, gt_boxes, gt_classes, positive_iou=self.positive_iou, negative_iou=self.negative_iou,
            batch_per_image=self.batch_per_image, positive_fraction=self.positive_fraction,
            seed=_next_seed(self.seed_generator))
        return rpn_objectness_loss(objectness, labels), rpn_box_loss(deltas, targets, labels)

    def get_config(self):
        return {**super().get_config(), "batch_per_image": self.batch_per_image,
                "positive_fraction": self.positive_fraction, "positive_iou": self.positive_iou,
                "negative_iou": self.negative_iou, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_seg")
class RoiSampler(keras.layers.Layer):
    """Samples the head RoIs and their targets: :func:`~keras_seg.detection.targets.roi_targets`.

    Called as ``layer(proposals, gt_boxes, gt_classes)``; returns ``(rois [B, S, 4], classes
    [B, S], box_targets [B, S, 4], matched_gt [B, S])`` with foreground first in each row.
    """

    def __init__(self, batch_per_image: int = 512, fg_fraction: float = 0.25, fg_iou: float = 0.5,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.batch_per_image, self.fg_fraction = int(batch_per_image), float(fg_fraction)
        self.fg_iou, self.seed = float(fg_iou), int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name=f"{self.name}_seed")

    def call(self, proposals, gt_boxes, gt_classes):
        return roi_targets(
            proposals, gt_boxes, gt_classes, fg_iou=self.fg_iou, bg_iou_high=self.fg_iou,
            batch_per_image=self.batch_per_image, fg_fraction=self.fg_fraction,
            seed=_next_seed(self.seed_generator))

    def get_config(self):
        return {**super().get_config(), "batch_per_image": self.batch_per_image, "fg_fraction": self.fg_fraction,
                "fg_iou": self.fg_iou, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_seg")
class BoxHeadLosses(keras.layers.Layer):
    """Box-head classification and box losses; ``layer(class_logits, deltas, classes, box_targets)``."""

    def call(self, class_logits, deltas, classes, box_targets):
        return classification_loss(class_logits, classes), box_head_loss(deltas, box_targets, classes)


@keras.saving.register_keras_serializable(package="keras_seg")
class ForegroundRois(keras.layers.Layer):
    """The first ``count`` RoIs of each row (where :class:`RoiSampler` puts the foreground).

    Called as ``layer(rois, classes, matched_gt)``; returns the three sliced to ``[B, count]``.
    Taking ``count = int(batch_per_image * fg_fraction)`` keeps every foreground RoI, so the
    mask head runs on the foreground only, as in Mask R-CNN's training.
    """

    def __init__(self, count: int, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)

    def call(self, rois, classes, matched_gt):
        return rois[:, :self.count], classes[:, :self.count], matched_gt[:, :self.count]

    def get_config(self):
        return {**super().get_config(), "count": self.count}


@keras.saving.register_keras_serializable(package="keras_seg")
class MaskLoss(keras.layers.Layer):
    """Mask targets (:func:`~keras_seg.detection.roi_align.crop_mask_targets`) and L_mask.

    Called as ``layer(mask_logits [B, F, Hm, Wm, K], gt_masks, rois, classes, matched_gt)``;
    returns the scalar mask loss over the foreground RoIs.
    """

    def call(self, mask_logits, gt_masks, rois, classes, matched_gt):
        matched = tf.where(classes > 0, tf.cast(matched_gt, tf.int32), -1)
        targets = crop_mask_targets(gt_masks, rois, matched, mask_size=mask_logits.shape[2])
        return mask_loss(mask_logits, targets, classes)


@keras.saving.register_keras_serializable(package="keras_seg")
class Detections(keras.layers.Layer):
    """:func:`~keras_seg.detection.proposals.detect`; ``layer(class_logits, deltas, rois)``.

    Returns ``(boxes [B, D, 4], classes [B, D], scores [B, D])``.
    """

    def __init__(self, image_size: Sequence[int], *, score_threshold: float = 0.05, nms_iou: float = 0.5,
                 max_detections: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size)
        self.score_threshold, self.nms_iou = float(score_threshold), float(nms_iou)
        self.max_detections = int(max_detections)

    def call(self, class_logits, deltas, rois):
        return detect(class_logits, deltas, rois, self.image_size, score_threshold=self.score_threshold,
                      nms_iou=self.nms_iou, max_detections=self.max_detections)

    def get_config(self):
        return {**super().get_config(), "image_size": list(self.image_size),
                "score_threshold": self.score_threshold, "nms_iou": self.nms_iou,
                "max_detections": self.max_detections}


@keras.saving.register_keras_serializable(package="keras_seg")
class PasteMasks(keras.layers.Layer):
    """:func:`~keras_seg.detection.proposals.paste_masks`; ``layer(masks [B, D, Hm, Wm], boxes)``."""

    def __init__(self, image_size: Sequence[int], threshold=None, **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size)
        self.threshold = None if threshold is None else float(threshold)

    def call(self, masks, boxes):
        return paste_masks(masks, boxes, self.image_size, self.threshold)

    def compute_output_shape(self, masks_shape, boxes_shape):
        return tuple(masks_shape[:2]) + self.image_size

    def get_config(self):
        return {**super().get_config(), "image_size": list(self.image_size), "threshold": self.threshold}
