"""Training tasks from the literature, generated (or read from files that packages ship):
nothing is downloaded. See :mod:`.base` for the batch formats and seeding.

=====================  ========  =====================================================
name                   kind      what
=====================  ========  =====================================================
``mqar``               lm        multi-query associative recall (Zoology, Arora et al. 2023)
``assoc_recall``       lm        associative recall (H3, Fu et al. 2023)
``induction``          lm        induction heads (H3)
``selective_copy``     lm        selective copying (Mamba, Gu & Dao 2023)
``listops``            lm        ListOps (Long Range Arena generator, Tay et al. 2020)
``reverse``/``sort``   seq2seq   toy translation with separate vocabularies
``digits``             image     scikit-learn's bundled 8x8 digits
``karate``             graph     Zachary's karate club (networkx), node classification
``lm``                 lm        next-token prediction on the user's text files (a tokenizer
                                 trained on them; a Llama-style decoder, see :mod:`.text`)
=====================  ========  =====================================================
"""
from .base import (IGNORE, KINDS, Task, make_task, parse_task_args, register_task, seed_for,
                   task_names)
from . import recall, listops, translation, digits, graph, text  # noqa: F401  (register the tasks)

__all__ = ["IGNORE", "KINDS", "Task", "make_task", "parse_task_args", "register_task",
           "seed_for", "task_names"]
