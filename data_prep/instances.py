"""Instance-segmentation records: the dataset info, the record codec and mask helpers.

The converters (:mod:`data_prep.coco`, :mod:`data_prep.cityscapes_instances`,
:mod:`data_prep.voc_instances`, :mod:`data_prep.shapes_instances`) return
``Loaded(..., instances=Instances(classes, masks, is_crowd))`` from their ``load`` functions
and hand an :class:`InstanceInfo` to :func:`data_prep.writer.write_dataset`, which then
shards, parallelises and atomically installs the dataset exactly as for semantic data.
:class:`InstanceCodec` checks each image's instances, derives every box from its mask and
writes the record layout of :func:`keras_seg.data.features.make_instance_example`; the
manifest gets ``"task": "instance"`` and per-split instance statistics
(:mod:`keras_seg.data.manifest`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence

import numpy as np

from data_prep.images import DataError, encode_png
from data_prep.writer import ConversionError, Instances, Item, Loaded, default_palette

__all__ = ["InstanceInfo", "InstanceCodec", "Instances", "mask_boxes", "no_instances"]


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of ``(N, H, W)`` masks: float32 ``(N, 4)`` ``[min_row, min_col, max_row + 1, max_col + 1]``.

    Raises:
      ValueError: if a mask is empty (it has no box).
    """
    masks = np.asarray(masks).astype(bool)
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if not len(rows):
            raise ValueError(f"mask {i} is empty; an empty mask has no box.")
        boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return boxes


def no_instances(height: int, width: int) -> Instances:
    """An image without objects."""
    return Instances(classes=np.zeros(0, np.int64), masks=np.zeros((0, height, width), np.uint8),
                     is_crowd=np.zeros(0, np.int64))


@dataclasses.dataclass(frozen=True)
class InstanceInfo:
    """Dataset-level facts of an instance dataset.

    Attributes:
      name: dataset name recorded in the manifest.
      class_names: names of the object classes ``1..K`` (the background is not listed).
      palette: one RGB triple per class ``1..K``.
      extra: more top-level manifest fields (e.g. ``{"category_ids": [...]}``).
    """

    name: str
    class_names: Sequence[str]
    palette: Sequence[Sequence[int]] = ()
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def validate(self) -> None:
        """Raises ValueError on no classes or a palette that is not ``K`` RGB triples."""
        if not self.class_names:
            raise ValueError(f"an instance dataset needs at least one class. Received: class_names={list(self.class_names)}")
        if len(self.palette) != self.num_classes or any(
            len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in self.palette
        ):
            raise ValueError(f"palette must hold {self.num_classes} RGB triples in 0..255, one per class 1..K. "
                             f"Received: {len(self.palette)} entries")

    def codec(self) -> "InstanceCodec":
        """How :func:`data_prep.writer.write_dataset` encodes and counts this dataset."""
        return InstanceCodec(self)

    @staticmethod
    def default_palette(num_classes: int) -> List[List[int]]:
        """VOC's colour map without its background entry: colours of classes ``1..K``."""
        return default_palette(num_classes + 1)[1:]


