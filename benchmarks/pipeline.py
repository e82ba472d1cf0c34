"""Input-pipeline benchmark: ``tf.data`` vs a Python generator, and its share of a training step.

Measures, on CamVid-shaped data (360x480 RGB PNGs, 11 classes + void 11; crop 352x480,
scale 0.5-2.0, flip, photometric jitter as in ``configs/base/camvid.cfg``):

- images/s of :func:`keras_seg.data.pipeline.make_dataset` (TFRecords, parallel ``tf.data``);
- images/s of a single-threaded PIL + NumPy generator doing the same work, the approach of
  keras_segmentation's ``image_segmentation_generator`` (:mod:`benchmarks.pipeline_numpy`);
- the training step fed by the real pipeline vs by one in-memory batch repeated, which
  bounds what a faster pipeline could gain;
- before/after ratios of ``tf.data.Options`` settings and of caching decoded examples.

The data are synthetic (:func:`benchmarks.pipeline_data.make_camvid_like`), so the benchmark
runs anywhere; their PNGs are about the size of real CamVid's, which sets the decode cost.
:mod:`benchmarks.pipeline_sections` runs every measurement and writes the RESULTS.md sections.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from benchmarks.pipeline_data import CAMVID_CROP, camvid_augment, check_int
from benchmarks.pipeline_numpy import camvid_generator
from benchmarks.timing import Timing, time_calls, usable_cpus

# --------------------------------------------------------------------------- tf.data


def _check_counts(batch: int, n_batches: int, warmup: int) -> None:
    check_int(1, batch=batch, n_batches=n_batches)
    check_int(0, warmup=warmup)


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


def measure_generator(raw_dir: str, batch: int, n_batches: int, *, warmup: int = 1,
                      crop_size: Tuple[int, int] = CAMVID_CROP, seed: int = 0) -> Throughput:
    """:class:`Throughput` of :func:`~benchmarks.pipeline_numpy.camvid_generator`; the arguments of
    :func:`generator_throughput`."""
    _check_counts(batch, n_batches, warmup)
    return _throughput(camvid_generator(raw_dir, batch, crop_size=crop_size, seed=seed), batch, n_batches, warmup)


def generator_throughput(raw_dir: str, batch: int, n_batches: int, *, warmup: int = 1,
                         crop_size: Tuple[int, int] = CAMVID_CROP, seed: int = 0) -> float:
    """Images/s of :func:`~benchmarks.pipeline_numpy.camvid_generator` (one Python thread), after
    ``warmup`` batches.

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
    check_int(1, batch=batch, rounds=rounds, block=block)
    check_int(0, settle=settle)
    calls = _feed_calls(data_dir, model, batch, crop_size, seed, model_options)
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


def _feed_calls(data_dir: str, model: str, batch: int, crop_size: Tuple[int, int], seed: int,
                model_options: Optional[Dict]) -> Dict[str, Callable[[], float]]:
    """One training step of ``model`` and its two feeds: ``{"real": call, "synthetic": call}``,
    each call one step (returning the loss) on ``make_dataset`` or on its first batch repeated."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from keras_seg import build_model  # pylint: disable=import-outside-toplevel
    from keras_seg.data.pipeline import dataset_info, make_dataset  # pylint: disable=import-outside-toplevel
    from keras_seg.registry import get_spec  # pylint: disable=import-outside-toplevel
    from keras_seg.training import make_train_step  # pylint: disable=import-outside-toplevel

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
    return {name: (lambda it=it: float(step(it))) for name, it in feeds.items()}


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
    check_int(1, repeats=repeats)
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
