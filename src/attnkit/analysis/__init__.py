"""Analysis tools.

* :mod:`attnkit.analysis.approx` -- relative error of sparse patterns and linear
  attention against full softmax attention (``python -m attnkit.analysis.approx``).
* ``attnkit inspect``'s parts: :mod:`~attnkit.analysis.sources` (which implementation
  runs a checkpoint: attnkit's port or transformers, and the checks before it runs),
  :mod:`~attnkit.analysis.hf` / :mod:`~attnkit.analysis.hf_capture` (the transformers
  path), :mod:`~attnkit.analysis.capture` (views of attention maps),
  :mod:`~attnkit.analysis.words` (tokens -> words for any tokenizer),
  :mod:`~attnkit.analysis.inspect` (head types, ranking by contrast),
  :mod:`~attnkit.analysis.plots` (PNGs) and :mod:`~attnkit.analysis.viewer` (the page).

Submodules are imported on demand (``from attnkit.analysis import approx``).
"""
