"""Checkpoints that survive ``kill -9`` at any instant.

Layout of a run directory::

    config.json               the TrainConfig (written once, atomically)
    ckpt/step-000200/         one checkpoint:
        model.safetensors       weights (safetensors, shared tensors handled)
        optim.safetensors       the optimizer's tensors, the torch RNG state(s)
        state.json              step, optimizer hyper-parameters, history, elapsed time
    ckpt/latest               the name of the newest *complete* checkpoint
    metrics.json              final metrics (when the run ends)

Atomicity: a checkpoint is written into a hidden temporary directory, every file
flushed to disk, then renamed into place; only then is ``latest`` replaced (temp file
+ ``os.replace``). A kill before the rename leaves ``latest`` on the previous
checkpoint (the temporary directory is removed on the next start); a kill after it
leaves a complete checkpoint. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "write_atomic",
           "clean_partial", "CheckpointError"]


from ..core.errors import CheckpointError  # noqa: E402  (one class for every checkpoint)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flush(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that readers see the old or the new file, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def clean_partial(run_dir: Path) -> None:
    """Remove temporary files/directories left by a killed writer."""
    for d in (Path(run_dir), Path(run_dir) / "ckpt"):
        if d.is_dir():
            for p in d.glob(".*.tmp-*"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def _optim_tensors(optimizer) -> tuple[dict, dict]:
    """optimizer.state_dict() -> (tensors for safetensors, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict,
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` of ``model`` (unwrapped), ``optimizer``, the RNG and the
    JSON-able ``state``; point ``latest`` at it; keep the newest ``keep``."""
    root = Path(run_dir) / "ckpt"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    tensors, meta = _optim_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_file(tensors, str(tmp / "optim.safetensors"))
    with open(tmp / "state.json", "w") as f:
        json.dump({**state, "step": step, "optimizer": meta}, f, indent=1)
    for p in tmp.iterdir():
        _flush(p)
    _fsync_dir(tmp)
    final = root / name
    if final.exists():          # left by a run killed before it moved `latest` here
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    write_atomic(root / "latest", name + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or None when the run has none yet."""
    ptr = Path(run_dir) / "ckpt" / "latest"
    if not ptr.exists():
        return None
    path = ptr.parent / ptr.read_text().strip()
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{ptr}: names {path.name}, which has no state.json")
    return path


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore ``model``, ``optimizer`` and the RNG from ``path``; return its state dict."""
    path = Path(path)
    for f in ("model.safetensors", "optim.safetensors", "state.json"):
        if not (path / f).is_file():
            raise CheckpointError(f"{path / f}: missing (a checkpoint holds model.safetensors, "
                                  f"optim.safetensors and state.json)")
    try:
        state = json.loads((path / "state.json").read_text())
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        tensors = load_file(str(path / "optim.safetensors"))
    except (ValueError, OSError, SafetensorError) as e:       # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path / 'model.safetensors'}: does not fit the model "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    meta = state.pop("optimizer")
    opt_state: dict = {}
    for key, t in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = t
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = v
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g
              for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return state
