"""benchmarks/hf_suites: the junit parsing and the attnkit-only diff on real pytest output,
and the swap plugin really routing transformers' "sdpa" to attnkit (counted calls, outputs
equal to transformers' own eager)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_suites"
sys.path.insert(0, str(HERE))
import report  # noqa: E402

SUITE = """
import pytest
def test_ok(): pass
def test_breaks(): assert 1 == 2, "one is not two"
@pytest.mark.skip(reason="not here")
def test_skipped(): pass
@pytest.fixture
def bad(): raise RuntimeError("setup broke")
def test_error(bad): pass
def test_flaky():
    import os
    assert os.environ.get("BREAK") != "1", "broken by the swap"
"""


def _pytest(tmp_path, name, env=None, extra=()):
    xml = tmp_path / f"{name}.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={xml}", "test_suite.py", *extra], cwd=tmp_path,
                   env={**os.environ, **(env or {})}, capture_output=True, timeout=120)
    return xml


def test_junit_parse_and_attnkit_only(tmp_path):
    (tmp_path / "test_suite.py").write_text(SUITE)
    base = report.parse_junit(_pytest(tmp_path, "base"))
    swapped = report.parse_junit(_pytest(tmp_path, "swap", {"BREAK": "1"}))
    outcomes = {t.split("::")[-1]: o for t, (o, _) in base.items()}
    assert outcomes == {"test_ok": "passed", "test_breaks": "failed",
                        "test_skipped": "skipped", "test_error": "failed",
                        "test_flaky": "passed"}
    assert "one is not two" in base["test_suite::test_breaks"][1]
    assert report.failed(base) == {"test_suite::test_breaks", "test_suite::test_error"}
    only = report.attnkit_only(base, swapped)
    assert list(only) == ["test_suite::test_flaky"]
    assert "broken by the swap" in only["test_suite::test_flaky"]


SWAPPED = """
import torch
from transformers import LlamaConfig, LlamaModel

def test_tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    ids = torch.randint(0, 64, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0                                   # left padding
    outs = {}
    for impl in ("sdpa", "eager"):
        cfg._attn_implementation = impl
        torch.manual_seed(1)
        model = LlamaModel(cfg).eval()
        with torch.no_grad():
            outs[impl] = model(input_ids=ids, attention_mask=mask).last_hidden_state
    # (B, T, hidden): real positions agree (padded query rows differ by design)
    torch.testing.assert_close(outs["sdpa"][0], outs["eager"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["sdpa"][1, 3:], outs["eager"][1, 3:], atol=1e-5, rtol=1e-5)
"""


@pytest.mark.slow                       # two subprocesses importing transformers: ~10 s each
@pytest.mark.parametrize("swap", ["", "sdpa"])
def test_swap_plugin_routes_sdpa_to_attnkit(tmp_path, swap):
    pytest.importorskip("transformers")
    (tmp_path / "test_suite.py").write_text(SWAPPED)
    log = tmp_path / "calls.jsonl"
    src = Path(__file__).resolve().parents[1] / "src"
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), str(src)]), "ATTNKIT_SWAP": swap,
           "ATTNKIT_LOG": str(log)}
    xml = _pytest(tmp_path, "swap", env, ("-p", "attnkit_swap"))
    results = report.parse_junit(xml)
    assert [o for o, _ in results.values()] == ["passed"], results
    calls = report.read_calls(log)
    if not swap:
        assert calls == {"attn": 0, "mask": 0, "tests_calling": 0}   # baseline: no attnkit
        return
    # 2 layers, one mask, in the "sdpa" model only; the "eager" one stayed transformers'
    assert calls == {"attn": 2, "mask": 1, "tests_calling": 1}
    total = [json.loads(x) for x in log.read_text().splitlines() if "total" in x]
    assert total[0]["mapping"] == {"sdpa": ["attnkit_attn", "attnkit_msk"]}
