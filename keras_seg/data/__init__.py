"""Reading converted datasets: record layout, decoding, augmentation and pipelines."""

from keras_seg.data.augment import AugmentConfig, augment
from keras_seg.data.decode import decode_example
from keras_seg.data.manifest import load_manifest
from keras_seg.data.pipeline import DataConfig, make_dataset
from keras_seg.data.preprocess import normalize_image

__all__ = ["AugmentConfig", "DataConfig", "augment", "decode_example", "load_manifest",
           "make_dataset", "normalize_image"]
