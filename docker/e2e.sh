#!/usr/bin/env bash
# The deployment, end to end, with podman on this host (docs/cluster.md, "The end-to-end check"):
#  1. set-up, each step skipped when done: the host's .venv (scripts/setup.sh), podman and friends
#     from apt, podman's settings, a Debian bookworm base image made with debootstrap (no registry);
#  2. the image (docker/Dockerfile on that base, the CPU torch wheel the host's pip finds), checked:
#     non-root, no test-only package;
#  3. the compose stack (docker/compose.yaml: PostgreSQL, the MLflow server on it, a Ray head, one
#     CPU worker) under podman-compose, on free loopback ports;
#  4. docker/e2e/sweep.yaml submitted with `ray job submit`: every trial in MLflow, on both nodes,
#     and the registered model answers `gloss predict models:/NAME@best`;
#  5. docker/e2e/resume.yaml stopped with `ray job stop` mid-sweep and resubmitted with --resume:
#     every trial one run, one registered version;
#  6. the CUDA variant built to its torch stage (--target torch) with a CUDA torch wheel, not run;
#  7. everything it started removed (containers, network, volumes); the base images and podman's
#     build cache stay for the next run.
# Prints "e2e: passed" and exits 0, or names what failed and exits non-zero.
# GLOSS_E2E_CUDA=0 skips the CUDA build; GLOSS_E2E_CUDA_TORCH_SPEC picks its wheel (default: PyPI's
# torch, a CUDA build); GLOSS_E2E_CACHE is where the set-up keeps its state.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
started=$SECONDS
bash scripts/setup.sh
export PATH="$REPO/.venv/bin:$PATH" RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
source docker/e2e/setup.sh
source docker/e2e/build.sh
source docker/e2e/stack.sh

WORK=$(mktemp -d /tmp/gloss-e2e.XXXXXX)
trap 'stack_down; rm -rf "$WORK"' EXIT
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mkdir -p "$WORK/data"
export POSTGRES_PASSWORD="e2e-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')" POSTGRES_IMAGE BASE_IMAGE \
    GLOSS_IMAGE_TAG=cpu TORCH_SPEC=torch==2.13.0 GLOSS_DATA_DIR="$WORK/data" HEAD_CPUS=1 WORKER_CPUS=1 \
    CPU_WORKERS=1 MLFLOW_WORKERS=1 MLFLOW_PORT=$(free_port) RAY_DASHBOARD_PORT=$(free_port)
MLFLOW_HOST_URI=http://127.0.0.1:$MLFLOW_PORT
RAY_API=http://127.0.0.1:$RAY_DASHBOARD_PORT
stack_down  # what an earlier run that was killed may have left

build_image localhost/gloss:cpu image "$TORCH_SPEC"
user=$(podman run --rm localhost/gloss:cpu id -un)
[ "$user" = gloss ] || { echo "e2e: the image runs as $user, not gloss" >&2; exit 1; }
test_only=$(podman run --rm localhost/gloss:cpu pip list --format freeze | grep -iE '^(pytest|moto|statsmodels)' || true)
[ -z "$test_only" ] || { echo "e2e: the image holds test-only packages: $test_only" >&2; exit 1; }
step "image localhost/gloss:cpu: runs as gloss, no test-only package"

stack_up
step "sweep e2e: submitted, waiting"
submit e2e-sweep docker/e2e/sweep.yaml
wait_job e2e-sweep 900 SUCCEEDED
python docker/e2e/check.py sweep "$MLFLOW_HOST_URI" e2e --search 4 --replicate 1 --nodes 2 --predict

step "sweep e2e_resume: submitted, to be stopped after two completed search trials"
submit e2e-resume-1 docker/e2e/resume.yaml
if [ "$(completed_lines e2e-resume-1 2 600)" != 2 ]; then
    echo "e2e: e2e-resume-1 ended ($(job_status e2e-resume-1)) before two search trials completed" >&2
    ray job logs --address "$RAY_API" e2e-resume-1 | tail -40 >&2; exit 1
fi
ray job stop --address "$RAY_API" e2e-resume-1 >>"$WORK/submit.log" 2>&1
wait_job e2e-resume-1 180 STOPPED
grep -q -- "--resume" "$WORK/e2e-resume-1.log" \
    || { echo "e2e: the stopped sweep did not say how to resume" >&2; tail -30 "$WORK/e2e-resume-1.log" >&2; exit 1; }
python docker/e2e/check.py completed "$MLFLOW_HOST_URI" e2e_resume >"$WORK/completed-before"
[ "$(wc -l <"$WORK/completed-before")" -lt 6 ] || { echo "e2e: e2e-resume-1 was stopped after its search" >&2; exit 1; }
step "stopped mid-sweep with $(wc -l <"$WORK/completed-before") search trial(s) completed; resubmitting with --resume"
submit e2e-resume-2 docker/e2e/resume.yaml --resume
wait_job e2e-resume-2 900 SUCCEEDED
python docker/e2e/check.py sweep "$MLFLOW_HOST_URI" e2e_resume --search 6 --replicate 1
python docker/e2e/check.py completed "$MLFLOW_HOST_URI" e2e_resume >"$WORK/completed-after"
lost=$(comm -23 "$WORK/completed-before" "$WORK/completed-after")
[ -z "$lost" ] || { echo "e2e: trials completed before the stop are gone after the resume: $lost" >&2; exit 1; }
stack_down
if [ "${GLOSS_E2E_CUDA:-1}" != 0 ]; then
    build_image localhost/gloss:cuda-torch torch "${GLOSS_E2E_CUDA_TORCH_SPEC:-torch}"
    # -W: the torch stage holds no NumPy yet (the image stage adds it), which torch warns about on import
    cuda=$(podman run --rm localhost/gloss:cuda-torch python -W ignore::UserWarning -c 'import torch; print(torch.version.cuda or "")')
    [ -n "$cuda" ] || { echo "e2e: the CUDA build's torch has no CUDA" >&2; exit 1; }
    step "CUDA variant's torch stage built: torch for CUDA $cuda (not run: no GPU here)"
fi
echo "e2e: passed in $((SECONDS - started)) s"
