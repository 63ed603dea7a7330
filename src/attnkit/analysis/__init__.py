"""Analysis tools.

* :mod:`attnkit.analysis.approx` -- relative error of sparse patterns and linear
  attention against full softmax attention (``python -m attnkit.analysis.approx``).
* ``attnkit inspect``'s parts on the captures of :mod:`attnkit.sources` (which opens and
  runs the model, attnkit's port or transformers, and captures the maps):
  :mod:`~attnkit.analysis.inspect` (head types, ranking by contrast),
  :mod:`~attnkit.analysis.plots` (PNGs) and :mod:`~attnkit.analysis.viewer` (the page).

Submodules are imported on demand (``from attnkit.analysis import approx``).
"""
