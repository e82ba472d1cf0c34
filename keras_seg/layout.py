"""The ``model_dir`` of a training run: every path in it, in one place (no TensorFlow).

``model_dir/``::

    flags.txt            resolved training flags (replay with --flagfile)
    model_config.json    model name, num_classes, options, input preprocessing, class names,
                         palette, ignore label, and the --mixed_precision of the latest
                         training command
    ckpt/                latest checkpoints (tf.train.CheckpointManager); unreadable ones
                         found on resume are renamed *.corrupt
    best/                checkpoint with the best eval mean IoU, and best.json
    eval/                metrics-<step>.json per evaluation during training, and the
                         evaluate command's evaluate-<split>-<step><mode>.json and pictures
    train/, eval/        TensorBoard event files
    .tmp-worker-<i>/     multi-worker only, for an instant: another worker's copy of a
                         checkpoint being saved (only the chief's is kept)
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["ModelDir"]


@dataclasses.dataclass(frozen=True)
class ModelDir:
    """The paths of one training directory ``root``."""

    root: str

    def _join(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def flags_txt(self) -> str:
        return self._join("flags.txt")

    @property
    def model_config(self) -> str:
        return self._join("model_config.json")

    @property
    def latest_dir(self) -> str:
        return self._join("ckpt")

    @property
    def best_dir(self) -> str:
        return self._join("best")

    @property
    def best_json(self) -> str:
        return self._join("best", "best.json")

    @property
    def train_dir(self) -> str:
        """TensorBoard summaries of training (loss, learning rate, images/s)."""
        return self._join("train")

    @property
    def eval_dir(self) -> str:
        """TensorBoard summaries and metrics JSON of every evaluation."""
        return self._join("eval")

    def checkpoint_dir(self, which: str) -> str:
        """``ckpt/`` for ``latest``, ``best/`` for ``best``."""
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'latest' or 'best'. Received: which={which!r}")
        return self.latest_dir if which == "latest" else self.best_dir

    def metrics_json(self, step: int) -> str:
        """The metrics of the evaluation at ``step`` during training."""
        return self._join("eval", f"metrics-{step:08d}.json")

    def evaluate_json(self, split: str, step: int, tag: str = "") -> str:
        """The evaluate command's record of ``split`` at checkpoint ``step``; ``tag`` names the mode."""
        return self._join("eval", f"evaluate-{split}-{step:08d}{tag}.json")

    def worker_tmp(self, index: int) -> str:
        """Where non-chief worker ``index`` writes its throw-away copy of a checkpoint."""
        return self._join(f".tmp-worker-{index}")
