"""Read the junit XML of the runs and write the table: per architecture, failures in the
baseline, with attnkit as sdpa and with attnkit as eager, and the attnkit-only failures
(failing with attnkit, passing in the baseline) by test name with their one-line cause.

    python benchmarks/hf_suites/report.py --out DIR [--baseline DIR]
"""
import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

MODES = ("baseline", "sdpa", "eager")
_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def parse_junit(path: Path) -> dict[str, tuple[str, str]]:
    """{test id: (outcome, one-line message)}; outcome is passed, skipped or failed (a
    failure or an error in any phase); a test reported twice keeps its worst outcome."""
    results: dict[str, tuple[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = _one_line(child.get("message") or child.text or child.tag)
                break
            if child.tag == "skipped":
                outcome = "skipped"
        old = results.get(tid)
        if old is None or _RANK[outcome] > _RANK[old[0]]:
            results[tid] = (outcome, message)
    return results


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= 240 else line[:237] + "..."


def read_calls(path: Path, prefix: str = "") -> dict | None:
    """attnkit calls summed over the plugin's per-test lines whose test id starts with
    prefix (all when empty); None when the run wrote no log (a baseline, or a crash)."""
    if not path.exists():
        return None
    total = {"attn": 0, "mask": 0, "tests_calling": 0}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "id" in rec and rec["id"].startswith(prefix):
            total["attn"] += rec["attn"]
            total["mask"] += rec["mask"]
            total["tests_calling"] += rec["attn"] > 0
    return total


def _arch_run(where: Path, arch: str, mode: str) -> tuple[dict | None, dict | None]:
    """(results, calls) of arch in mode: its own run, else its part of the "all" run."""
    own = where / f"{arch}.{mode}.xml"
    if own.exists():
        return parse_junit(own), read_calls(where / f"{arch}.{mode}.jsonl")
    every = where / f"all.{mode}.xml"
    if not every.exists():
        return None, None
    module = f"tests.models.{arch}.test_modeling_{arch}."
    results = {t: r for t, r in parse_junit(every).items() if t.startswith(module)}
    return results, read_calls(where / f"all.{mode}.jsonl", f"tests/models/{arch}/")


def failed(results: dict) -> set[str]:
    return {t for t, (o, _) in results.items() if o == "failed"}


def attnkit_only(baseline: dict, swapped: dict) -> dict[str, str]:
    """Tests failing with attnkit that passed in the baseline: {id: message}."""
    return {t: swapped[t][1] for t in sorted(failed(swapped))
            if baseline.get(t, ("missing", ""))[0] == "passed"}


def summarize(out: Path, baseline_dir: Path, archs: list[str]) -> dict:
    rows = {}
    for arch in archs:
        row: dict = {"arch": arch}
        runs = {}
        for mode in MODES:
            results, calls = _arch_run(baseline_dir if mode == "baseline" else out, arch, mode)
            if results is None:
                row[mode] = None
                continue
            runs[mode] = results
            row[mode] = {"tests": len(results), "failed": len(failed(results)),
                         "passed": sum(o == "passed" for o, _ in results.values())}
            if mode != "baseline":
                row[mode]["calls"] = calls
        for mode in ("sdpa", "eager"):
            if "baseline" in runs and mode in runs:
                row[mode]["attnkit_only"] = attnkit_only(runs["baseline"], runs[mode])
                row[mode]["fixed"] = sorted(failed(runs["baseline"]) - failed(runs[mode]))
        rows[arch] = row
    return rows


def _cell(run: dict | None, baseline: dict | None) -> str:
    if run is None:
        return "not run"
    if baseline is None or "attnkit_only" not in run:
        return str(run["failed"])
    extra = len(run["attnkit_only"])
    return f"{run['failed']} (+{extra})" if extra else f"{run['failed']} (+0)"


def render(rows: dict, meta: dict) -> str:
    lines = [f"transformers {meta.get('transformers', '?')}, tests at "
             f"{meta.get('tests_commit', '?')}; attnkit {meta.get('attnkit', '?')}; "
             f"torch {meta.get('torch', '?')}; pytest arguments {meta.get('pytest_args') or 'none'}",
             "",
             "| architecture | tests | baseline failed | attnkit as sdpa failed (attnkit-only) "
             "| attnkit as eager failed (attnkit-only) | attnkit calls sdpa / eager |",
             "|---|---:|---:|---:|---:|---:|"]
    for arch, row in rows.items():
        base = row["baseline"]
        calls = []
        for mode in ("sdpa", "eager"):
            c = (row[mode] or {}).get("calls")
            calls.append(str(c["attn"]) if c else "—")
        lines.append(f"| {arch} | {base['tests'] if base else '—'} | "
                     f"{base['failed'] if base else 'not run'} | {_cell(row['sdpa'], base)} | "
                     f"{_cell(row['eager'], base)} | {' / '.join(calls)} |")
    only = [(arch, mode, t, msg) for arch, row in rows.items() for mode in ("sdpa", "eager")
            if row[mode] and "attnkit_only" in row[mode]
            for t, msg in row[mode]["attnkit_only"].items()]
    lines += ["", f"attnkit-only failures: {len(only)}", ""]
    lines += [f"- {arch} [{mode}] `{t.split('::')[-1]}` ({t.split('::')[0].split('.')[-1]}): "
              f"{msg}" for arch, mode, t, msg in only]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder with the runs")
    p.add_argument("--baseline", type=Path, default=None,
                   help="folder with the baseline runs (default: --out)")
    args = p.parse_args(argv)
    meta_path = args.out / "meta.json"
    if not meta_path.exists():
        print(f"report: --out: expected a folder written by run.py (with meta.json), "
              f"got {args.out}", file=sys.stderr)
        return 2
    meta = json.loads(meta_path.read_text())
    rows = summarize(args.out, args.baseline or args.out, meta["archs"])
    (args.out / "summary.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = render(rows, meta)
    (args.out / "table.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
