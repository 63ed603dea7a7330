"""``attnkit adapt`` data parallel under torchrun (gloo, CPU, 2 processes) on the tiny random
Hugging Face models of tests/test_adapt.py: the adapted weights and the held-out history
equal a single-process run on the same global batches up to float summation order (both
stages: attention transfer and distillation; an encoder and a GQA decoder), Ctrl-C, then SIGKILL
of the whole job, each followed by ``--resume`` under torchrun, ends bit-identical to the
uninterrupted 2-process run, and a batch that does not split over the processes is refused in one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import attnkit.hf  # noqa: E402
from test_adapt import ENV, FAST, TEXT, _run, models  # noqa: F401  (models: the fixture)

ARGS = ["--seq", "32", "--batch-size", "4", "--eval-windows", "8", "--lr1", "1e-2",
        "--lr2", "3e-3", "--threads", "1", "--no-progress"]


def _torchrun(*args, nproc=2):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", "-m", "attnkit", "adapt", *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(p, timeout=240) -> str:
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out
    return out


def _weights(d) -> dict:
    maps = d / "attnkit_attention.safetensors"       # linear:hedgehog's learned maps
    return load_file(str(d / "model.safetensors")) | (
        {f"maps.{k}": v for k, v in load_file(str(maps)).items()} if maps.exists() else {})


def _record(d) -> dict:
    return json.loads((d / "config.json").read_text())["attnkit_adapted"]


# A key bias adds q.b_k to every score of a query: softmax ignores it, so its gradient is
# float noise (~1e-9), which Adam scales up to lr-sized steps that differ with the order of
# the sums (measured: 4e-3 apart after 6 steps, every other tensor within 6e-7). It changes
# no output, so the models' outputs are compared instead.
KEY_BIAS_FREE = {f"encoder.layer.{i}.attention.self.key.bias" for i in range(2)}


def _cli_args(model, variant, steps, stage1):
    return ["--model", model, "--variant", variant, "--text", str(TEXT), "--steps", str(steps),
            "--stage1-steps", str(stage1), "--eval-every", "2", *ARGS]


@pytest.mark.parametrize("kind, variant, w", [("encoder", "window:2", None),
                                              ("decoder", "gqa:1", None),
                                              ("decoder", "gqa:1", 1.0),
                                              ("decoder", "linear:hedgehog", None)])
def test_two_processes_match_one_process(models, tmp_path, kind, variant, w):  # noqa: F811
    """6 steps (3 of attention transfer, 3 of distillation), 2 processes of 2 windows each
    vs 1 process of 4 windows (linear:hedgehog: stage 1 with its weight-matching term,
    whose row counts are summed over the processes; gqa:1 with --stage1-weights 1: its
    softmax-row term, the same): weights (but the key biases, see
    above; the learned maps included) and the adapted
    models' outputs within 1e-4 (relative) / 1e-5, held-out fidelity within 1e-4; the
    2-process run logs once (rank 0 only)."""
    # the weight term's case: stage 1 only (what it trains: the pooled K/V projections;
    # a stage 2 after it drifts Adam-scaled float noise into o_proj, 4e-5, outputs equal)
    extra, s1 = ([], 3) if w is None else (["--stage1-weights", str(w)], 6)
    out = _finish(_torchrun(*_cli_args(models[kind], variant, 6, s1), *extra, "--out",
                            str(tmp_path / "ddp")))
    assert out.count("zero-shot") == 1 and out.count("adapted (6 steps") == 1, out
    _run(models[kind], variant, tmp_path / "one", steps=6, stage1_steps=s1, eval_every=2,
         **({} if w is None else {"stage1_weights": w}))
    if w is not None:
        assert _record(tmp_path / "ddp")["stage1"]["weights"] == w
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "ddp")
    base = load_file(os.path.join(models[kind], "model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], base[k]) for k in a)
    for k in a:
        if k not in KEY_BIAS_FREE:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    ids = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = (attnkit.hf.from_pretrained(tmp_path / d)(ids)[0] for d in ("one", "ddp"))
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)
    ra, rb = _record(tmp_path / "one"), _record(tmp_path / "ddp")
    assert (ra["processes"], rb["processes"]) == (1, 2)
    assert [h["step"] for h in ra["history"]] == [h["step"] for h in rb["history"]] \
        == [0, 2, 4, 6]
    for ha, hb in zip(ra["history"], rb["history"]):
        for m, v in ha.items():
            if isinstance(v, float):
                assert hb[m] == pytest.approx(v, rel=1e-4, abs=1e-6), (ha["step"], m)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(x) for x in out.split()]


def _latest(run) -> int:
    ptr = run / "ckpt" / "latest"
    if not ptr.exists():
        return 0
    return json.loads((run / "ckpt" / ptr.read_text().strip() / "state.json").read_text())["step"]


def _wait_past(p, run, step: int) -> None:
    t0 = time.time()
    while _latest(run) <= step and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.005)


@pytest.mark.slow
def test_sigint_sigkill_then_resume_under_torchrun_is_bit_exact(models, tmp_path):  # noqa: F811
    """One run stopped twice: Ctrl-C to torchrun's agent after the first checkpoint (it
    forwards SIGINT once to the workers: they finish the step, agree, checkpoint and say
    how to resume), then resumed under torchrun and SIGKILLed (agent and both workers)
    after a later checkpoint, then resumed again: the same weights and history, to the
    bit, as the uninterrupted 2-process run."""
    steps = 40
    args = [*_cli_args(models["encoder"], "linear:hedgehog", steps, 12), "--ckpt-every", "1"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    _finish(_torchrun(*args, "--out", str(ref)))
    p = _torchrun(*args, "--out", str(run))
    _wait_past(p, run, 0)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    stopped = _latest(run)
    assert 0 < stopped < steps and f"interrupted at step {stopped};" in out, out
    p = _torchrun("--resume", str(run), "--no-progress")
    _wait_past(p, run, stopped)
    workers = _children(p.pid)
    for pid in [*workers, p.pid]:
        os.kill(pid, signal.SIGKILL)
    p.communicate()
    assert len(workers) == 2 and stopped < _latest(run) < steps and \
        not (run / "config.json").exists()
    out = _finish(_torchrun("--resume", str(run), "--no-progress"))
    assert f"adapted ({steps} steps" in out, out
    for f in ("model.safetensors", "attnkit_attention.safetensors"):
        a, b = load_file(str(ref / f)), load_file(str(run / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert _record(ref)["history"] == _record(run)["history"]


def test_batch_that_does_not_split_is_refused(models, tmp_path):  # noqa: F811
    p = _torchrun(*_cli_args(models["encoder"], "window:2", 2, 1), "--batch-size", "3",
                  "--out", str(tmp_path / "out"))
    out, _ = p.communicate(timeout=240)
    assert p.returncode != 0
    lines = [x for x in out.splitlines() if "--batch-size" in x]
    assert lines and all("--batch-size: expected a multiple of the 2 processes" in x
                         for x in lines), out
    assert not (tmp_path / "out").exists()