class InstanceCodec:
    """Checks one image's :class:`Instances` and encodes its record (the writer's codec protocol).

    Instances whose mask is empty are dropped and counted (``empty_masks_dropped``): a
    polygon smaller than a pixel rasterises to nothing and has no box.
    """

    def __init__(self, info: InstanceInfo):
        self.info = info

    def validate(self) -> None:
        self.info.validate()

    def new_stats(self) -> Dict[str, Any]:
        k = self.info.num_classes
        return {"instances": np.zeros(k, np.int64), "crowd": np.zeros(k, np.int64), "max_instances": 0,
                "max_objects": 0, "empty_images": 0, "empty_masks_dropped": 0}

    def _checked(self, item: Item, loaded: Loaded):
        inst = loaded.instances
        where = item.mask_path or item.image_path
        if inst is None:
            raise DataError(where, "the converter returned no instances (Loaded.instances is None).")
        classes = np.asarray(inst.classes).reshape(-1)
        crowd = np.asarray(inst.is_crowd).reshape(-1)
        masks = np.asarray(inst.masks)
        n = len(classes)
        if masks.shape != (n, loaded.height, loaded.width) or len(crowd) != n:
            raise DataError(where, f"{n} instance classes, {len(crowd)} is_crowd flags and masks shaped "
                            f"{masks.shape}; ({n}, {loaded.height}, {loaded.width}) masks of the image size "
                            f"{loaded.width}x{loaded.height} (WxH) were expected.")
        k = self.info.num_classes
        bad = [int(c) for c in classes if not 1 <= int(c) <= k]
        if bad:
            raise DataError(where, f"instance classes {sorted(set(bad))[:10]} are outside 1..{k} "
                            f"({k} classes; 0 is the background).", "check the class mapping.")
        if not np.isin(crowd, (0, 1)).all():
            raise DataError(where, f"is_crowd values {sorted(set(crowd.tolist()))} are not 0/1.")
        if masks.dtype != bool and masks.size and not np.isin(np.unique(masks), (0, 1)).all():
            raise DataError(where, f"instance masks hold values {np.unique(masks)[:10].tolist()}; 0/1 expected.")
        masks = masks.astype(np.uint8)
        keep = masks.reshape(n, -1).any(axis=1) if n else np.zeros(0, bool)
        return classes[keep].astype(np.int64), masks[keep], crowd[keep].astype(np.int64), int(n - keep.sum())

    def encode(self, item: Item, loaded: Loaded, stats: Dict[str, Any]) -> bytes:
        from keras_seg.data.features import make_instance_example  # pylint: disable=import-outside-toplevel

        classes, masks, crowd, dropped = self._checked(item, loaded)
        ex = make_instance_example(
            image=loaded.image, image_format=loaded.image_format, height=loaded.height, width=loaded.width,
            key=item.key, meta=item.meta, classes=classes, mask_pngs=[encode_png(m) for m in masks],
            boxes=mask_boxes(masks), is_crowd=crowd,
        )
        k = self.info.num_classes
        stats["instances"] += np.bincount(classes[crowd == 0] - 1, minlength=k)[:k]
        stats["crowd"] += np.bincount(classes[crowd == 1] - 1, minlength=k)[:k]
        stats["max_instances"] = max(stats["max_instances"], len(classes))
        stats["max_objects"] = max(stats["max_objects"], int((crowd == 0).sum()))
        stats["empty_images"] += int(len(classes) == 0)
        stats["empty_masks_dropped"] += dropped
        return ex.SerializeToString(deterministic=True)

    def split_manifest(self, stats: Sequence[Dict[str, Any]], written: Sequence[int]) -> Dict[str, Any]:
        instances = sum(s["instances"] for s in stats)
        crowd = sum(s["crowd"] for s in stats)
        return {
            "num_examples": int(sum(written)),
            "file_records": [int(w) for w in written],
            "num_instances": int(instances.sum() + crowd.sum()),
            "num_crowd": int(crowd.sum()),
            "instance_counts": [int(v) for v in instances],
            "crowd_counts": [int(v) for v in crowd],
            "max_instances": max(s["max_instances"] for s in stats),
            "max_objects": max(s["max_objects"] for s in stats),
            "images_without_instances": int(sum(s["empty_images"] for s in stats)),
            "empty_masks_dropped": int(sum(s["empty_masks_dropped"] for s in stats)),
        }

    def manifest(self, splits: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
        from keras_seg.data.features import FORMAT_VERSION, TASK_INSTANCE  # pylint: disable=import-outside-toplevel

        info = self.info
        if any(s["num_examples"] != sum(s["file_records"]) for s in splits.values()):
            raise ConversionError("record counts per file do not add up.")  # defensive: a writer bug
        return {
            "format_version": FORMAT_VERSION,
            "task": TASK_INSTANCE,
            "dataset": info.name,
            "num_classes": info.num_classes,
            "class_names": list(info.class_names),
            "palette": [list(map(int, c)) for c in info.palette],
            **info.extra,
            "max_instances": max(s["max_instances"] for s in splits.values()),
            "splits": splits,
        }


def summary(manifest: Dict[str, Any]) -> str:
    """One line per split: images, instances, crowd regions and the most instances per image."""
    lines = []
    for name, s in manifest["splits"].items():
        line = (f"  {name}: {s['num_examples']} images, {s['num_instances']} instances "
                f"({s['num_crowd']} crowd), at most {s['max_instances']} per image")
        if s.get("empty_masks_dropped"):
            line += f"; {s['empty_masks_dropped']} empty mask(s) dropped"
        lines.append(line)
    return "\n".join(lines)
