"""The CLI's contract across every subcommand: each option's stated default is the default
it gets, and a user error is one line on stderr with exit code 2 (never a traceback)."""
import re
import subprocess
import sys

import pytest

from attnkit.cli import build_parser

PY = sys.executable


def subparsers():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    return sub.choices


DEFAULT = re.compile(r"\(default:? ([^()]*(?:\([^()]*\)[^()]*)*)\)")


def stated_defaults(parser):
    """{option: (action, stated default text)} for every option whose help says
    '(default X)' or '(default: X)'."""
    out = {}
    for a in parser._actions:
        if a.help and a.option_strings:
            m = DEFAULT.search(" ".join(a.help.split()))
            if m:
                out[a.option_strings[-1]] = (a, m.group(1).strip())
    return out


def _matches(action, text: str, resolved) -> bool:
    """Does the stated default (its first clause: '2048; >= 257' -> '2048', 'auto = ...'
    -> 'auto') equal the value? A None value (decided later: 'all', 'by the task',
    '2 x width') cannot be checked here and passes."""
    value = resolved if resolved is not None else action.default
    if value is None:
        return True
    first = text.split(";")[0].split(" = ")[0].strip()
    if isinstance(value, bool):   # 'off', 'false', 'untied', 'no ...' state False
        negated = first in ("off", "false", "no") or first.startswith(("un", "no "))
        return negated == (not value)
    if isinstance(value, (int, float)):
        try:
            return float(first) == float(value)
        except ValueError:
            return False
    return first == str(value)


@pytest.mark.parametrize("cmd", ["inspect", "tour", "train", "adapt"])
def test_stated_defaults_are_the_defaults(cmd):
    """(``bench`` has its own, mode-aware version in test_cli.py.)"""
    parser = subparsers()[cmd]
    stated = stated_defaults(parser)
    assert stated, f"{cmd}: no option states its default"
    resolved = {}
    if cmd == "train":   # train's flags default to None = the run config's field default
        import dataclasses

        from attnkit.train.config import TrainConfig
        declared = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        resolved = {a.dest: declared.get(a.dest) for a, _ in stated.values()}
    if cmd == "adapt":   # likewise: None = AdaptConfig's field default
        import dataclasses

        from attnkit.adaptation import AdaptConfig
        declared = {f.name: f.default for f in dataclasses.fields(AdaptConfig)}
        resolved = {a.dest: declared.get(a.dest) for a, _ in stated.values()}
    bad = [f"{opt}: help says {text!r}, default is {resolved.get(a.dest, a.default)!r}"
           for opt, (a, text) in stated.items()
           if not _matches(a, text, resolved.get(a.dest))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("argv", [
    ["nosuchcommand"], ["backends", "--bogus"], ["tour", "--n", "10"], ["tour", "--n", "x"],
    ["inspect"], ["inspect", "x", "--top", "many"], ["bench", "--seq", "zero"],
    ["bench", "--heads", "0"], ["train", "--steps", "-3"], ["train", "--task", "nope"],
    ["adapt", "--variant", "window:4"],
])
def test_every_subcommand_errors_in_one_line_with_exit_2(argv):
    r = subprocess.run([PY, "-m", "attnkit", *argv], capture_output=True, text=True, timeout=300)
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (argv, r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(err) <= 2, r.stderr   # usage + error at most
    assert "error" in err[-1], err
