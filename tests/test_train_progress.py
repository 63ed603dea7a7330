"""`attnkit train` writing to a file (not a terminal) prints plain progress lines."""
import torch

from attnkit.train.config import TrainConfig
from attnkit.train.loop import train


def test_progress_lines_when_stderr_is_a_file(tmp_path, capsys):
    torch.set_num_threads(1)
    cfg = TrainConfig(task="induction", steps=20, eval_every=20, ckpt_every=20, batch_size=8)
    train(cfg, tmp_path / "run", progress=True, log=None)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "step " in x and "/20" in x]
    assert len(lines) >= 10, err                 # every 10% of the steps
    assert lines[-1].split(": step ")[1].startswith("20/20 (100%)") and "loss" in lines[-1]
    assert "\x1b[" not in err                    # no terminal control codes
