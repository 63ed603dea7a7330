"""Analysis tools.

* :mod:`attnkit.analysis.approx` -- relative error of sparse patterns and linear
  attention against full softmax attention (``python -m attnkit.analysis.approx``).

Submodules are imported on demand (``from attnkit.analysis import approx``).
"""
