#!/usr/bin/env bash
# The transformers tests of attnkit.hf (tests/test_hf_dropin.py, tests/test_hf_integration.py)
# on the low end of the supported range (pyproject.toml: transformers>=5.4,<5.26; the high
# end is the one `make test` installs) and on 5.16.1 (the release transformers' own model
# tests were taken from). Each release goes into its own --target directory put first on
# PYTHONPATH: the project's venv is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${HF_RANGE_DIR:-.venv/hf-range}
# what those releases need that differs from the venv's (--no-deps: the venv's numpy,
# torch, safetensors... stay the ones in use)
COMMON=(httpx httpcore h11 anyio sniffio certifi idna "huggingface_hub>=1.5,<2.0")
run() {  # a transformers version, then pins of its dependencies for that release
    local v=$1 d=$ROOT/tf-$1
    shift
    [ -d "$d/transformers" ] || $PY -m pip install --quiet --no-deps --target "$d" \
        "transformers==$v" "${COMMON[@]}" "$@"
    PYTHONPATH="$d:src" $PY -m pytest -q -p no:cacheprovider -m "not slow" \
        tests/test_hf_dropin.py tests/test_hf_integration.py
}
# `bash tests/hf_range.sh` runs both; `bash tests/hf_range.sh 5.4.0` (what `make test` does:
# the range's low end in CI, its high end being the venv's own) runs one
want=${1:-all}
[ "$want" = all ] || [ "$want" = 5.4.0 ] && \
    run 5.4.0 "tokenizers>=0.22.0,<=0.23.0" "kernels>=0.12.0,<0.13"   # (later kernels break it)
[ "$want" = all ] || [ "$want" = 5.16.1 ] && run 5.16.1
true
