#!/usr/bin/env bash
# Sourced by docker/e2e.sh: the compose stack under podman-compose, and sweeps submitted to it as
# docs/cluster.md says. podman-compose 1.0 ignores `depends_on` conditions and profiles, so the
# services start one by one, each after the one it needs answers, and the GPU worker is not started.
COMPOSE_PROJECT=gloss-e2e
RUNTIME_ENV='{"excludes": [".git", ".venv", "ray_results", "mlflow.db", "mlartifacts", "reports"],
              "env_vars": {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"}}'

compose() { podman-compose -p "$COMPOSE_PROJECT" -f "$REPO/docker/compose.yaml" "$@" >>"$WORK/compose.log" 2>&1; }
container() { echo "${COMPOSE_PROJECT}_$1_1"; }

wait_for() {  # wait_for SECONDS SERVICE COMMAND...: until COMMAND succeeds, while SERVICE runs
    local seconds=$1 service=$2; shift 2
    local deadline=$((SECONDS + seconds)) running
    until "$@" >/dev/null 2>&1; do
        running=$(podman inspect -f '{{.State.Running}}' "$(container "$service")" 2>/dev/null || echo false)
        if [ $SECONDS -ge $deadline ] || [ "$running" != true ]; then
            echo "e2e: $service did not come up (running: $running, ${seconds}s at most); compose log and container logs follow" >&2
            tail -30 "$WORK/compose.log" >&2
            for name in postgres mlflow ray-head ray-worker-cpu; do
                echo "--- $(container "$name")" >&2; podman logs --tail 30 "$(container "$name")" >&2 2>&1 || true
            done
            return 1
        fi
        sleep 2
    done
}

ray_nodes_alive() {
    [ "$(podman exec "$(container ray-head)" python -c \
        'import ray; ray.init(logging_level="error"); print(sum(n["Alive"] for n in ray.nodes()))' 2>/dev/null \
        | tail -1)" = "$1" ]
}

stack_up() {
    step "starting the compose stack ($COMPOSE_PROJECT): postgres, mlflow, ray-head, ray-worker-cpu"
    compose up -d --no-build postgres
    wait_for 120 postgres podman exec "$(container postgres)" pg_isready -U mlflow -d mlflow
    compose up -d --no-build mlflow
    wait_for 180 mlflow curl -fsS "$MLFLOW_HOST_URI/health"
    compose up -d --no-build ray-head
    wait_for 180 ray-head curl -fsS "$RAY_API/api/version"
    compose up -d --no-build ray-worker-cpu
    wait_for 180 ray-worker-cpu ray_nodes_alive 2
}

stack_down() {
    step "removing the stack's containers, network and volumes"
    compose down -v -t 5 || true
    local leftover
    for leftover in $(podman ps -aq --filter "label=io.podman.compose.project=$COMPOSE_PROJECT"); do
        podman rm -f "$leftover" >/dev/null 2>&1 || true
    done
    for leftover in $(podman volume ls -q --filter "label=io.podman.compose.project=$COMPOSE_PROJECT"); do
        podman volume rm -f "$leftover" >/dev/null 2>&1 || true
    done
    podman network rm -f "${COMPOSE_PROJECT}_default" >/dev/null 2>&1 || true
}

submit() {  # submit ID SPEC [--resume]: the docs/cluster.md `ray job submit`, without waiting
    local id=$1 spec=$2; shift 2
    (cd "$REPO" && ray job submit --address "$RAY_API" --submission-id "$id" --no-wait --working-dir . \
        --runtime-env-json "$RUNTIME_ENV" \
        -- gloss sweep run "$spec" --tracking-uri http://mlflow:5000 --storage-path /ray_results "$@") \
        >>"$WORK/submit.log" 2>&1 || { tail -20 "$WORK/submit.log"; return 1; }
}

job_status() {  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED (or UNKNOWN: the API did not answer)
    python -c 'import sys; from ray.job_submission import JobSubmissionClient
print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)' "$RAY_API" "$1" 2>/dev/null || echo UNKNOWN
}

wait_job() {  # wait_job ID SECONDS EXPECTED: follow its logs to the end, then check its status
    local id=$1 seconds=$2 expected=$3 status
    timeout "$seconds" ray job logs --address "$RAY_API" --follow "$id" >"$WORK/$id.log" 2>&1 || true
    status=$(job_status "$id")
    if [ "$status" != "$expected" ]; then
        echo "e2e: job $id ended $status, expected $expected; its log's end:" >&2
        tail -40 "$WORK/$id.log" >&2
        return 1
    fi
}

completed_lines() {  # completed_lines ID N SECONDS: follows the job's console until it reports N completed
    # search trials (then prints N at once) or ends or SECONDS pass (then prints how many it saw)
    { timeout "$3" ray job logs --address "$RAY_API" --follow "$1" 2>/dev/null || true; } \
        | grep -m "$2" -cE '^\[search [0-9]+/[0-9]+\] .*: completed after ' || true
}
