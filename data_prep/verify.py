r"""Re-reads a converted dataset and checks every record of every split.

Usage::

    python -m data_prep.verify DIR [--splits=train,val] [--max_shown=20]

For each shard listed in ``DIR/manifest.json`` it checks:

* the TFRecord framing and CRCs (``tf.data.TFRecordDataset`` raises ``DataLossError``);
* that the record parses with :func:`keras_seg.data.features.parse_spec`;
* that the image and the label PNG decode, that their sizes agree with each other and with
  ``image/height`` and ``image/width``, and that the label has one channel;
* that label values are in ``[0, num_classes)`` or equal the ignore label;
* the weight map (when the split has one): ``H*W`` finite, non-negative float32 values;
* unique keys per split, and record and pixel counts equal to the manifest's.

It then prints per-split, per-class pixel shares and the suggested class weights, and exits
with status 1 naming the shard and record index of every problem. Training code can call
:func:`verify_dataset` to name a bad record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
from absl import app, flags

__all__ = ["Problem", "SplitReport", "VerifyReport", "Record", "RecordError", "verify_dataset",
           "iter_examples", "decode_record", "format_report"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One defect: the shard, the 0-based record index within it (None: whole file/split)."""

    file: str
    record: Optional[int]
    message: str
    key: Optional[str] = None

    def __str__(self) -> str:
        where = self.file if self.record is None else f"{self.file} record {self.record}"
        if self.key:
            where += f" (key {self.key})"
        return f"{where}: {self.message}"


@dataclasses.dataclass
class SplitReport:
    """What was read back from one split."""

    name: str
    files: List[str]
    num_records: int = 0  # records read back, decodable or not
    pixel_counts: np.ndarray = None  # int64 (256,): every label value, ignore label included
    present_pixel_counts: np.ndarray = None  # int64 (num_classes,)

    def class_counts(self, num_classes: int) -> List[int]:
        return [int(v) for v in self.pixel_counts[:num_classes]]


