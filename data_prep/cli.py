"""Command-line plumbing shared by the dataset converters: output flags and the error exit.

Each converter keeps a library function (``convert_camvid(...)`` etc.) that raises
:class:`~data_prep.images.DataError` / :class:`~data_prep.writer.ConversionError`; its
``main`` calls :func:`exit_on_error`, which prints the message (file, problem, fix) and
exits with status 1 instead of a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List, Sequence, TypeVar

from absl import flags

T = TypeVar("T")


def define_output_flags() -> None:
    """``--out_dir`` (alias ``--out``), ``--workers``, ``--shard_mb`` and ``--overwrite``: every converter's output flags."""
    flags.DEFINE_string("out_dir", None, "Output directory for the shards and manifest.json.")
    flags.DEFINE_alias("out", "out_dir")  # the older spelling
    flags.DEFINE_integer("workers", None, "Parallel writer processes (default: all cores).")
    flags.DEFINE_float("shard_mb", 64, "Approximate maximum shard size in MiB.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing dataset in --out.")


def exit_on_error(fn: Callable[[], T]) -> T:
    """Runs ``fn``; on bad input prints ``error: ...`` to stderr and exits with status 1."""
    try:
        return fn()
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        # DataError, ConversionError and ManifestError are ValueErrors.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def require_dir(path: str, flag: str, expected: str) -> str:
    """Returns ``path`` if it is a directory, else raises ValueError naming the flag and layout."""
    if not path or not os.path.isdir(path):
        raise ValueError(f"{flag}={path!r} is not a directory. Expected {expected}.")
    return path


def file_size(*paths: str) -> int:
    """Total size of the existing ``paths`` in bytes (a shard-size hint)."""
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def raise_collected(errors: Sequence[str], what: str) -> None:
    """Raises one ConversionError listing up to 20 ``errors`` (none: returns)."""
    from data_prep.writer import ConversionError  # pylint: disable=import-outside-toplevel

    if not errors:
        return
    shown = "\n  ".join(errors[:20])
    more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
    raise ConversionError(f"{len(errors)} problem(s) with {what}; nothing was written:\n  {shown}{more}")


def parse_index_ranges(spec: str, flag: str) -> List[int]:
    """Parses ``"25-29"`` or ``"0,5,10-12"`` into a sorted list of distinct ints.

    Raises:
      ValueError: naming ``flag`` and the bad piece.
    """
    out = set()
    for piece in spec.split(","):
        piece = piece.strip()
        if not piece:
            continue
        lo, sep, hi = piece.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(
                f"{flag}: cannot parse {piece!r}; use indices and ranges like 25-29 or 0,5,10-12. "
                f"Received: {flag}={spec!r}"
            ) from None
        if a < 0 or b < a:
            raise ValueError(f"{flag}: bad range {piece!r} (need 0 <= start <= end). Received: {flag}={spec!r}")
        out.update(range(a, b + 1))
    return sorted(out)


def count_items(splits: Dict[str, Sequence]) -> str:
    """``"train 367, val 101"``: a one-line summary for progress output."""
    return ", ".join(f"{k} {len(v)}" for k, v in splits.items())

