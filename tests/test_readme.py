"""The README's Python examples run, and its commands name files and targets that exist."""

import contextlib
import io
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_python_blocks_run_and_print_what_the_readme_shows():
    # Each ```python block that prints is followed by a ```text block with its exact output.
    blocks = re.findall(r"```python\n(.*?)```(?:\s*```text\n(.*?)```)?", README, re.S)
    assert blocks and all(shown for code, shown in blocks if "print(" in code)
    for code, shown in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
        assert out.getvalue() == shown, f"README block prints {out.getvalue()!r}, the README shows {shown!r}"


def test_make_targets_and_configs_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in re.findall(r"^make ([\w-]+)", README, re.M):
        assert re.search(rf"^{target}:", makefile, re.M), target
    for cfg in set(re.findall(r"configs/[\w/]+\.cfg", README)):
        if "<model>" not in cfg:
            assert (REPO / cfg).is_file(), cfg
    assert "make test" in (REPO / ".ci/run").read_text()
    for module in set(re.findall(r"python -m ((?:keras_seg|data_prep)\.\w+)", README)):
        path = REPO / module.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module
    from keras_seg.cli import COMMANDS, DATASETS  # pylint: disable=import-outside-toplevel

    commands = re.findall(r"keras-seg ([\w-]+)(?: (\w+))?", README)
    assert commands
    for command, arg in commands:
        assert command in COMMANDS or command in ("prepare", "models"), command
        if command == "prepare":
            assert arg in DATASETS, arg
