"""The CLI layer: each command's absl flags and ``main`` (``keras-seg <command>``).

Library modules (:mod:`keras_seg.evaluate`, :mod:`keras_seg.predict`, :mod:`keras_seg.plot`)
take arguments, never flags; their ``python -m`` entry points forward here.
"""
