"""The write queue and the retrying client, with MLflow's own exception types (no server needed;
the end-to-end outage is in test_cluster.py)."""

import json

import pytest
from mlflow.exceptions import MlflowException, RestException

from sweeps.resilience import RetryingClient, WriteQueue, is_transient

DOWN = MlflowException("API request to http://127.0.0.1:1/api failed: Connection refused")  # INTERNAL_ERROR
REFUSED = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values is not allowed"})


def test_transient_or_refused():
    assert is_transient(DOWN) and is_transient(OSError("reset")) and not is_transient(REFUSED)


def test_queue_keeps_order_through_an_outage_and_drops_only_refused_writes(tmp_path):
    done, up = [], {"ok": False}

    def write(tag):
        def job():
            if not up["ok"]:
                raise DOWN
            done.append(tag)
        return job

    def refused():
        raise REFUSED

    queue = WriteQueue(retry_every_s=0.0)
    queue.submit("t1", "start", write("a"))
    queue.submit("t1", "result 1", write("b"))
    assert done == [] and len(queue) == 2  # nothing raised, nothing lost
    up["ok"] = True
    queue.submit("t2", "bad", refused)
    queue.submit("t2", "start", write("c"))
    assert done == ["a", "b", "c"] and len(queue) == 0
    assert [entry["write"] for entry in queue.lost] == ["bad"]
    queue.record_lost(tmp_path / "unlogged.json")
    assert json.loads((tmp_path / "unlogged.json").read_text())[0]["trial_id"] == "t2"


def test_what_never_gets_through_is_recorded(tmp_path):
    queue = WriteQueue(retry_every_s=0.05)

    def down():
        raise DOWN

    queue.submit("t9", "end", down)
    queue.flush(timeout_s=0.3)
    queue.record_lost(tmp_path / "u.json")
    lost = json.loads((tmp_path / "u.json").read_text())
    assert lost == [{"trial_id": "t9", "write": "end", "error": "MLflow unreachable until the phase ended"}]


def test_retrying_client_waits_out_transient_errors_and_raises_refusals(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)

    class Flaky:
        calls = 0

        def get_run(self, run_id):
            Flaky.calls += 1
            if Flaky.calls < 3:
                raise DOWN
            return run_id

        def set_tag(self, *args):
            raise REFUSED

    client = RetryingClient(Flaky(), timeout_s=60)
    assert client.get_run("r1") == "r1" and Flaky.calls == 3
    with pytest.raises(MlflowException, match="not allowed"):
        client.set_tag("r1", "k", "v")


def test_background_writes_leave_the_caller_at_once_and_merge_metric_batches(capsys):
    import threading
    import time

    from mlflow.entities import Metric

    from sweeps.resilience import MetricWrite

    release, calls = threading.Event(), []

    class Client:
        def log_batch(self, run_id, metrics):
            calls.append((run_id, [m.step for m in metrics]))

    client = Client()
    queue = WriteQueue(retry_every_s=0.0, warn_pending=3).start()
    queue.submit("t1", "start", lambda: (release.wait(10), calls.append(("start", None))))
    started = time.perf_counter()
    for step in (1, 2, 3):
        queue.submit("t1", f"result {step}", MetricWrite(lambda: client, lambda: "run-1", [Metric("m", 0.5, 0, step)]))
    queue.submit("t2", "end", lambda: calls.append(("end t2", None)))
    assert time.perf_counter() - started < 0.5  # the caller never waits on the store
    assert "MLflow writes are backing up: 3 queued" in capsys.readouterr().err
    release.set()
    assert queue.wait_idle(10)
    assert calls.index(("start", None)) < calls.index(("run-1", [1, 2, 3]))  # one batch, in order, after start
    assert ("end t2", None) in calls and len(calls) == 3
    queue.flush(1)
    assert queue.lost == []


def test_background_writes_wait_out_an_outage_and_keep_their_order():
    import threading

    up, done = threading.Event(), []

    def write(tag):
        def job():
            if not up.is_set():
                raise DOWN
            done.append(tag)
        return job

    queue = WriteQueue(retry_every_s=0.05).start()
    for tag in "abc":
        queue.submit("t1", tag, write(tag))
    assert not queue.wait_idle(0.3) and done == []  # in an outage it does not stall the caller
    up.set()
    queue.flush(5)
    assert done == ["a", "b", "c"] and queue.lost == []
