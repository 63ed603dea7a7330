"""Run transformers' own model test suites with attnkit swapped in for "sdpa" and "eager".

For each architecture, `tests/models/<arch>/test_modeling_<arch>.py` runs up to three
times, one pytest process at a time: the baseline (no swap), attnkit as sdpa, attnkit as
eager (the `attnkit_swap` plugin beside this file); then report.py writes the table.

    python benchmarks/hf_suites/run.py --tests /work/tf-tests --archs llama,gpt2 \
        --attnkit-src src --python /work/venvs/tf/bin/python --out /tmp/hf-suites

--tests is a folder holding transformers' `tests/` (and its conftest.py) at the commit
named by --tests-commit (or a TESTS_COMMIT file there); --python is an environment with
the matching transformers release, pytest and the tests' requirements. Nothing is
downloaded; transformers' own markers skip slow and network tests (RUN_SLOW unset).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402

DEFAULT_ARCHS = ("llama,mistral,qwen2,gpt2,t5,whisper,gemma2,bert,roberta,distilbert,vit,"
                 "gpt_oss,gemma3,phi3")


def _fail(msg: str) -> int:
    print(f"run: {msg}", file=sys.stderr)
    return 2


def _git_commit(path: Path) -> str:
    r = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %s"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown (not a git checkout)"


def _versions(python: str) -> dict:
    code = "import json,torch,transformers;print(json.dumps({'torch':torch.__version__," \
           "'transformers':transformers.__version__}))"
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"--python {python}: cannot import torch and transformers: "
                           f"{r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout)


def run_one(args, arch: str, mode: str, test_files: list[Path]) -> dict:
    """One pytest process (arch "all": every file in one process, saving the start-up and
    collection per file); returns its wall time and exit code."""
    out = args.out
    xml, log, jsonl = (out / f"{arch}.{mode}.{ext}" for ext in ("xml", "log", "jsonl"))
    for f in (xml, jsonl):
        f.unlink(missing_ok=True)
    env = dict(os.environ)
    env.pop("RUN_SLOW", None)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(args.attnkit_src.resolve())])
    env["ATTNKIT_SWAP"] = "" if mode == "baseline" else mode
    env["ATTNKIT_LOG"] = str(jsonl)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = ["nice", "-n", str(args.nice), args.python, "-m", "pytest",
           *(str(f.relative_to(args.tests)) for f in test_files), "-p", "no:cacheprovider", "-q",
           "-p", "attnkit_swap", f"--junitxml={xml}", *args.pytest_args]
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=args.tests, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"arch": arch, "mode": mode, "rc": rc, "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tests", type=Path, required=True,
                   help="folder holding transformers' tests/ (and conftest.py)")
    p.add_argument("--archs", default=DEFAULT_ARCHS, help="comma-separated model folders")
    p.add_argument("--attnkit-src", type=Path, default=HERE.parents[1] / "src",
                   help="the attnkit src folder the swap runs import")
    p.add_argument("--python", default=sys.executable,
                   help="python of the environment with transformers and pytest")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--modes", default="baseline,sdpa,eager")
    p.add_argument("--baseline", type=Path, default=None,
                   help="folder with baseline runs to compare against (default: --out)")
    p.add_argument("--tests-commit", default=None)
    p.add_argument("--attnkit-label", default=None,
                   help="what to call the attnkit under test (default: its git commit)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per pytest process")
    p.add_argument("--nice", type=int, default=15)
    p.add_argument("--per-arch", action="store_true",
                   help="one pytest process per architecture (default: one per mode)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args(argv)

    archs = [a for a in args.archs.split(",") if a]
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in report.MODES]:
        return _fail(f"--modes: expected names from {','.join(report.MODES)}, got {bad}")
    if not (args.attnkit_src / "attnkit").is_dir():
        return _fail(f"--attnkit-src: expected a folder containing attnkit/, "
                     f"got {args.attnkit_src}")
    files = {a: args.tests / "tests" / "models" / a / f"test_modeling_{a}.py" for a in archs}
    if missing := [a for a, f in files.items() if not f.exists()]:
        return _fail(f"--archs: no tests/models/<arch>/test_modeling_<arch>.py under "
                     f"{args.tests} for {missing}")
    commit_file = args.tests / "TESTS_COMMIT"
    tests_commit = args.tests_commit or (commit_file.read_text().strip()
                                         if commit_file.exists() else "unknown")
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
    known = meta.get("archs", [])
    meta.update(_versions(args.python), archs=known + [a for a in archs if a not in known],
                tests_commit=tests_commit, pytest_args=args.pytest_args,
                attnkit=args.attnkit_label or _git_commit(args.attnkit_src))
    groups = {a: [files[a]] for a in archs} if args.per_arch else {"all": list(files.values())}
    for arch, group in groups.items():
        for mode in modes:
            r = run_one(args, arch, mode, group)
            meta["runs"] = [x for x in meta["runs"] if (x["arch"], x["mode"]) != (arch, mode)]
            meta["runs"].append(r)
            meta_path.write_text(json.dumps(meta, indent=1))
            print(f"{arch:12s} {mode:8s} rc={r['rc']} {r['seconds']:.0f}s", flush=True)
    return report.main(["--out", str(args.out)]
                       + (["--baseline", str(args.baseline)] if args.baseline else []))


if __name__ == "__main__":
    sys.exit(main())
