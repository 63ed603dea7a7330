"""``attnkit train``: attention variants on tasks from the literature.

:class:`TrainConfig` is one run; :func:`train` runs (or resumes) it into a directory
with atomic safetensors checkpoints; :func:`run_sweep` trains a grid and writes the
quality table. ``python -m attnkit.train`` is the command line (also under torchrun,
for data parallelism).
"""
from .checkpoint import CheckpointError, latest_checkpoint
from .config import TrainConfig, parse_task_spec
from .loop import RunExists, TrainingInterrupted, lr_at, train
from .recipe import apply_recipe
from .sweep import run_sweep, write_table

__all__ = ["TrainConfig", "parse_task_spec", "train", "lr_at", "RunExists", "TrainingInterrupted",
           "apply_recipe", "run_sweep",
           "write_table", "CheckpointError", "latest_checkpoint"]
