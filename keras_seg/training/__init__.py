"""Training: the distributed loop and its parts.

- :mod:`~keras_seg.training.loop`: :func:`train` and its controller, which runs the step
  function and, at step boundaries, the hooks: progress log, checkpoint, evaluation;
- :mod:`~keras_seg.training.checkpointing`: latest and best checkpoints on every worker,
  resume, and the dropout RNG state;
- :mod:`~keras_seg.training.model_dir`: the run's ``model_config.json``, checks of the
  model_dir before training, and writes that name their path, step and last good
  checkpoint when they fail;
- :mod:`~keras_seg.training.step`: the training step and the ``steps_per_loop`` loop;
- :mod:`~keras_seg.training.schedule`: the poly learning-rate schedule with warm-up, the
  optimizer and which variables weight decay touches;
- :mod:`~keras_seg.training.evaluation`: scores over a dataset (also the evaluate command's),
  the IoU table and JSON, and the eval pictures;
- :mod:`~keras_seg.training.summaries`: TensorBoard scalars and PNG images.
"""

from keras_seg.training.evaluation import (evaluate, format_group_table, format_iou_table, scores_to_json,
                                           write_eval_images)
from keras_seg.training.checkpointing import seed_generator_states
from keras_seg.training.loop import NonFiniteLossError, TrainResult, train
from keras_seg.training.model_dir import ModelDirWriteError
from keras_seg.training.schedule import NO_DECAY, PolyWithWarmup, build_optimizer, decayed_variables, make_optimizer
from keras_seg.training.step import make_train_loop, make_train_step, steps_until_boundary
from keras_seg.training.summaries import write_png, write_scalar

__all__ = [
    "ModelDirWriteError", "NonFiniteLossError", "NO_DECAY", "PolyWithWarmup", "TrainResult", "build_optimizer",
    "decayed_variables",
    "evaluate", "format_group_table", "format_iou_table", "make_optimizer", "make_train_loop", "make_train_step",
    "scores_to_json",
    "seed_generator_states", "steps_until_boundary", "train", "write_eval_images", "write_png", "write_scalar",
]
