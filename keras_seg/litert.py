"""Running an exported TFLite segmenter with the LiteRT interpreter, on images of any size.

No TensorFlow import: a device needs ``ai-edge-litert``, NumPy and Pillow only.

A keras_seg TFLite model (written by :mod:`keras_seg.export`) has one signature,
``serving_default``: input ``image`` uint8 ``(1, H, W, 3)`` RGB at the fixed export size,
normalised inside the graph with the training normalisation; outputs ``probabilities``
float32 ``(1, H, W, C)`` (softmax) and ``class_ids`` int32 ``(1, H, W)``. The sidecar
``<model>.json`` beside it holds the class names, palette and input size.

Images of another size are handled in one of two ways (``fit``):

* ``"tile"`` (default, the faithful one): the image is covered with overlapping tiles of
  the model's input size; each tile is run at the image's native resolution, and the
  probabilities are blended with weights that fall off towards each tile's edges
  (a pixel seen by one tile only gets that tile's value exactly). Sides shorter than
  the tile are padded at the bottom/right with the mean colour, which normalises to
  zero: the value the network's own zero padding uses. An image of exactly the model
  size is a single plain invocation.
* ``"resize"`` (simpler, cheaper): the image is resized bilinearly to the input size, and
  the probabilities (never the label map) are resized bilinearly back to the image size.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

FITS = ("tile", "resize")
SIGNATURE = "serving_default"
# The mean colour of the default ("imagenet") preprocessing (keras_seg.data.preprocess.MEAN_RGB
# * 255): normalize_image maps it to ~0, so padding with it matches the network's zero padding.
MEAN_COLOR = (124, 116, 104)
METADATA_NAME = "keras_seg"  # the flatbuffer metadata entry holding the sidecar's JSON


def pad_color(preprocessing: Optional[Dict[str, Any]]) -> Tuple[int, int, int]:
    """The uint8 RGB colour a model's preprocessing maps to 0, from the export's record of it.

    ``None`` (exports written before the record existed): :data:`MEAN_COLOR`.
    """
    if not preprocessing:
        return MEAN_COLOR
    if preprocessing.get("mode") == "caffe":
        return tuple(int(round(m)) for m in reversed(preprocessing["mean"]))
    return tuple(int(round(255 * m)) for m in preprocessing["mean_rgb"])


def embed_metadata(flat: bytes, record: Dict[str, Any]) -> bytes:
    """The TFLite model ``flat`` with ``record`` as JSON in its metadata entry ``keras_seg``.

    The flatbuffer then carries its class names, palette and preprocessing itself, as the
    ``.json`` sidecar does beside it; :func:`embedded_metadata` reads it back.
    """
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
    from ai_edge_litert.tools import flatbuffer_utils  # pylint: disable=import-outside-toplevel

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(record, sort_keys=True).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def embedded_metadata(flat: bytes) -> Optional[Dict[str, Any]]:
    """The ``keras_seg`` metadata JSON of a TFLite model written by the export, or ``None``."""
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel

    model = schema.Model.GetRootAs(flat, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8"))
    return None


def sidecar_path(tflite_path: str) -> str:
    """The metadata JSON written beside a ``.tflite`` file (``x.tflite`` -> ``x.json``)."""
    return os.path.splitext(tflite_path)[0] + ".json"


def read_sidecar(tflite_path: str) -> Dict[str, Any]:
    """Reads the metadata sidecar of ``tflite_path``.

    Raises:
      ValueError: naming the missing or unreadable file and how to recreate it.
    """
    path = sidecar_path(tflite_path)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError as e:
        raise ValueError(
            f"{path} not found: the metadata sidecar (class names, palette, input size) of "
            f"{tflite_path} must sit beside it. Re-export with `python -m keras_seg.export`."
        ) from e
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the metadata sidecar ({e}).") from e
    for key in ("class_names", "palette", "input_size"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}; re-export with `python -m keras_seg.export`.")
    return meta


def tile_starts(length: int, tile: int, stride: int) -> List[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with step <= ``stride``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1-D blending weights: 1 in the middle, falling linearly over ``overlap`` pixels at each end."""
    i = np.arange(n, dtype=np.float32)
    edge = np.minimum(i + 1, n - i) / float(overlap + 1)
    return np.minimum(edge, 1.0).astype(np.float32)


def pad_to(image: np.ndarray, height: int, width: int, color: Sequence[int] = MEAN_COLOR) -> np.ndarray:
    """Pads an RGB image at the bottom/right with ``color`` (the model's mean colour, see
    :func:`pad_color`) to at least ``height x width``."""
    h, w = image.shape[:2]
    if h >= height and w >= width:
        return image
    out = np.empty((max(h, height), max(w, width), 3), np.uint8)
    out[...] = np.asarray(color, np.uint8)
    out[:h, :w] = image
    return out


