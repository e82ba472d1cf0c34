"""``manifest.json``: what a converted dataset holds, written by ``data_prep``.

Schema (``format_version`` 1)::

    {
      "format_version": 1,
      "dataset": "camvid",
      "num_classes": 11,
      "class_names": ["Sky", ...],
      "ignore_label": 11,
      "palette": [[128, 128, 128], ...],          # one RGB triple per class
      "splits": {
        "train": {
          "num_examples": 367,
          "files": ["train-00000-of-00004.tfrecord", ...],
          "pixel_counts": [...],                   # per class, ignore label excluded
          "ignored_pixels": 2503995,
          "present_pixel_counts": [...],           # per class: pixels of images where it occurs
          "has_weights": false
        }, ...
      },
      "class_weights": {"computed_from": "train", "median_frequency": [...], "enet": [...]}
    }

Instance datasets (``data_prep.instances``) add ``"task": "instance"``; their ``class_names``
and ``palette`` describe the object classes ``1..K`` (``num_classes`` is ``K``), there is no
``ignore_label`` or ``class_weights``, and each split records instance statistics::

    {
      "format_version": 1, "task": "instance", "dataset": "coco", "num_classes": 80,
      "class_names": ["person", ...], "palette": [[...], ...],
      "category_ids": [1, 2, ...],                 # optional: the source ids of classes 1..K
      "max_instances": 93,                          # most instances (crowd included) of any image
      "splits": {
        "val": {
          "num_examples": 5000, "files": [...], "file_records": [...],   # records per file
          "num_instances": 36781, "num_crowd": 446,
          "instance_counts": [...],                 # per class 1..K, crowd excluded
          "crowd_counts": [...],                    # per class 1..K
          "max_instances": 93, "max_objects": 63,   # most instances / non-crowd instances per image
          "images_without_instances": 48
        }
      }
    }
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

from keras_seg.data.features import FORMAT_VERSION, MANIFEST, TASK_INSTANCE, TASK_SEMANTIC

__all__ = [
    "load_manifest",
    "median_frequency_weights",
    "enet_weights",
    "split_files",
    "class_weights_from_manifest",
    "ManifestError",
]


class ManifestError(ValueError):
    """A manifest is missing, unreadable or inconsistent."""


def median_frequency_weights(
    pixel_counts: Sequence[int], present_pixel_counts: Sequence[int]
) -> List[float]:
    """SegNet's median-frequency balancing (Eigen and Fergus 2015).

    ``freq(c) = pixels of c / pixels of the images where c occurs`` and
    ``w(c) = median(freq) / freq(c)``. Classes that never occur get weight 0.
    """
    freqs = [
        n / p if p > 0 and n > 0 else None for n, p in zip(pixel_counts, present_pixel_counts)
    ]
    seen = sorted(f for f in freqs if f is not None)
    if not seen:
        return [0.0] * len(freqs)
    k = len(seen)
    median = seen[k // 2] if k % 2 else 0.5 * (seen[k // 2 - 1] + seen[k // 2])
    return [median / f if f is not None else 0.0 for f in freqs]


def enet_weights(pixel_counts: Sequence[int], c: float = 1.02) -> List[float]:
    """ENet's class weights ``1 / ln(c + p_class)`` (Paszke et al. 2016), c = 1.02."""
    total = float(sum(pixel_counts))
    if total <= 0:
        return [0.0] * len(pixel_counts)
    return [1.0 / math.log(c + n / total) for n in pixel_counts]


def load_manifest(data_dir: str, task: str = TASK_SEMANTIC) -> Dict:
    """Reads and validates ``data_dir/manifest.json``.

    Args:
      data_dir: directory of a converted dataset.
      task: the kind of dataset expected, ``"semantic"`` or ``"instance"``.

    Raises:
      ManifestError: naming the file and the problem, with the command that fixes it; also when
        the dataset is of another task than ``task``.
    """
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        raise ManifestError(
            f"No {MANIFEST} in data_dir={data_dir!r}. Convert a dataset first, e.g. "
            "`python -m data_prep.folder --images DIR --masks DIR --out DIR`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"Cannot read {path}: {e}") from e
    if m.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version={m.get('format_version')!r}, this keras_seg reads "
            f"{FORMAT_VERSION}. Re-run the data_prep converter."
        )
    found = m.get("task", TASK_SEMANTIC)
    if found != task:
        reader = ("keras_seg.detection.data.make_instance_dataset" if found == TASK_INSTANCE
                  else "keras_seg.data.pipeline.make_dataset")
        raise ManifestError(f"{path}: this is a {found!r} dataset, but a {task!r} one was expected; read it "
                            f"with {reader}.")
    required = ("num_classes", "class_names", "palette", "splits")
    if task == TASK_SEMANTIC:
        required += ("ignore_label",)
    for key in required:
        if key not in m:
            raise ManifestError(f"{path}: missing key {key!r}. Re-run the data_prep converter.")
    n = m["num_classes"]
    if len(m["class_names"]) != n or len(m["palette"]) != n:
        raise ManifestError(
            f"{path}: num_classes={n} but {len(m['class_names'])} class_names and "
            f"{len(m['palette'])} palette entries."
        )
    return m


def split_files(data_dir: str, manifest: Dict, split: str) -> List[str]:
    """Absolute shard paths of ``split``; raises ManifestError for an unknown split."""
    splits = manifest["splits"]
    if split not in splits:
        raise ManifestError(
            f"Split {split!r} is not in {os.path.join(data_dir, MANIFEST)}; it has {sorted(splits)}."
        )
    files = [os.path.join(data_dir, f) for f in splits[split]["files"]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ManifestError(f"Shards listed in the manifest are missing: {missing[:5]}")
    return files


def class_weights_from_manifest(manifest: Dict, kind: Optional[str]) -> Optional[List[float]]:
    """Returns the manifest's suggested weights of ``kind`` (None/'none' gives None)."""
    if kind in (None, "", "none"):
        return None
    weights = manifest.get("class_weights", {})
    if kind not in weights:
        raise ManifestError(
            f"class_weights={kind!r} is not in the manifest; it has "
            f"{sorted(k for k in weights if k != 'computed_from')}."
        )
    return list(weights[kind])