@dataclasses.dataclass
class VerifyReport:
    """The result of :func:`verify_dataset`; ``ok`` is True when no problem was found."""

    data_dir: str
    manifest: Optional[dict]
    splits: Dict[str, SplitReport]
    problems: List[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def num_records(self) -> int:
        return sum(s.num_records for s in self.splits.values())

    def class_weights(self) -> Dict[str, List[float]]:
        """Median-frequency and ENet weights from the verified counts of the weights' split."""
        from keras_seg.data.manifest import enet_weights, median_frequency_weights  # pylint: disable=import-outside-toplevel

        if not self.manifest or not self.splits:
            return {}
        n = self.manifest["num_classes"]
        base = self.manifest.get("class_weights", {}).get("computed_from")
        s = self.splits.get(base) or self.splits.get("train") or next(iter(self.splits.values()))
        counts = s.class_counts(n)
        return {"split": s.name, "median_frequency": median_frequency_weights(counts, list(s.present_pixel_counts)),
                "enet": enet_weights(counts)}


@dataclasses.dataclass
class Record:
    """One decoded example."""

    key: str
    meta: dict
    image: np.ndarray  # uint8 (H, W, C)
    image_format: str
    label: np.ndarray  # uint8 (H, W)
    weight: Optional[np.ndarray]  # float32 (H, W) or None


class RecordError(ValueError):
    """A record that does not parse or decode; the message says what is wrong."""

    def __init__(self, message: str, key: Optional[str] = None):
        super().__init__(message)
        self.key = key


_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8"}


def decode_record(raw: bytes, with_weights: bool) -> Record:
    """Parses and decodes one serialized example with TensorFlow, as training does.

    Raises:
      RecordError: a missing feature, an undecodable image or label, or sizes that disagree.
    """
    from keras_seg.data import features as F  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        ex = tf.io.parse_single_example(raw, F.parse_spec(with_weights))
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise RecordError(f"does not parse as a keras_seg example ({_first_line(e)}).") from e
    key = ex[F.KEY].numpy().decode("utf-8", "replace")
    h, w = int(ex[F.HEIGHT]), int(ex[F.WIDTH])
    fmt = ex[F.IMAGE_FORMAT].numpy().decode("utf-8", "replace")
    try:
        meta = json.loads(ex[F.META].numpy().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"image/meta is not JSON ({e}).", key) from e
    encoded = ex[F.IMAGE].numpy()
    if fmt not in _MAGIC:
        raise RecordError(f"image/format is {fmt!r}; png or jpeg expected.", key)
    if not encoded.startswith(_MAGIC[fmt]):
        raise RecordError(f"image/format says {fmt} but the image bytes are not {fmt}.", key)
    try:
        image = tf.io.decode_image(encoded, expand_animations=False).numpy()
    except tf.errors.OpError as e:
        raise RecordError(f"the image does not decode ({_first_line(e)}).", key) from e
    try:
        label = tf.io.decode_png(ex[F.LABEL], channels=0).numpy()
    except tf.errors.OpError as e:
        raise RecordError(f"the label PNG does not decode ({_first_line(e)}).", key) from e
    if label.shape[-1] != 1 or label.dtype != np.uint8:
        raise RecordError(f"the label PNG has {label.shape[-1]} channel(s) of {label.dtype}; "
                          "one 8-bit channel of class ids expected.", key)
    label = label[..., 0]
    if image.shape[:2] != (h, w):
        raise RecordError(f"image is {image.shape[1]}x{image.shape[0]} (WxH) but image/width,height "
                          f"say {w}x{h}.", key)
    if label.shape != (h, w):
        raise RecordError(f"label is {label.shape[1]}x{label.shape[0]} (WxH) but the image is {w}x{h}.", key)
    weight = None
    if with_weights:
        buf = ex[F.WEIGHT].numpy()
        if len(buf) != 4 * h * w:
            raise RecordError(f"weight/raw holds {len(buf)} bytes; {4 * h * w} (float32 HxW) expected.", key)
        weight = np.frombuffer(buf, "<f4").reshape(h, w)
        if not np.all(np.isfinite(weight)) or (weight < 0).any():
            raise RecordError("weight/raw has negative or non-finite values.", key)
    return Record(key=key, meta=meta, image=image, image_format=fmt, label=label, weight=weight)


def _first_line(e: Exception) -> str:
    msg = getattr(e, "message", None) or str(e)
    return msg.strip().splitlines()[0] if msg.strip() else type(e).__name__


def _iter_raw(path: str) -> Iterator[bytes]:
    import keras_seg  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import  # allocator first
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    for raw in tf.data.TFRecordDataset(path, buffer_size=1 << 20):
        yield raw.numpy()


def iter_examples(data_dir: str, split: str) -> Iterator[Record]:
    """Yields the decoded records of ``split`` in file order; raises on the first bad one.

    Raises:
      ManifestError: no manifest or no such split.
      RecordError: naming the shard and record index.
    """
    from keras_seg.data.manifest import load_manifest, split_files  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    manifest = load_manifest(data_dir)
    with_weights = bool(manifest["splits"][split].get("has_weights")) if split in manifest["splits"] else False
    for path in split_files(data_dir, manifest, split):
        i = -1
        try:
            for i, raw in enumerate(_iter_raw(path)):
                try:
                    yield decode_record(raw, with_weights)
                except RecordError as e:
                    raise RecordError(str(Problem(path, i, str(e), e.key)), e.key) from e
        except tf.errors.DataLossError as e:
            raise RecordError(str(Problem(path, i + 1, f"corrupt TFRecord data ({_first_line(e)})."))) from e


def verify_dataset(data_dir: str, *, splits: Optional[Sequence[str]] = None,
                   log: Optional[Callable[[str], None]] = None) -> VerifyReport:
    """Reads back every record of every split in ``data_dir/manifest.json`` and checks it.

    Args:
      data_dir: a directory written by a ``data_prep`` converter.
      splits: the splits to check (default: all in the manifest).
      log: progress printer (default: silent).

    Returns:
      A :class:`VerifyReport`; ``report.problems`` names the shard and record index of each
      defect, and ``report.ok`` is True when there are none. Never raises for bad data.
    """
    from keras_seg.data.manifest import ManifestError, load_manifest  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    log = log or (lambda _msg: None)
    report = VerifyReport(data_dir=data_dir, manifest=None, splits={}, problems=[])
    try:
        manifest = load_manifest(data_dir)
    except ManifestError as e:
        report.problems.append(Problem(os.path.join(data_dir, "manifest.json"), None, str(e)))
        return report
    report.manifest = manifest
    n, ignore = manifest["num_classes"], manifest["ignore_label"]
    valid = np.zeros(256, bool)
    valid[:n] = True
    if 0 <= ignore < 256:
        valid[ignore] = True
    names = list(splits) if splits else list(manifest["splits"])
    for split in names:
        if split not in manifest["splits"]:
            report.problems.append(Problem(os.path.join(data_dir, "manifest.json"), None,
                                           f"no split {split!r}; it has {sorted(manifest['splits'])}."))
            continue
        entry = manifest["splits"][split]
        with_weights = bool(entry.get("has_weights"))
        sr = SplitReport(split, list(entry["files"]), 0, np.zeros(256, np.int64), np.zeros(n, np.int64))
        report.splits[split] = sr
        keys: Dict[str, str] = {}
        clean = readable = True  # no problem at all / every shard read to its end
        for name in entry["files"]:
            path = os.path.join(data_dir, name)
            if not os.path.isfile(path):
                report.problems.append(Problem(path, None, "shard listed in the manifest is missing."))
                clean = readable = False
                continue
            i = -1
            count = 0
            try:
                for i, raw in enumerate(_iter_raw(path)):
                    count += 1
                    try:
                        rec = decode_record(raw, with_weights)
                    except RecordError as e:
                        report.problems.append(Problem(path, i, str(e), e.key))
                        clean = False
                        continue
                    hist = np.bincount(rec.label.ravel(), minlength=256)
                    bad = np.nonzero(hist * ~valid)[0]
                    if bad.size:
                        report.problems.append(Problem(
                            path, i, f"label values {bad[:10].tolist()} are outside [0, {n}) and not the "
                            f"ignore label {ignore}.", rec.key))
                        clean = False
                    if rec.key in keys:
                        report.problems.append(Problem(path, i, f"duplicate key, also in {keys[rec.key]}.", rec.key))
                        clean = False
                    keys[rec.key] = f"{name} record {i}"
                    sr.pixel_counts += hist
                    sr.present_pixel_counts += np.where(hist[:n] > 0, rec.label.size, 0)
            except tf.errors.DataLossError as e:
                report.problems.append(Problem(path, i + 1, f"corrupt TFRecord data: {_first_line(e)} "
                                               "Fix: re-run the converter; the rest of this shard is unreadable."))
                clean = readable = False
            sr.num_records += count
            log(f"  {split}: {name}: {count} record(s) read")
        if readable and sr.num_records != entry.get("num_examples"):
            report.problems.append(Problem(os.path.join(data_dir, "manifest.json"), None,
                                           f"split {split!r}: manifest says {entry.get('num_examples')} examples, "
                                           f"the shards hold {sr.num_records}."))
        elif clean and (sr.class_counts(n) != list(entry.get("pixel_counts", []))
                        or (ignore >= n and int(sr.pixel_counts[ignore]) != entry.get("ignored_pixels"))):
            report.problems.append(Problem(os.path.join(data_dir, "manifest.json"), None,
                                           f"split {split!r}: pixel_counts or ignored_pixels differ from the "
                                           "records' labels; "
                                           "the manifest is stale. Fix: re-run the converter."))
    return report


def format_report(report: VerifyReport, max_shown: int = 20) -> str:
    """A readable summary: per-split counts, per-class pixel shares, suggested class weights."""
    lines: List[str] = []
    m = report.manifest
    if m:
        n, ignore = m["num_classes"], m["ignore_label"]
        names = list(report.splits)
        lines.append(f"Dataset {m.get('dataset', '?')!r} in {report.data_dir}: {n} classes, ignore label {ignore}")
        lines.append(f"{'split':<10}{'records':>9}{'shards':>8}{'pixels':>14}")
        for s in report.splits.values():
            lines.append(f"{s.name:<10}{s.num_records:>9}{len(s.files):>8}{int(s.pixel_counts.sum()):>14}")
        weights = report.class_weights()
        width = max([len(c) for c in m["class_names"]] + [len("(ignore)"), 5])
        lines.append("")
        lines.append(f"Pixel share per class, % of each split's pixels; class weights from "
                     f"{weights.get('split', '-')!r}:")
        head = f"{'id':>3}  {'class':<{width}}" + "".join(f"{s:>10}" for s in names) + f"{'median_freq':>13}{'enet':>9}"
        lines.append(head)
        lines.append("-" * len(head))
        totals = {s: max(int(r.pixel_counts.sum()), 1) for s, r in report.splits.items()}
        for c in range(n):
            row = f"{c:>3}  {m['class_names'][c]:<{width}}"
            row += "".join(f"{100.0 * report.splits[s].pixel_counts[c] / totals[s]:>10.3f}" for s in names)
            if weights:
                row += f"{weights['median_frequency'][c]:>13.4f}{weights['enet'][c]:>9.4f}"
            lines.append(row)
        if 0 <= ignore < 256:
            row = f"{ignore:>3}  {'(ignore)':<{width}}"
            row += "".join(f"{100.0 * report.splits[s].pixel_counts[ignore] / totals[s]:>10.3f}" for s in names)
            lines.append(row)
        lines.append("Train with --class_weights=median_frequency or --class_weights=enet to use these weights.")
        lines.append("")
    if report.ok:
        lines.append(f"OK: {report.num_records} records in {len(report.splits)} split(s) verified, no problems.")
    else:
        lines.append(f"FAILED: {len(report.problems)} problem(s):")
        lines += [f"  {p}" for p in report.problems[:max_shown]]
        if len(report.problems) > max_shown:
            lines.append(f"  ... and {len(report.problems) - max_shown} more")
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags of ``python -m data_prep.verify``."""
    flags.DEFINE_list("splits", None, "Splits to verify (default: every split in the manifest).")
    flags.DEFINE_integer("max_shown", 20, "How many problems to print.")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("Usage: python -m data_prep.verify DATA_DIR [--splits=train,val]")
    data_dir = argv[1]
    print(f"Verifying {data_dir} ...", flush=True)
    report = verify_dataset(data_dir, splits=FLAGS.splits, log=lambda s: print(s, flush=True))
    print(format_report(report, FLAGS.max_shown))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    from keras_seg.cli import flagfile_argv  # pylint: disable=import-outside-toplevel

    app.run(main, argv=flagfile_argv())
