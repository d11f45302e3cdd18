#!/usr/bin/env bash
# The main job on embedded defaults: set-up, then one G-Loss+CE fine-tuning run of the bundled
# all-MiniLM-L6-v2 on the synthetic corpus, ending with a summary table. Extra arguments go to
# `gloss train` (e.g. --data ../shared/data/MR --limit 512).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs
exec .venv/bin/gloss train --output runs/metrics.json "$@"
