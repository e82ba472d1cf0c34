"""Process-wide memory allocator settings, applied before TensorFlow allocates anything.

TensorFlow's CPU tensors come from the C library's ``malloc``. glibc serves a request above
its mmap threshold (128 KiB at start, raised dynamically up to 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` when freed, and it gives the top of its heaps back
to the kernel once more than the trim threshold is free. A training step at CamVid size
allocates and frees gigabytes of activations, so without a change every page of them is
faulted in again on every step: on a 2-core AVX2 machine ENet training at 352x480 spent
281 s in the kernel against 312 s of user time (issue 13).

:func:`configure` turns both off with ``mallopt`` (no ``mmap`` for large blocks, no
trimming), so freed activations are reused by the next step, as ``MALLOC_MMAP_MAX_=0``
would do from the environment. It runs when ``keras_seg`` or ``data_prep`` is imported,
which every command-line entry point does before TensorFlow; calling it again does nothing.
The process keeps its peak heap (it does not shrink after a large step), which is what the
next step needs anyway.

Opt out with ``KERAS_SEG_ALLOCATOR=system`` in the environment (glibc's defaults). On other
C libraries (macOS, musl) nothing is changed. This module must not import TensorFlow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Optional

#: Environment variable that selects the allocator policy.
ENV = "KERAS_SEG_ALLOCATOR"
#: Accepted values of :data:`ENV`.
MODES = ("tuned", "system")

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Largest int mallopt accepts: never trim the heap.
_NO_TRIM = 2**31 - 1

_applied: Optional[str] = None


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # gnu_get_libc_version exists only in glibc; musl's mallopt is a no-op.
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def configure() -> str:
    """Applies the allocator policy of :data:`ENV` once per process and returns what was done.

    Returns:
      ``"tuned"`` (glibc's mmap and trimming turned off), ``"system"`` (opted out), or
      ``"unsupported"`` (not glibc, or ``mallopt`` refused a setting).

    Raises:
      ValueError: :data:`ENV` holds a value other than ``tuned`` or ``system``.
    """
    global _applied  # pylint: disable=global-statement
    if _applied is not None:
        return _applied
    mode = os.environ.get(ENV, "tuned").strip().lower() or "tuned"
    if mode not in MODES:
        raise ValueError(
            f"Environment variable {ENV}={os.environ[ENV]!r} is not one of {MODES}. Unset it for the "
            f"default (tuned), or set {ENV}=system to keep the C library's allocator settings."
        )
    if mode == "system":
        _applied = "system"
        return _applied
    libc = _libc()
    ok = libc is not None and libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NO_TRIM) == 1
    _applied = "tuned" if ok else "unsupported"
    return _applied


def applied() -> Optional[str]:
    """What :func:`configure` did in this process (``None`` before it ran)."""
    return _applied
