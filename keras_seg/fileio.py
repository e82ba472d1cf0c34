"""Writes that never leave a half-written file (no TensorFlow): a temporary file, then a rename."""

from __future__ import annotations

import json
import os

__all__ = ["atomic_write_json", "atomic_write_text"]


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through ``path.tmp-<pid>`` and ``os.replace``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_write_json(path: str, obj) -> None:
    """Writes ``obj`` as indented JSON to ``path``, atomically (:func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
