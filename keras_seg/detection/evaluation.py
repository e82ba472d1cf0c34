"""Box and mask AP of a Mask R-CNN over a dataset split, at each image's stored size.

The model sees every image resized (keeping its aspect ratio) and padded to its static
input size, as in training (:func:`keras_seg.detection.data.resize_and_pad`). Its detections
are mapped back to the image as stored: boxes divided by the resize factors
``(nh / h, nw / w)``, and each 28x28 mask pasted into its box on an ``h x w`` canvas with
:func:`keras_seg.detection.proposals.paste_masks` (Detectron2's bilinear paste at the original
resolution), then thresholded at 0.5. Ground truth is the record's own boxes and masks, at
the stored size (crowd regions left out: ``coco_eval`` has no crowd matching). AP, AP50 and
AP75 then come from pycocotools (:func:`keras_seg.detection.coco_eval.evaluate_instances`),
so the numbers are those of the dataset, not of the network's input resolution.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_seg.data import features as F
from keras_seg.data.manifest import load_manifest, split_files
from keras_seg.data.preprocess import normalize_image

__all__ = ["eval_dataset", "evaluate_detector", "ground_truth", "metrics_record", "prepare_image", "to_instances"]


def prepare_image(image, image_size: Sequence[int], preprocessing: str = "imagenet"):
    """``(model input float32 [H, W, 3], valid (nh, nw) int32 [2])`` of one uint8 RGB image.

    The image path of :func:`keras_seg.detection.data.resize_and_pad` and
    :func:`~keras_seg.data.preprocess.normalize_image`: what training fed the network.
    """
    from keras_seg.detection.data import resize_and_pad  # pylint: disable=import-outside-toplevel

    image = tf.convert_to_tensor(image)
    ex = resize_and_pad({"image": image, "masks": tf.zeros(tf.concat([[0], tf.shape(image)[:2]], 0), tf.uint8),
                         "boxes": tf.zeros([0, 4], tf.float32)}, tuple(image_size), preprocessing)
    return normalize_image(ex["image"], preprocessing), ex["image_hw"]


def eval_dataset(data_dir: str, split: str, image_size: Sequence[int], batch_size: int,
                 preprocessing: str = "imagenet", max_images: int = 0) -> tf.data.Dataset:
    """Batches of a split in file order, with the model input and the stored ground truth.

    Each batch is a dict: ``image`` float32 ``[B, H, W, 3]`` (model input), ``image_hw``
    int32 ``[B, 2]`` (its unpadded part), ``stored_hw`` int32 ``[B, 2]`` and, padded across
    the batch, ``gt_boxes`` ``[B, N, 4]``, ``gt_classes`` ``[B, N]`` (-1 padding) and
    ``gt_masks`` uint8 ``[B, N, h_max, w_max]`` at the stored size.

    Raises:
      ManifestError: not an instance dataset, unknown split or missing shards.
    """
    from keras_seg.detection.data import decode_instance_example, drop_crowd  # pylint: disable=import-outside-toplevel

    manifest = load_manifest(data_dir, task=F.TASK_INSTANCE)
    files = split_files(data_dir, manifest, split)
    ds = tf.data.Dataset.from_tensor_slices(files).flat_map(
        lambda path: tf.data.TFRecordDataset(path).map(lambda r: (path, r)))
    if max_images:
        ds = ds.take(max_images)

    def example(path, record):
        ex = drop_crowd(decode_instance_example(record, path))
        image, image_hw = prepare_image(ex["image"], image_size, preprocessing)
        return {"image": image, "image_hw": image_hw, "stored_hw": tf.shape(ex["image"])[:2],
                "gt_boxes": ex["boxes"], "gt_classes": ex["classes"], "gt_masks": ex["masks"]}

    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    pad = {"image": 0.0, "image_hw": 0, "stored_hw": 0, "gt_boxes": 0.0, "gt_classes": -1,
           "gt_masks": tf.constant(0, tf.uint8)}
    return ds.padded_batch(batch_size, padding_values=pad).prefetch(tf.data.AUTOTUNE)


def to_instances(outputs: Mapping[str, Any], image_hw, stored_hw, mask_threshold: Optional[float] = 0.5
                 ) -> List[Dict[str, np.ndarray]]:
    """Per-image detections at the stored image size: the conversion evaluation and predict share.

    Args:
      outputs: inference-model outputs for a batch: ``boxes [B, D, 4]`` in model-input
        pixels, ``classes [B, D]`` (-1 padding), ``scores [B, D]``, ``masks [B, D, Hm, Wm]``
        (probabilities of each detection's class, in its box).
      image_hw: ``[B, 2]`` the resized image's ``(nh, nw)`` inside the model input.
      stored_hw: ``[B, 2]`` the stored image's ``(h, w)``.
      mask_threshold: binarise the pasted masks at this probability (uint8 0/1); ``None``
        keeps float32 probabilities.

    Returns:
      One dict per image with the valid detections only: ``boxes`` float32 ``[N, 4]``
      ``[y1, x1, y2, x2]`` in stored pixels (clipped to the image), ``classes`` int32
      ``[N]``, ``scores`` float32 ``[N]`` and ``masks`` ``[N, h, w]``.
    """
    from keras_seg.detection.proposals import paste_masks  # pylint: disable=import-outside-toplevel

    boxes, classes = np.asarray(outputs["boxes"], np.float32), np.asarray(outputs["classes"])
    scores, masks = np.asarray(outputs["scores"], np.float32), np.asarray(outputs["masks"], np.float32)
    image_hw, stored_hw = np.asarray(image_hw), np.asarray(stored_hw)
    images = []
    for i in range(len(boxes)):
        (nh, nw), (h, w) = image_hw[i], stored_hw[i]
        keep = classes[i] > 0
        scale = np.array([nh / h, nw / w, nh / h, nw / w], np.float32)
        image_boxes = np.clip(boxes[i][keep] / scale, 0.0, np.array([h, w, h, w], np.float32))
        if keep.any():
            pasted = paste_masks(masks[i][keep][None], image_boxes[None], (int(h), int(w)), mask_threshold)[0].numpy()
        else:
            pasted = np.zeros((0, int(h), int(w)), np.float32)
        images.append({"boxes": image_boxes, "classes": classes[i][keep].astype(np.int32),
                       "scores": scores[i][keep],
                       "masks": pasted.astype(np.uint8) if mask_threshold is not None else pasted})
    return images


def ground_truth(batch: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The per-image ground truth of an :func:`eval_dataset` batch, cropped to each stored size."""
    out = []
    for i, (h, w) in enumerate(np.asarray(batch["stored_hw"])):
        keep = np.asarray(batch["gt_classes"][i]) > 0
        out.append({"height": int(h), "width": int(w), "boxes": np.asarray(batch["gt_boxes"][i])[keep],
                    "classes": np.asarray(batch["gt_classes"][i])[keep],
                    "masks": np.asarray(batch["gt_masks"][i])[keep][:, :h, :w]})
    return out


def evaluate_detector(model, dataset: tf.data.Dataset, class_names: Sequence[str],
                      log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Box and mask AP of an inference model over an :func:`eval_dataset`.

    Returns:
      ``{"bbox": {"AP", "AP50", "AP75"}, "segm": {...}, "num_images": n}`` (AP in [0, 1];
      NaN when the split has no object at all).
    """
    from keras_seg.detection.coco_eval import evaluate_instances  # pylint: disable=import-outside-toplevel

    forward = tf.function(lambda images: model(images, training=False))
    truth, predictions = [], []
    start = time.time()
    for batch in dataset:
        out = forward(batch["image"])
        predictions += to_instances(out, batch["image_hw"], batch["stored_hw"])
        truth += ground_truth(batch)
    metrics: Dict[str, Any] = dict(evaluate_instances(truth, predictions, class_names))
    metrics["num_images"] = len(truth)
    if log:
        log(f"evaluated {len(truth)} images in {time.time() - start:.1f}s")
    return metrics


def metrics_record(metrics: Mapping[str, Any], step: int, split: str, checkpoint: str = "") -> Dict[str, Any]:
    """The JSON written to ``eval/metrics-<step>.json``."""
    def clean(v):
        return None if v != v else round(float(v), 6)  # NaN -> null: JSON has no NaN

    return {"step": int(step), "split": split, "checkpoint": checkpoint, "num_images": int(metrics["num_images"]),
            "evaluated_at": "stored image size (detections mapped back from the model input)",
            **{t: {k: clean(v) for k, v in metrics[t].items()} for t in ("bbox", "segm")}}


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """One line: box and mask AP, AP50, AP75."""
    return "  ".join(f"{name} AP {metrics[t]['AP']:.4f} AP50 {metrics[t]['AP50']:.4f} AP75 {metrics[t]['AP75']:.4f}"
                     for t, name in (("bbox", "box"), ("segm", "mask")))