def resize_probabilities(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly resizes ``(h, w, C)`` float32 probabilities to ``(height, width, C)``."""
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(probs[..., c]), mode="F").resize((width, height), Image.BILINEAR))
        for c in range(probs.shape[-1])
    ]
    return np.stack(planes, axis=-1).astype(np.float32)


class TFLiteSegmenter:
    """A keras_seg TFLite model under the LiteRT interpreter, for images of any size.

    Args:
      path: the ``.tflite`` file.
      num_threads: interpreter (XNNPACK) threads; ``None``: every CPU this process may use.
        LiteRT's own default is one thread; on 2 cores two threads ran the 19 models at
        256x256 1.15-1.99x faster (benchmarks/RESULTS.md).
      require_sidecar: read the metadata sidecar (class names, palette) and fail without it.

    Raises:
      ValueError: the file is missing or is not a keras_seg segmentation export.
    """

    #: colour images are padded with for tiling: the one the model's preprocessing maps to 0
    pad_color: Tuple[int, int, int] = MEAN_COLOR

    def __init__(self, path: str, num_threads: Optional[int] = None, require_sidecar: bool = True):
        from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

        if not os.path.isfile(path):
            raise ValueError(f"{path}: file not found (pass the .tflite written by keras_seg.export).")
        if num_threads is None:
            num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer or None. Received: num_threads={num_threads!r}")
        self.num_threads = num_threads
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"{path}: LiteRT cannot load the model ({e}).") from e
        signatures = self.interpreter.get_signature_list()
        if SIGNATURE not in signatures:
            raise ValueError(
                f"{path}: no {SIGNATURE!r} signature (it has {sorted(signatures)}); "
                "this is not a keras_seg export. Export with `python -m keras_seg.export`."
            )
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        details = self.runner.get_input_details()
        if set(details) != {"image"}:
            raise ValueError(f"{path}: expected one input named 'image', found {sorted(details)}.")
        spec = details["image"]
        shape = tuple(int(v) for v in spec["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or spec["dtype"] != np.uint8:
            raise ValueError(
                f"{path}: input 'image' is {spec['dtype'].__name__}{list(shape)}, expected uint8 "
                "[1, H, W, 3]; this is not a keras_seg export."
            )
        self.path = path
        self.input_size: Tuple[int, int] = (shape[1], shape[2])
        self.metadata = read_sidecar(path) if require_sidecar else None
        if self.metadata is not None and list(self.metadata["input_size"]) != list(self.input_size):
            raise ValueError(
                f"{sidecar_path(path)} says input_size={self.metadata['input_size']} but {path} takes "
                f"{list(self.input_size)}: the sidecar belongs to another export."
            )
        self.pad_color = pad_color(self.metadata.get("preprocessing") if self.metadata else None)

    @property
    def palette(self) -> List[List[int]]:
        """The class palette from the sidecar."""
        return self.metadata["palette"]

    def run_tile(self, tile: np.ndarray) -> np.ndarray:
        """Probabilities ``(H, W, C)`` of one uint8 tile of exactly the model's input size."""
        out = self.runner(image=np.ascontiguousarray(tile[None], dtype=np.uint8))
        return out["probabilities"][0]

    def probabilities(self, image: np.ndarray, fit: str = "tile", overlap: float = 0.25) -> np.ndarray:
        """Class probabilities ``(H, W, C)`` float32 for a uint8 RGB image of any size.

        Args:
          image: uint8 ``(H, W, 3)``.
          fit: ``"tile"`` or ``"resize"`` (see the module docstring).
          overlap: tiling only: overlap between neighbouring tiles, as a fraction of the
            tile side in ``[0, 0.9]``.

        Raises:
          ValueError: for a bad image, ``fit`` or ``overlap``.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W, 3) RGB. Received: {image.dtype}{list(image.shape)}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}. Received: fit={fit!r}")
        if not 0.0 <= overlap <= 0.9:
            raise ValueError(f"overlap must be in [0, 0.9]. Received: overlap={overlap!r}")
        h, w = image.shape[:2]
        th, tw = self.input_size
        if (h, w) == (th, tw):
            return self.run_tile(image)
        if fit == "resize":
            small = np.asarray(Image.fromarray(image).resize((tw, th), Image.BILINEAR))
            return resize_probabilities(self.run_tile(small), h, w)
        padded = pad_to(image, th, tw, self.pad_color)
        ph, pw = padded.shape[:2]
        ov_h, ov_w = int(round(overlap * th)), int(round(overlap * tw))
        weight = np.outer(_ramp(th, ov_h), _ramp(tw, ov_w))[..., None]
        acc = None
        wsum = np.zeros((ph, pw, 1), np.float32)
        for y in tile_starts(ph, th, max(th - ov_h, 1)):
            for x in tile_starts(pw, tw, max(tw - ov_w, 1)):
                probs = self.run_tile(padded[y : y + th, x : x + tw])
                if acc is None:
                    acc = np.zeros((ph, pw, probs.shape[-1]), np.float32)
                acc[y : y + th, x : x + tw] += weight * probs
                wsum[y : y + th, x : x + tw] += weight
        return (acc / wsum)[:h, :w]

    def predict(self, image: np.ndarray, fit: str = "tile", overlap: float = 0.25) -> np.ndarray:
        """Class ids ``(H, W)`` uint8 at the image's size: the argmax of :meth:`probabilities`."""
        return np.argmax(self.probabilities(image, fit, overlap), axis=-1).astype(np.uint8)


def sample_tile(image: np.ndarray, size: Sequence[int], rng: np.random.Generator,
                color: Sequence[int] = MEAN_COLOR) -> np.ndarray:
    """A random ``size`` crop of ``image`` at native resolution (mean-colour padded if smaller).

    What the tiled inference feeds the model, so int8 calibration sees the same statistics.
    """
    th, tw = int(size[0]), int(size[1])
    padded = pad_to(image, th, tw, color)
    y = int(rng.integers(0, padded.shape[0] - th + 1))
    x = int(rng.integers(0, padded.shape[1] - tw + 1))
    return np.ascontiguousarray(padded[y : y + th, x : x + tw])
