"""pytest plugin: make transformers' built-in attention names resolve to attnkit.

Load with `-p attnkit_swap` (this folder on PYTHONPATH) while running transformers' own
test files:

ATTNKIT_SWAP=sdpa    "sdpa"  -> attnkit's attention + mask functions
ATTNKIT_SWAP=eager   "eager" -> attnkit's attention + mask functions
(unset or empty: no swap, the baseline; attnkit is not even imported).

ATTNKIT_LOG=FILE: one JSON line per test (id, outcome, attnkit attention and mask calls
during that test) and a final {"total": ...} line: the proof that the swap took effect.

The swap is global: every model a test builds with the swapped name runs attnkit's
attention function and mask interface, exactly as `attn_implementation="attnkit"` would
(backend auto, no variant), because attnkit reads the implementation name from the config.
"""
import collections
import json
import os

SWAP = [s for s in os.environ.get("ATTNKIT_SWAP", "").split(",") if s]
LOG = os.environ.get("ATTNKIT_LOG")
CALLS = collections.Counter()
_start: dict = {}


def _write(record: dict) -> None:
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(record) + "\n")


def pytest_configure(config):
    if not SWAP:
        return
    bad = [s for s in SWAP if s not in ("sdpa", "eager")]
    if bad:
        raise ValueError(f"ATTNKIT_SWAP: expected names from sdpa,eager, got {bad}")
    import torch

    import attnkit.hf
    from attnkit.integrations.hf import attention as A
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = attnkit.hf.register()                       # "attnkit"
    att = AttentionInterface._global_mapping[name]
    msk = AttentionMaskInterface._global_mapping[name]

    # attnkit reads module.config._attn_implementation to pick backend/variant; a
    # swapped name means plain "attnkit" (backend auto, no variant).
    orig_parse = A.parse_implementation

    def parse(n):
        return orig_parse(name if n in SWAP else n)

    A.parse_implementation = parse

    # count only outside torch.compile tracing: a counter read inside a compiled region
    # becomes a Dynamo guard and forces a recompile on every call (a harness artefact)
    def attnkit_attn(module, *a, **k):
        if not torch.compiler.is_compiling():
            CALLS["attn"] += 1
        return att(module, *a, **k)

    # as "eager" the mask reads like eager_mask's float tensor (what eager's callers read)
    from attnkit.integrations.hf.masks import attnkit_eager_mask
    interfaces = {"sdpa": msk, "eager": attnkit_eager_mask}

    def mask_for(swapped):
        def attnkit_msk(*a, **k):
            if not torch.compiler.is_compiling():
                CALLS["mask"] += 1
            return interfaces[swapped](*a, **k)
        return attnkit_msk

    for s in SWAP:
        AttentionInterface._global_mapping[s] = attnkit_attn
        AttentionMaskInterface._global_mapping[s] = mask_for(s)


def pytest_report_header(config):
    return f"attnkit_swap: {SWAP or 'off (baseline)'}"


def pytest_runtest_setup(item):
    _start.clear()
    _start.update(CALLS)


def pytest_runtest_logreport(report):
    # the call phase, or a setup that did not pass (then there is no call phase)
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _write({"id": report.nodeid, "outcome": report.outcome,
                "attn": CALLS["attn"] - _start.get("attn", 0),
                "mask": CALLS["mask"] - _start.get("mask", 0)})


def pytest_terminal_summary(terminalreporter):
    if not SWAP:
        return
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    mapping = {s: (AttentionInterface._global_mapping[s].__name__,
                   AttentionMaskInterface._global_mapping[s].__name__) for s in SWAP}
    _write({"total": {"attn": CALLS["attn"], "mask": CALLS["mask"]}, "swap": SWAP,
            "mapping": mapping})
    terminalreporter.write_line(
        f"attnkit_swap {SWAP}: attnkit attention calls={CALLS['attn']} "
        f"mask calls={CALLS['mask']}; mapping now {mapping}")
