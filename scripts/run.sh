#!/usr/bin/env bash
# The main job on embedded defaults: set-up, then the demo sweep (sweeps/specs/demo.yaml) on a
# local Ray cluster, logged to MLflow in ./mlflow.db, ending with a summary table; then the
# analysis report of that sweep (tables, tests, figures) in reports/demo/report.md.
# A second run discards the first (--restart). Extra arguments go to `gloss sweep run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/gloss sweep run sweeps/specs/demo.yaml --restart "$@"
exec .venv/bin/gloss analyze report --experiment demo --out reports/demo
