"""The benchmarks: one module a protocol, each run from the repository root as ``python -m benchmarks.NAME``.

- :mod:`benchmarks.common`: what they share (the command line, the machine record, held-out pairs with landmarks,
  :func:`~benchmarks.common.evaluate_field`, :func:`~benchmarks.common.summarise`, measured runs, result files);
- :mod:`benchmarks.peers`: the classical and learned peers, each returning a field in the project's convention;
- ``peers_side_by_side``, ``fewshot_2d``, ``testtime_3d``, ``scaling``, ``clinical_size``, ``slicer_module`` and
  ``zoo_heldout``: the benchmarks themselves (``python -m benchmarks.NAME --help`` says what each measures).

``bash benchmarks/setup.sh`` installs the peers; the results go to ``benchmarks/results/``.
"""
