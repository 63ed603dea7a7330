"""Resuming runs exactly: SIGKILL then ``--resume DIR`` alone (the run's settings, the
thread count included, restored from the run directory), Ctrl-C (one line saying how to
resume, exit code 130, then bit-identical), extension with ``--resume DIR --steps N``
(equal to a run started with N steps; refused for the cosine schedule), and damaged
config.json files refused with one line naming the field."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnkit.train import CheckpointError, TrainConfig, train

PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
TINY = ["--task", "mqar:seq_len=32:vocab_size=64:n_pairs=4", "--width", "32", "--steps", "40",
        "--batch-size", "16", "--eval-every", "20", "--ckpt-every", "5", "--eval-batch-size",
        "200", "--no-progress"]


def _cli(*args, timeout=180, env=ENV):
    return subprocess.run([PY, "-m", "attnkit.train", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _metrics(d: Path) -> dict:
    return json.loads((d / "metrics.json").read_text())


def _weights(d: Path) -> dict:
    name = (d / "ckpt" / "latest").read_text().strip()
    return load_file(str(d / "ckpt" / name / "model.safetensors"))


def _same(a: Path, b: Path) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert ma["final_loss"] == mb["final_loss"] and ma["history"] == mb["history"]
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _wait_started(run: Path, p: subprocess.Popen, timeout=60) -> None:
    t0 = time.time()
    while not (run / "ckpt" / "latest").exists() and time.time() - t0 < timeout \
            and p.poll() is None:
        time.sleep(0.01)


# ----------------------------------------------------------------------------- SIGKILL
@pytest.mark.slow
def test_sigkill_then_resume_dir_alone_is_bit_exact(tmp_path):
    """A ``--threads 1`` run killed with SIGKILL at random instants (3 times) and resumed
    each time with ``--resume DIR`` alone (torch would default to every core): the final
    loss, history and weights equal an uninterrupted run's, to the bit."""
    env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}     # torch's default
    ref = tmp_path / "ref"
    args = [*TINY, "--steps", "400", "--ckpt-every", "7", "--eval-every", "100",
            "--threads", "1"]
    t0 = time.time()
    r = _cli(*args, "--out", str(ref), env=env)
    runtime = time.time() - t0
    assert r.returncode == 0, r.stderr
    assert json.loads((ref / "settings.json").read_text())["threads"] == 1
    run = tmp_path / "run"
    rng = random.Random(1234)
    kills, started = 0, False
    for _ in range(12):
        cmd = ["--resume", str(run), "--no-progress"] if started else [*args, "--out", str(run)]
        p = subprocess.Popen([PY, "-m", "attnkit.train", *cmd], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < 3:
            if not started:
                _wait_started(run, p)
            time.sleep(rng.uniform(0.05, 0.4) * runtime)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills, started = kills + 1, True
                continue
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        assert "warning" not in err, err                      # settings restored: no warning
        started = True
        if (run / "metrics.json").exists():
            break
    assert kills >= 2, "the run ended before it could be killed twice"
    _same(ref, run)


def test_resume_warns_when_threads_differ(tmp_path, capsys):
    d = tmp_path / "r"
    cfg = TrainConfig(task="induction", steps=6, ckpt_every=3, eval_every=6, batch_size=4)
    try:
        train(cfg, d, progress=False, log=None, threads=1)
        s = json.loads((d / "settings.json").read_text())
        assert s["threads"] == 1 and s["deterministic"] is False
        assert s["default_dtype"] == "float32" and s["torch"] == torch.__version__
        (d / "metrics.json").unlink()
        train(None, d, resume=True, progress=False, log=lambda *a: None, threads=2)
        warn = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
        assert len(warn) == 1 and "--threads 2 differs from the run's 1" in warn[0], warn
        torch.set_num_threads(3)
        train(None, d, resume=True, progress=False, log=lambda *a: None)   # restored: silent
        assert torch.get_num_threads() == 1 and "warning" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(1)


# ----------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
def test_ctrl_c_leaves_a_checkpoint_and_says_how_to_resume(tmp_path):
    args = [*TINY, "--steps", "600", "--ckpt-every", "100", "--eval-every", "50",
            "--threads", "1"]
    ref = tmp_path / "ref"
    assert _cli(*args, "--out", str(ref)).returncode == 0
    run = tmp_path / "run"
    p = subprocess.Popen([PY, "-m", "attnkit.train", *args, "--out", str(run)], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_started(run, p)                         # in the loop: its first checkpoint is there
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"attnkit train --resume {run}" in lines[0], err
    step = int(lines[0].split("checkpoint at step ")[1].split()[0])
    assert 100 <= step < 600 and (run / "ckpt" / f"step-{step:06d}").is_dir()
    r = _cli("--resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    _same(ref, run)


# ----------------------------------------------------------------------------- extension
def test_extend_a_finished_run_equals_a_longer_run(tmp_path):
    torch.set_num_threads(1)
    kw = dict(task="induction", batch_size=16, eval_every=8, ckpt_every=10, dropout=0.1)
    long = train(TrainConfig(steps=36, **kw), tmp_path / "long", progress=False, log=None)
    short = train(TrainConfig(steps=20, **kw), tmp_path / "ext", progress=False, log=None)
    assert [h["step"] for h in short["history"]] == [8, 16, 20]
    ext = train(None, tmp_path / "ext", resume=True, steps=36, progress=False, log=None)
    assert ext["steps"] == 36 and ext["final_loss"] == long["final_loss"]
    # the evaluation at the old end (20, off the grid of 8) is dropped from the history
    assert ext["history"] == long["history"]
    assert json.loads((tmp_path / "ext" / "config.json").read_text())["steps"] == 36
    wa, wb = _weights(tmp_path / "long"), _weights(tmp_path / "ext")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_extension_refusals_are_one_line(tmp_path):
    kw = dict(task="induction", steps=10, ckpt_every=5, eval_every=10, batch_size=4)
    train(TrainConfig(schedule="cosine", **kw), tmp_path / "cos", progress=False, log=None)
    train(TrainConfig(**kw), tmp_path / "const", progress=False, log=None)
    for args, msg in [
        (["--resume", str(tmp_path / "cos"), "--steps", "20"],
         "cosine schedule decays over its 10 steps, so its learning rate at every step "
         "differs from a 20-step run's: it cannot be extended exactly; start a new run with "
         "--steps 20"),
        (["--resume", str(tmp_path / "const"), "--steps", "5"],
         "already at step 10; expected --steps >= 10"),
        (["--resume", str(tmp_path / "const"), "--lr", "0.1", "--steps", "20"], "drop --lr"),
    ]:
        r = _cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert msg in r.stderr, r.stderr


# ----------------------------------------------------------------------------- config.json
DAMAGE = [
    (lambda c: c.pop("width"), "missing field(s) width"),
    (lambda c: c.update(width="64"), "width: expected an int >= 1, got '64'"),
    (lambda c: c.update(widht=c.pop("width")), "unknown field(s) widht; missing field(s) width"),
    (lambda c: c.update(lr=None), "lr: expected a number"),
    (lambda c: c.update(positions=3), "positions: expected a string, got 3"),
    (lambda c: c.update(tie_output="no"), "tie_output: expected true or false"),
    (lambda c: c.update(init="xavier"), "init: expected one of scaled, normal, torch"),
    (lambda c: c.pop("schedule"), "missing field(s) schedule"),
]


def test_damaged_config_is_refused_naming_the_field(tmp_path):
    d = tmp_path / "run"
    cfg = TrainConfig(task="induction", steps=4, ckpt_every=2, eval_every=4, batch_size=4)
    train(cfg, d, progress=False, log=None)
    good = json.loads((d / "config.json").read_text())
    for i, (edit, msg) in enumerate(DAMAGE):
        c = dict(good)
        edit(c)
        (d / "config.json").write_text(json.dumps(c))
        with pytest.raises(CheckpointError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            train(None, d, resume=True, progress=False, log=None)
        if i < 2:                                   # the CLI: one line, exit code 2
            r = _cli("--resume", str(d))
            assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert "config.json" in r.stderr and msg in r.stderr


def test_config_from_before_the_recipe_fields_resumes_with_its_recipe(tmp_path):
    keys = ("init", "embed_std", "tie_output", "schedule", "target_acc")
    c = json.loads(TrainConfig(task="mqar").to_json())
    old = {k: v for k, v in c.items() if k not in keys}
    cfg = TrainConfig.from_json(json.dumps(old))
    assert (cfg.init, cfg.embed_std, cfg.tie_output, cfg.schedule) == \
        ("normal", 0.02, True, "cosine")
    v = TrainConfig.from_json(json.dumps({**old, "task": "digits", "model": "vit"}))
    assert v.init == "model" and v.schedule == "cosine"
    with pytest.raises(ValueError, match="missing field\\(s\\) init, tie_output"):
        TrainConfig.from_json(json.dumps({k: v for k, v in c.items()
                                          if k not in ("init", "tie_output")}))
