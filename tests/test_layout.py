"""keras_seg.layout.ModelDir: the one place that names the files of a training directory."""

import os

import pytest

from keras_seg.layout import ModelDir


def test_paths():
    d = ModelDir("runs/x")
    assert d.model_config == os.path.join("runs/x", "model_config.json")
    assert d.flags_txt == os.path.join("runs/x", "flags.txt")
    assert (d.checkpoint_dir("latest"), d.checkpoint_dir("best")) == (d.latest_dir, d.best_dir)
    assert d.latest_dir == os.path.join("runs/x", "ckpt") and d.best_json == os.path.join("runs/x", "best", "best.json")
    assert d.metrics_json(250) == os.path.join("runs/x", "eval", "metrics-00000250.json")
    assert d.evaluate_json("test", 1750, "-flip") == os.path.join("runs/x", "eval", "evaluate-test-00001750-flip.json")
    assert d.worker_tmp(2) == os.path.join("runs/x", ".tmp-worker-2")
    with pytest.raises(ValueError, match="which must be 'latest' or 'best'"):
        d.checkpoint_dir("newest")
