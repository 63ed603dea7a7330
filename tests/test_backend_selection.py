"""Explicit backend choice: ``auto`` asks registered backends by capability (a third-party
backend can win), ``use_backends`` scopes the choice, lazily registered backends, and
``import attnkit`` does not import ``attnkit.distributed``."""
import subprocess
import sys

import pytest
import torch

import attnkit
from attnkit import masks as M


class Eager(attnkit.Backend):
    """A third-party backend (the reference math) that claims dense fp64 calls."""
    name = "test-eager"
    description = "reference math, claims fp64 (a test backend)"

    def unsupported(self, call):
        return None if call.dtype == torch.float64 else "fp64 only"

    def auto_preference(self, call):
        return (50.0, "fp64: the test backend wants it") if call.dtype == torch.float64 else None

    def forward(self, call):
        self.calls += 1
        return attnkit.get_backend("reference").forward(call)


@pytest.fixture
def eager():
    b = Eager()
    b.calls = 0
    attnkit.register_backend(b)
    yield b
    attnkit.unregister_backend(b.name)


def qkv(dtype=torch.float64, T=12):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, T, 8, generator=g, dtype=dtype) for _ in range(3)]


def test_auto_picks_a_registered_backend_by_its_preference(eager):
    q, k, v = qkv()
    name, why = attnkit.select_backend(attnkit.make_call(q, k, v))
    assert (name, why) == ("test-eager", "fp64: the test backend wants it")
    out = attnkit.attention(q, k, v)
    assert eager.calls == 1
    torch.testing.assert_close(out, attnkit.attention(q, k, v, backend="reference"))
    # fp32: it declines, the built-in rule decides
    assert attnkit.select_backend(attnkit.make_call(*qkv(torch.float32)))[0] == "sdpa"


def test_use_backends_restricts_auto_and_explicit_names_still_win(eager):
    q, k, v = qkv()
    with attnkit.use_backends("tiled", "sdpa"):
        assert attnkit.select_backend(attnkit.make_call(q, k, v))[0] == "sdpa"
        assert attnkit.select_backend(attnkit.make_call(q, k, v, softcap=5.0))[0] == "tiled"
        attnkit.attention(q, k, v, backend="test-eager")         # explicit: as asked
    assert eager.calls == 1
    with attnkit.use_backends("reference"):   # no preference of its own: allowed, so chosen
        name, why = attnkit.select_backend(attnkit.make_call(q, k, v))
        assert name == "reference" and "use_backends" in why
    with attnkit.use_backends("sdpa"):
        with pytest.raises(attnkit.UnsupportedCall, match="sdpa: torch SDPA has no logit"):
            attnkit.attention(q, k, v, softcap=5.0)


def test_use_backends_override_reroutes_every_call(eager):
    q, k, v = qkv()
    with attnkit.use_backends("test-eager", override=True):
        attnkit.attention(q, k, v, backend="tiled")
        attnkit.attention(q, k, v, mask=M.causal(), backend="sdpa")
        with pytest.raises(attnkit.UnsupportedCall, match="fp64 only"):
            attnkit.attention(*qkv(torch.float32), backend="tiled")
    assert eager.calls == 2
    attnkit.attention(q, k, v, backend="tiled")                    # outside: as named
    assert eager.calls == 2


@pytest.mark.parametrize("args, kw, words", [
    ((), {}, "one or more backend names"),
    (("nope",), {}, "'nope'"),
    (("auto",), {}, "'auto'"),
    (("tiled", "sdpa"), {"override": True}, "exactly one"),
])
def test_use_backends_bad_arguments(args, kw, words):
    with pytest.raises(ValueError, match=words):
        with attnkit.use_backends(*args, **kw):
            pass


def test_lazy_backends_are_listed_and_import_does_not_load_distributed():
    assert {"ring", "triton"} <= set(attnkit.available_backends())
    code = ("import sys, attnkit; print('attnkit.distributed' in sys.modules); "
            "attnkit.get_backend('ring'); print('attnkit.distributed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_the_builtin_rule_is_what_the_docs_say():
    big = torch.empty(1, 8, 16384, 64)
    for kw, want in [({}, ("sdpa", "dense or causal")),
                     ({"mask": M.causal() & M.window(256)}, ("tiled", "sparse mask")),
                     ({"softcap": 30.0}, ("tiled", "softcap")),
                     ({"mask": M.periodic(3) | M.causal()}, ("tiled", "would need"))]:
        name, why = attnkit.select_backend(attnkit.make_call(big, big, big, **kw))
        assert name == want[0] and want[1] in why, (kw, name, why)


def test_auto_priorities_come_from_one_table():
    """Every built-in preference is a row of AUTO_PRIORITY (no number of its own), and the
    table orders the rules as the README states them."""
    from attnkit.backends.base import AUTO_PRIORITY
    table = {p for p, _ in AUTO_PRIORITY.values()}
    q = torch.randn(1, 2, 300, 16)
    calls = [attnkit.make_call(q, q, q), attnkit.make_call(q, q, q, mask=M.causal()),
             attnkit.make_call(q, q, q, mask=M.causal() & M.window(8)),
             attnkit.make_call(q, q, q, softcap=5.0),
             attnkit.make_call(q, q, q, mask=M.window(100, 100))]
    seen = set()
    for call in calls:
        for name in ("sdpa", "tiled", "flex", "reference"):
            pref = attnkit.get_backend(name).auto_preference(call)
            if pref is not None:
                assert pref[0] in table, (name, pref)
                seen.add(pref[0])
    assert {AUTO_PRIORITY[r][0] for r in ("sdpa", "tiled:skip", "tiled")} <= seen
    order = ["tiled:skip", "sdpa", "tiled:large", "tiled"]
    assert [AUTO_PRIORITY[r][0] for r in order] == sorted(
        (AUTO_PRIORITY[r][0] for r in order), reverse=True)
    assert all(len(why) > 20 for _, why in AUTO_PRIORITY.values())
