"""Markdown tables and the sections of ``benchmarks/RESULTS.md``.

RESULTS.md is written by several commands (``python -m benchmarks``,
``python benchmarks/compare_torch.py``); each owns named sections delimited by
``<!-- begin NAME -->`` / ``<!-- end NAME -->`` and rewrites only those, so one run never
erases another's results. Writes go to a temporary file that is renamed over the original.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

TITLE = "# keras_seg benchmark results"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None) -> str:
    """A GitHub markdown table; ``align`` is one character per column, ``l`` or ``r`` (default: l then r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} characters for {len(headers)} columns")
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)} has {len(row)} cells for {len(headers)} columns")
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Optional[float], spec: str = ".2f") -> str:
    """``value`` formatted, or ``n/a`` for None/NaN."""
    if value is None or value != value:
        return "n/a"
    return format(value, spec)


def ratio(a: Optional[float], b: Optional[float], spec: str = ".2f") -> str:
    """``a / b`` formatted, ``n/a`` when either is missing or ``b`` is 0."""
    if a is None or b is None or a != a or b != b or b == 0:
        return "n/a"
    return format(a / b, spec)


def machine_header(info: Mapping[str, Any]) -> str:
    """A bullet list of the machine facts from :func:`benchmarks.timing.machine_info`."""
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


def _markers(name: str):
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise ValueError(f"section names are lower-case words. Received: {name!r}")
    return f"<!-- begin {name} -->", f"<!-- end {name} -->"


def read_sections(path: str) -> Dict[str, str]:
    """The sections of an existing results file (``{}`` if there is none)."""
    if not os.path.isfile(path):
        return {}
    text = open(path, encoding="utf-8").read()
    found = {}
    for m in re.finditer(r"<!-- begin ([a-z0-9_-]+) -->\n(.*?)\n<!-- end \1 -->", text, flags=re.S):
        found[m.group(1)] = m.group(2)
    return found


def _file_mode(path: str) -> int:
    """The mode of the existing file at ``path``, else what ``open()`` would give under the umask."""
    if os.path.isfile(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_sections(path: str, sections: Mapping[str, str], order: Sequence[str] = ()) -> None:
    """Replaces (or adds) ``sections`` in the results file at ``path``, keeping the others.

    Sections are written in ``order`` first, then any others in their existing order.

    Raises:
      ValueError: ``path`` exists but is not a results file (it would be overwritten).
    """
    if os.path.isfile(path):
        head = open(path, encoding="utf-8").readline().rstrip("\n")
        if head != TITLE:
            raise ValueError(f"{path} does not start with {TITLE!r}; refusing to overwrite it. "
                             "Pass another --results path or move the file.")
    merged = read_sections(path)
    merged.update(sections)
    names: List[str] = [n for n in order if n in merged] + [n for n in merged if n not in order]
    parts = [TITLE, ""]
    for name in names:
        begin, end = _markers(name)
        parts += [begin, merged[name].strip("\n"), end, ""]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".results-", suffix=".md")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(parts))
        os.chmod(tmp, _file_mode(path))  # mkstemp creates 0600; keep a readable results file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# Settings that do not change what is measured: where exports go, and the learning rate (step
# time does not depend on it while the loss stays finite).
_NOT_COMPARED = ("workdir", "learning_rate")


# Settings added later, with the value that results written before them were measured at.
_DEFAULTS = {"mixed_precision": "float32"}


# Settings renamed later (issue 16's --batch_size vocabulary): old name -> new name.
_RENAMED = {"infer_batch": "infer_batch_size", "train_batch": "train_batch_size"}


def same_settings(a: dict, b: dict) -> bool:
    """Whether two model specs measure the same thing (``_NOT_COMPARED`` left out)."""
    def keep(d):
        d = {_RENAMED.get(k, k): v for k, v in d.items()}
        return {k: v for k, v in {**_DEFAULTS, **d}.items() if k not in _NOT_COMPARED}
    return keep(a) == keep(b)


def resume_decision(old: Optional[dict], spec: dict) -> Tuple[bool, str]:
    """Whether --resume reuses ``old`` (an earlier result of the same model) for ``spec``, and
    why not ('' when there is no earlier result)."""
    if old is None:
        return False, ""
    if "fatal" in old:
        return False, f"the earlier run failed ({old['fatal']})"
    if old.get("errors"):
        return False, f"the earlier run has failed phases ({', '.join(sorted(old['errors']))})"
    if not same_settings(old.get("spec", {}), spec):
        return False, "the earlier run used other settings"
    return True, ""


def script_section(title: str, how: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   results: str = "", align: Optional[str] = None) -> str:
    """The Markdown section of a stand-alone script in ``benchmarks/``: a ``###`` title, how it was
    run, the machine and the table. Printed, and appended to ``results`` unless that is ``''``."""
    from benchmarks.timing import machine_info  # pylint: disable=import-outside-toplevel

    text = "\n\n".join([f"### {title}", how, machine_header(machine_info()), markdown_table(headers, rows, align)]) + "\n"
    print(text)
    if results:
        with open(results, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return text
