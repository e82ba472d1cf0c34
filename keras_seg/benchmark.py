"""``keras-seg benchmark`` and ``python -m keras_seg.benchmark``: the benchmark suite of a checkout.

The benchmarks live in the source repository's ``benchmarks/`` folder, not in the installed
package. This forwarder finds that folder next to the ``keras_seg`` it was imported from (an
editable install or a checkout on ``sys.path``) and runs it as ``python -m benchmarks`` would,
with the same flags; without a checkout it exits with a message saying where to get one.
"""

from __future__ import annotations

import pathlib
import runpy
import sys
from typing import Optional

#: What to do where the benchmarks are absent (an installed wheel).
NO_CHECKOUT = (
    "error: the benchmarks ship with the keras_seg source repository, not with the installed package "
    "(looked for {path}). Clone the repository, install it with `pip install -e .` from its root, and run "
    "`keras-seg benchmark` or `python -m benchmarks` there."
)


def checkout_root() -> Optional[pathlib.Path]:
    """The repository root holding ``benchmarks/__main__.py`` beside this ``keras_seg``, or None."""
    root = pathlib.Path(__file__).resolve().parents[1]
    return root if (root / "benchmarks" / "__main__.py").is_file() else None


def main() -> None:
    """Runs the checkout's ``benchmarks`` package as ``__main__``; exits with status 1 without one."""
    root = checkout_root()
    if root is None:
        expected = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
        print(NO_CHECKOUT.format(path=expected), file=sys.stderr)
        sys.exit(1)
    if sys.path[:1] != [str(root)]:  # this checkout's benchmarks, before any other on the path
        sys.path.insert(0, str(root))
    runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
