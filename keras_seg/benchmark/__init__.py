"""Benchmarks of keras_seg: ``python -m keras_seg.benchmark`` (see :mod:`keras_seg.benchmark.__main__`).

* :mod:`.timing`: timers, peak memory, machine facts;
* :mod:`.flops`: profiler FLOP counts and the machine's measured ceiling;
* :mod:`.model_bench`: one model's inference, export and training numbers (own process);
* :mod:`.pipeline`: the input pipeline against a PIL + NumPy generator;
* :mod:`.report`: markdown tables and the sections of ``benchmarks/RESULTS.md``.
"""
