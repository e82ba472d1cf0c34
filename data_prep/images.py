"""Reading and validating source images and masks with PIL."""

from __future__ import annotations

import io
from typing import Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError


class DataError(ValueError):
    """A source file is unusable. ``str(err)`` names the file, the problem and the fix."""

    def __init__(self, path: str, problem: str, fix: str = ""):
        self.path = path
        msg = f"{path}: {problem}"
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)


_IMAGE_MODES = ("L", "RGB", "RGBA", "P", "LA")


def read_image(path: str) -> Tuple[bytes, str, int, int]:
    """Reads an image file and checks that it fully decodes.

    Returns:
      ``(encoded_bytes, format, height, width)`` with ``format`` ``"png"`` or ``"jpeg"``;
      the bytes are the file's own, stored unchanged.

    Raises:
      DataError: unreadable, truncated, not PNG/JPEG, or an unsupported pixel mode.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(path, f"cannot read the file ({e.strerror}).") from e
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "").lower()
            mode = im.mode
            im.load()  # full decode: catches truncated files
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            path, f"the image cannot be decoded ({e}); the file is corrupt or truncated.",
            "re-export or re-download this file, or remove it and its mask."
        ) from e
    if fmt not in ("png", "jpeg"):
        raise DataError(path, f"images must be PNG or JPEG, this is {fmt or 'unknown'}.",
                        "convert it to PNG.")
    if mode not in _IMAGE_MODES:
        raise DataError(path, f"unsupported image mode {mode!r} (e.g. 16-bit or CMYK).",
                        "convert it to 8-bit RGB, e.g. Image.open(p).convert('RGB').save(...).")
    return data, fmt, height, width


def read_png_array(path: str, what: str, fix: str) -> Tuple[np.ndarray, str]:
    """Decodes an image file as ``(array, PIL mode)``; :class:`DataError` naming ``path`` and ``what``
    when it is missing, or with ``fix`` when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im), im.mode
    except FileNotFoundError as e:
        raise DataError(path, f"{what} file not found.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"the {what} cannot be decoded ({e}); the file is corrupt or truncated.", fix) from e


def read_index_mask(path: str, *, palette_indices: bool = False) -> np.ndarray:
    """Reads a single-channel mask of class indices as ``uint8 (H, W)``.

    Args:
      path: PNG mask file.
      palette_indices: accept palette (mode ``P``) PNGs and use their indices as class ids,
        as PASCAL VOC stores them.

    Raises:
      DataError: unreadable/truncated; RGB or palette masks where indices were expected
        (the message says which and how to convert); values above 255.
    """
    arr, mode = read_png_array(path, "mask", "re-export this mask.")
    if mode == "P" and not palette_indices:
        raise DataError(
            path,
            "the mask is a palette PNG (mode P), but index masks (mode L) were expected.",
            "if its palette indices are the class ids (as in PASCAL VOC), pass "
            "--palette_masks; otherwise save a mode-L PNG of class ids.",
        )
    if mode in ("RGB", "RGBA"):
        raise DataError(
            path,
            f"the mask is a colour ({mode}) image, but single-channel index masks were expected.",
            "map each colour to its class id (e.g. with a colour-to-id lookup table in numpy) "
            "and save a mode-L PNG, or use the dataset's own converter "
            "(data_prep.camvid / cityscapes / voc).",
        )
    if arr.ndim != 2:
        raise DataError(path, f"the mask has shape {arr.shape}; a 2-D index mask was expected.")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(path, f"mask values range {arr.min()}..{arr.max()}; at most 255 is supported.")
        arr = arr.astype(np.uint8)
    return arr


def encode_png(arr: np.ndarray) -> bytes:
    """Encodes a ``uint8 (H, W)`` array as an 8-bit grayscale PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
