"""Dataset converters: image and mask folders (and, per dataset, official layouts) to
sharded TFRecords plus a ``manifest.json``. They import ``keras_seg.data.features`` for the
record layout and never any training code."""
