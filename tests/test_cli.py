"""`keras-seg`: subcommand dispatch, `models`, and flagfiles that resolve next to the file naming them."""

import os
import subprocess
import sys

import pytest

from keras_seg import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_nested_flagfile_resolves_next_to_its_referrer(tmp_path, monkeypatch):
    _write(tmp_path / "cfg/base/common.cfg", "# shared\n--num_classes=11\n\n// absl comment\n--batch_size=4\n")
    top = _write(tmp_path / "cfg/zoo/run.cfg", "--flagfile=../base/common.cfg\n--model=enet\n--batch_size=10\n")
    monkeypatch.chdir(tmp_path / "cfg")  # "../base/common.cfg" does not exist from here
    assert cli.expand_flagfiles(["prog", f"--flagfile={top}", "--seed=1"]) == [
        "prog", "--num_classes=11", "--batch_size=4", "--model=enet", "--batch_size=10", "--seed=1"]


def test_nested_flagfile_falls_back_to_the_working_directory(tmp_path, monkeypatch):
    # this repository's configs name configs/base/... from the repository root
    _write(tmp_path / "configs/base/camvid.cfg", "--num_classes=11\n")
    top = _write(tmp_path / "configs/zoo/enet.cfg", "--flagfile=configs/base/camvid.cfg\n--model=enet\n")
    monkeypatch.chdir(tmp_path)
    assert cli.expand_flagfiles([f"--flagfile={top}"]) == ["--num_classes=11", "--model=enet"]


def test_every_shipped_config_expands(monkeypatch):
    monkeypatch.chdir(REPO)
    for root, _, files in os.walk(os.path.join(REPO, "configs")):
        for name in files:
            flags = cli.expand_flagfiles([f"--flagfile={os.path.join(root, name)}"])
            assert flags and all(f.startswith("--") and not f.startswith("--flagfile") for f in flags), name


def test_bad_flagfiles_name_the_referrer(tmp_path):
    top = _write(tmp_path / "a.cfg", "--flagfile=missing.cfg\n")
    with pytest.raises(cli.FlagfileError, match=r"'missing.cfg' \(named in .*a.cfg\) not found"):
        cli.expand_flagfiles([f"--flagfile={top}"])
    loop = _write(tmp_path / "loop.cfg", "--flagfile=loop.cfg\n")
    with pytest.raises(cli.FlagfileError, match="includes itself"):
        cli.expand_flagfiles([f"--flagfile={loop}"])


def _keras_seg(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "keras_seg.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_usage_and_unknown_commands():
    res = _keras_seg()
    assert res.returncode == 2 and "prepare" in res.stdout and "models" in res.stdout
    res = _keras_seg("trian")
    assert res.returncode == 2 and "unknown command 'trian'" in res.stderr
    res = _keras_seg("prepare", "kitti")
    assert res.returncode == 2 and "one of camvid, voc" in res.stderr and "'kitti'" in res.stderr


def test_models_lists_options_inference_options_and_weights():
    res = _keras_seg("models", "unet_pp", "enet")
    assert res.returncode == 0, res.stderr
    assert "unet_pp: Zhou et al." in res.stdout and "inference options (change after training): head" in res.stdout
    assert "shipped weights: enet_camvid" in res.stdout and "stage1_blocks=4" in res.stdout
    res = _keras_seg("models", "unet++")
    assert res.returncode == 1 and "unknown model(s) ['unet++']" in res.stderr


def test_prepare_runs_the_converter_module(tmp_path):
    res = _keras_seg("prepare", "shapes", f"--out_dir={tmp_path / 'shapes'}", "--num_train=2", "--num_val=1", "--size=32")
    assert res.returncode == 0, res.stderr
    assert len(os.listdir(tmp_path / "shapes" / "images" / "train")) == 2


def test_train_reads_nested_relative_flagfiles_and_python_m_too(tmp_path):
    # A nested flagfile whose value the trainer refuses: the error proves the flag was read.
    _write(tmp_path / "base" / "bad.cfg", "--model=not_a_model\n")
    top = _write(tmp_path / "zoo" / "run.cfg", "--flagfile=../base/bad.cfg\n")
    for command in ([sys.executable, "-m", "keras_seg.cli", "train"], [sys.executable, "-m", "keras_seg.train"]):
        res = subprocess.run([*command, f"--flagfile={top}", f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'm'}",
                              "--num_classes=3"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 1, res.stderr
        assert "not_a_model" in res.stderr and "flagfile" not in res.stderr.lower()
    res = subprocess.run([sys.executable, "-m", "keras_seg.cli", "train", "--flagfile=nope.cfg"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "flagfile 'nope.cfg' not found" in res.stderr
