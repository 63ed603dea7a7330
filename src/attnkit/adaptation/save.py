"""The adapted model as a Hugging Face directory: ``config.json`` (with the adaptation
record under ``attnkit_adapted``: variant, the ``attn_implementation`` name to load it
with, teacher, recipe, fidelity before and after, and the learned attention tensors),
``model.safetensors`` (exactly the tensors of its transformers class), the learned
tensors in their own file (:mod:`attnkit.integrations.hf.learned`) and the tokenizer."""
from __future__ import annotations

from pathlib import Path

from ..integrations.hf import learned

__all__ = ["save_adapted", "RUN_FILE", "check_out"]

RUN_FILE = "adapt.json"      # the run's settings (written first; resume reads it)


def check_out(out: Path, resume: bool) -> None:
    """Refuse an ``--out`` that holds something else (ValueError, one line)."""
    if resume:
        if not (out / RUN_FILE).is_file():
            raise ValueError(f"--resume: {out} holds no adapt run (no {RUN_FILE})")
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file, expected a directory")
    if out.is_dir() and any(out.iterdir()):
        what = ("an adapt run (continue it with --resume)" if (out / RUN_FILE).is_file()
                else "another model (config.json)" if (out / "config.json").is_file()
                else "other files")
        raise ValueError(f"--out: {out} already holds {what}; give an empty or new directory")


def save_adapted(pair, out: Path, record: dict) -> dict:
    """Write the student as a transformers directory into ``out``; returns the record
    stored in its config."""
    student = pair.student
    rec = dict(record, variant=pair.variant.text, implementation=pair.name, learned=None)
    marker = f".{learned.ATTR}."
    state = {k: v for k, v in student.state_dict().items() if marker not in k}
    if pair.variant.learned and pair.variant.is_linear:
        rec["learned"] = {"file": learned.FILE, "tensors": learned.save_learned(student, out)}
    student.config.attnkit_adapted = rec
    try:
        student.save_pretrained(str(out), state_dict=state)
    finally:
        del student.config.attnkit_adapted
    pair.source.tokenizer.save_pretrained(str(out))
    return rec
