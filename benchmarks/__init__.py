"""Benchmarks of keras_seg, and the PyTorch reference models they compare against.

They ship with the source repository, not in the installed package. From the repository root:
``python -m benchmarks`` (or ``keras-seg benchmark``) measures every model and writes
``benchmarks/RESULTS.md`` (:mod:`benchmarks.__main__`); the scripts beside it add sections.

* :mod:`.timing`: timers, peak memory, machine facts;
* :mod:`.flops`: profiler FLOP counts and the machine's measured ceiling;
* :mod:`.model_bench`: one model's inference, export and training numbers (own process);
* :mod:`.tables`: the per-model tables;
* :mod:`.realsize`: the trainer at each shipped config's crop and batch size;
* :mod:`.pipeline`: the input pipeline against a PIL + NumPy generator (:mod:`.pipeline_data`,
  :mod:`.pipeline_numpy`), reported by :mod:`.pipeline_sections`;
* :mod:`.report`: markdown tables and the sections of ``benchmarks/RESULTS.md``;
* :mod:`.litert_ops`: which TFLite ops XNNPACK runs, and each op's time (``int8_ops.py``);
* scripts: ``compare_torch.py`` (with the twins of ``torch_models.py``), ``int8_ops.py``,
  ``inference_modes.py``, ``eval_retracing.py``.
"""

import pathlib

#: The repository root: configs, data_prep and ``python -m benchmarks.<module>`` children run from it.
REPO = pathlib.Path(__file__).resolve().parents[1]
