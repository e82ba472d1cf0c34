"""U-Net border-weight maps (Ronneberger et al. 2015, eq. 2).

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))``, where ``d1`` and ``d2``
are the distances to the border of the nearest and second-nearest object ("cell"), and
``w_c`` balances the class frequencies. The paper uses ``w0 = 10`` and ``sigma ~ 5`` px.

Distance transforms and connected components come from ``scipy.ndimage`` (the ``prep``
extra); a hand-written distance transform would be slower and less trustworthy.
"""

from __future__ import annotations

import numpy as np


def _ndimage():
    try:
        from scipy import ndimage  # pylint: disable=import-outside-toplevel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "U-Net border weights need scipy: pip install -e '.[prep]' (or pip install scipy)."
        ) from e
    return ndimage


def class_balance_weights(label: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """``w_c``: ``N / (K * n_c)`` per pixel for the K classes present (balanced -> 1).

    Ignored pixels get weight 0 (the loss leaves them out anyway).
    """
    valid = label != ignore_label
    classes, counts = np.unique(label[valid], return_counts=True)
    w = np.zeros(label.shape, np.float32)
    if classes.size == 0:
        return w
    total = counts.sum()
    for c, n in zip(classes, counts):
        w[label == c] = total / (classes.size * n)
    return w


def unet_weight_map(label: np.ndarray, *, background: int = 0, w0: float = 10.0, sigma: float = 5.0,
                    ignore_label: int = 255) -> np.ndarray:
    """The U-Net weight map of one index mask.

    Args:
      label: ``(H, W)`` class ids; objects are the connected components of non-background,
        non-ignored pixels.
      background: class id of the gaps between objects (ISBI: 0, membrane).
      w0: border weight amplitude.
      sigma: border width in pixels.
      ignore_label: pixels with this value get weight 0.

    Returns:
      float32 ``(H, W)`` weights.
    """
    ndimage = _ndimage()
    label = np.asarray(label)
    w = class_balance_weights(label, ignore_label)
    objects = (label != background) & (label != ignore_label)
    comps, n = ndimage.label(objects)
    if n >= 2:
        # Where d1 + d2 >= margin the border term is below 1e-6, so each object's distance
        # transform only covers its bounding box grown by `margin` (infinite outside): exact
        # to 1e-6, and ~15x faster on 512x512 ISBI slices with ~130 cells.
        margin = int(np.ceil(sigma * np.sqrt(2.0 * np.log(max(w0, 1.0) * 1e6)))) + 1
        d = np.full((2,) + label.shape, np.inf, np.float32)  # two smallest distances so far
        for i, box in enumerate(ndimage.find_objects(comps), start=1):
            win = tuple(slice(max(b.start - margin, 0), b.stop + margin) for b in box)
            di = ndimage.distance_transform_edt(comps[win] != i).astype(np.float32)
            d0, d1 = d[0][win], d[1][win]
            smaller = di < d0
            d[1][win] = np.where(smaller, d0, np.minimum(d1, di))
            d[0][win] = np.where(smaller, di, d0)
        w = w + w0 * np.exp(-((d[0] + d[1]) ** 2) / (2.0 * sigma**2)).astype(np.float32)
    w[label == ignore_label] = 0.0
    return w.astype(np.float32)
