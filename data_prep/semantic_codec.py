"""The semantic codec of :func:`data_prep.writer.write_dataset`: label PNG records, optional
weight maps, and the pixel statistics (class counts, weights) of the manifest."""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from data_prep.images import DataError, encode_png
from data_prep.writer import ConversionError, DatasetInfo, Item, Loaded


def _check_label(item: Item, loaded: Loaded, info: DatasetInfo) -> None:
    lab = loaded.label
    if lab.shape != (loaded.height, loaded.width):
        raise DataError(
            item.mask_path,
            f"mask size {lab.shape[1]}x{lab.shape[0]} (WxH) differs from its image "
            f"{item.image_path} at {loaded.width}x{loaded.height}.",
            "masks must be pixel-aligned with their images; re-export the mask at the image size.",
        )
    bad = (lab >= info.num_classes) & (lab != info.ignore_label)
    if bad.any():
        vals = sorted(int(v) for v in np.unique(lab[bad]))[:10]
        raise DataError(
            item.mask_path,
            f"mask values {vals} are outside [0, {info.num_classes}) and not the ignore label "
            f"{info.ignore_label}.",
            "check --num_classes / --ignore_label, or remap these values.",
        )
    if loaded.weight is not None:
        w = loaded.weight
        if w.shape != lab.shape or not np.all(np.isfinite(w)) or (w < 0).any():
            raise DataError(item.mask_path, "the computed weight map is not finite, non-negative and of the mask's size.")


class SemanticCodec:
    """Semantic records (a label PNG, optional weights) and their pixel statistics.

    :func:`write_dataset` drives any codec, an object with these methods (``info.codec()``
    returns one; it must be picklable): ``validate()``, ``new_stats()``,
    ``encode(item, loaded, stats) -> bytes`` (raises :class:`DataError`, updates ``stats`` only
    on success), ``split_manifest(stats_per_shard, written_per_shard) -> dict`` and
    ``manifest(splits) -> dict``. ``data_prep.instances.InstanceCodec`` is the other one.
    """

    def __init__(self, info: DatasetInfo):
        self.info = info

    def validate(self) -> None:
        self.info.validate()

    def new_stats(self) -> Dict[str, Any]:
        n = self.info.num_classes
        return {"counts": np.zeros(n, np.int64), "present": np.zeros(n, np.int64), "ignored": 0,
                "has_weights": None}

    def encode(self, item: Item, loaded: Loaded, stats: Dict[str, Any]) -> bytes:
        from keras_seg.data.features import make_example  # pylint: disable=import-outside-toplevel

        info = self.info
        _check_label(item, loaded, info)
        if stats["has_weights"] is None:
            stats["has_weights"] = loaded.weight is not None
        elif stats["has_weights"] != (loaded.weight is not None):
            raise DataError(item.mask_path, "some examples have weight maps and some do not.")
        n = info.num_classes
        hist = np.bincount(loaded.label.ravel(), minlength=256)
        c = hist[:n]
        stats["counts"] += c
        stats["present"] += np.where(c > 0, loaded.label.size, 0)
        stats["ignored"] += int(hist[info.ignore_label]) if info.ignore_label >= n else 0
        ex = make_example(
            image=loaded.image,
            image_format=loaded.image_format,
            height=loaded.height,
            width=loaded.width,
            label_png=encode_png(loaded.label),
            key=item.key,
            meta=item.meta,
            weight=loaded.weight,
        )
        return ex.SerializeToString(deterministic=True)  # sorted map keys: same bytes every run

    def split_manifest(self, stats: Sequence[Dict[str, Any]], written: Sequence[int]) -> Dict[str, Any]:
        flags = {bool(s["has_weights"]) for s in stats}
        if len(flags) != 1:
            raise ConversionError("some shards have weight maps and some do not.")
        return {
            "num_examples": int(sum(written)),
            "pixel_counts": [int(v) for v in sum(s["counts"] for s in stats)],
            "ignored_pixels": int(sum(s["ignored"] for s in stats)),
            "present_pixel_counts": [int(v) for v in sum(s["present"] for s in stats)],
            "has_weights": flags.pop(),
        }

    def manifest(self, splits: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
        from keras_seg.data.features import FORMAT_VERSION  # pylint: disable=import-outside-toplevel
        from keras_seg.data.manifest import enet_weights, median_frequency_weights  # pylint: disable=import-outside-toplevel

        info = self.info
        base = "train" if "train" in splits else next(iter(splits))
        b = splits[base]
        return {
            "format_version": FORMAT_VERSION,
            "dataset": info.name,
            "num_classes": info.num_classes,
            "class_names": list(info.class_names),
            "ignore_label": info.ignore_label,
            "palette": [list(map(int, c)) for c in info.palette],
            "splits": splits,
            "class_weights": {
                "computed_from": base,
                "median_frequency": [round(w, 6) for w in median_frequency_weights(b["pixel_counts"], b["present_pixel_counts"])],
                "enet": [round(w, 6) for w in enet_weights(b["pixel_counts"])],
            },
        }
