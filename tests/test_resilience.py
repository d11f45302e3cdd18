"""The write queue and the retrying client, with MLflow's own exception types (no server needed;
the end-to-end outage is in test_cluster.py)."""

import json

import pytest
from mlflow.exceptions import MlflowException, RestException

from sweeps.resilience import RetryingClient, WriteQueue, is_transient

DOWN = MlflowException("API request to http://127.0.0.1:1/api failed: Connection refused")  # INTERNAL_ERROR
REFUSED = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values is not allowed"})


def test_transient_or_refused():
    assert is_transient(DOWN) and is_transient(ConnectionResetError("reset")) and not is_transient(REFUSED)


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


# ---- transient or permanent, by type ------------------------------------------------------------------

def _wrapped(outer, inner):
    """`outer` raised while handling `inner`, as MLflow's REST client and SQL store raise them."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer
    except BaseException as err:  # noqa: BLE001
        return err


def _locked(message="database is locked"):
    import sqlite3

    import sqlalchemy.exc
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    cause = sqlalchemy.exc.OperationalError("INSERT INTO tags", {}, sqlite3.OperationalError(message))
    return _wrapped(MlflowException(str(cause), error_code=TEMPORARILY_UNAVAILABLE), cause)


def _transient_errors():
    import socket

    import requests
    import urllib3

    refused = requests.exceptions.ConnectionError("Max retries exceeded (Caused by NewConnectionError)")
    too_many_500 = requests.exceptions.RetryError("too many 500 error responses")
    http_503 = requests.exceptions.HTTPError(response=type("R", (), {"status_code": 503})())
    return {
        "ConnectionError": ConnectionError("refused"), "TimeoutError": TimeoutError("timed out"),
        "socket.timeout": socket.timeout("timed out"), "requests ConnectionError": refused,
        "requests Timeout": requests.exceptions.ReadTimeout("read timed out"),
        "urllib3": urllib3.exceptions.ProtocolError("Connection aborted."),
        "requests HTTPError 503": http_503, "MLflow around refused": _wrapped(
            MlflowException("API request to http://h:5000/api/2.0/mlflow/runs/create failed with exception x"),
            refused),
        "MLflow around 5xx": _wrapped(MlflowException("API request to http://h failed with exception y"), too_many_500),
        "MLflow HTML 502": MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code "
                                           "502 != 200. Response body: '<html>Bad Gateway</html>'"),
        "TEMPORARILY_UNAVAILABLE": RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "later"}),
        "REQUEST_LIMIT_EXCEEDED": RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}),
        "a proxy's 429": RestException({"error_code": "429", "message": "Too Many Requests"}),
        "database is locked": _locked(),
        "pyarrow S3": OSError("When uploading part: AWS Error NETWORK_CONNECTION during UploadPart operation: "
                              "curlCode: 7, Couldn't connect to server"),
    }


def _permanent_errors():
    import errno

    return {
        "KeyError": KeyError("run_id"), "no space": OSError(errno.ENOSPC, "No space left on device"),
        "INTERNAL_ERROR": MlflowException("something broke in the store"),
        "server's INTERNAL_ERROR": RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}),
        "MLflow around a bug": _wrapped(MlflowException("failed", error_code=0), ValueError("bad")),
        "refused value": REFUSED, "no such table": _locked("no such table: tags"),
        "ValueError": ValueError("nan"), "TypeError": TypeError("not a str"),
    }


@pytest.mark.parametrize("name", sorted(_transient_errors()))
def test_network_busy_store_and_5xx_are_transient(name):
    assert is_transient(_transient_errors()[name])


@pytest.mark.parametrize("name", sorted(_permanent_errors()))
def test_anything_else_is_permanent(name):
    assert not is_transient(_permanent_errors()[name])


def test_mlflows_own_error_for_a_store_that_is_not_there_is_transient(monkeypatch):
    from mlflow.tracking import MlflowClient
    from servers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as the sweep sets it (ray_session.py)
    with pytest.raises(MlflowException) as raised:
        MlflowClient(f"http://127.0.0.1:{free_port()}").get_experiment("0")
    assert raised.value.error_code == "INTERNAL_ERROR" and is_transient(raised.value)


# ---- one write that cannot be made never holds up the others ------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow SQLite store and ten trial runs in an experiment of their own, per test."""
    from mlflow.tracking import MlflowClient

    from sweeps.trial_runs import TrialRuns

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    client, made = MlflowClient(uri), iter(range(1000))

    def runs():
        experiment = client.create_experiment(f"e{next(made)}")
        trial_runs = TrialRuns(uri, experiment, "search", "s", {})
        trial_runs.runs.update({f"t{i}": client.create_run(experiment).info.run_id for i in range(10)})
        return trial_runs

    return client, runs


def _queue(client, trial_runs, **options) -> WriteQueue:
    """The queue as the trial logger makes it (tracking.py): dropped writes tag the run, and reading
    the experiment tells a store that is down from a write that fails on its own."""
    return WriteQueue(on_lost=trial_runs.tag, probe=lambda: client.get_experiment(trial_runs.experiment),
                      **options).start()



def _backlog(queue, client, trial_runs, first):
    """`first` (t0's first write), then 250 healthy writes of ten trials (one tag each), all queued
    before the writer makes any of them: a blocked first write holds the thread until they are."""
    import threading

    release = threading.Event()
    queue.submit("hold", "hold", lambda: release.wait(10))
    queue.submit("t0", "first", first)
    for n in range(250):
        tid = f"t{n % 10}"
        queue.submit(tid, f"tag {n}", lambda tid=tid, n=n: client.set_tag(trial_runs.runs[tid], f"k{n}", "v"))
    release.set()


def _written(client, trial_runs) -> int:
    return sum(1 for run in trial_runs.runs.values() for k in client.get_run(run).data.tags if k.startswith("k"))


@pytest.mark.parametrize("name", ["KeyError", "no space", "INTERNAL_ERROR"])
def test_one_poisoned_write_among_250_is_listed_and_the_rest_arrive(name, store, tmp_path, capsys):
    client, runs = store
    trial_runs, poison = runs(), _permanent_errors()[name]

    def poisoned():
        raise poison

    queue = _queue(client, trial_runs, retry_every_s=1.0)
    _backlog(queue, client, trial_runs, poisoned)
    queue.flush(timeout_s=3.5)
    assert _written(client, trial_runs) == 250
    assert [(e["trial_id"], e["write"]) for e in queue.lost] == [("t0", "first")]
    assert queue.lost[0]["error"].startswith(type(poison).__name__)
    assert "first: " in client.get_run(trial_runs.runs["t0"]).data.tags["unlogged_writes"]  # the run says so
    queue.record_lost(tmp_path / "unlogged.json")
    assert [e["write"] for e in json.loads((tmp_path / "unlogged.json").read_text())] == ["first"]
    err = capsys.readouterr().err
    assert "MLflow unreachable" not in err and "dropped (first, trial t0)" in err


def test_a_transient_failure_is_retried_and_arrives_in_order(store, capsys):
    client, runs = store
    trial_runs, calls = runs(), []

    def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("Connection refused")
        client.set_tag(trial_runs.runs["t0"], "first", "made")

    queue = _queue(client, trial_runs, retry_every_s=0.01)
    _backlog(queue, client, trial_runs, flaky)
    queue.flush(timeout_s=10)
    assert len(calls) == 3 and queue.lost == [] and _written(client, trial_runs) == 250
    t0 = client.get_run(trial_runs.runs["t0"]).data.tags
    assert t0["first"] == "made" and "unlogged_writes" not in t0
    assert "MLflow unreachable" not in capsys.readouterr().err  # the other trials' writes went through


def test_a_write_that_keeps_failing_while_the_store_answers_is_given_up(store, capsys):
    client, runs = store
    trial_runs = runs()

    def never():
        raise TimeoutError("upload timed out")

    queue = _queue(client, trial_runs, retry_every_s=0.01, max_attempts=5)
    _backlog(queue, client, trial_runs, never)
    queue.flush(timeout_s=10)  # the other trials are done in a second: the write fails on alone
    assert _written(client, trial_runs) == 250  # t0's own tags too, behind the write given up
    assert [e["write"] for e in queue.lost] == ["first"]
    assert queue.lost[0]["error"].startswith("gave up after 5 transient failures")
    assert "TimeoutError: upload timed out" in client.get_run(trial_runs.runs["t0"]).data.tags["unlogged_writes"]
    assert "MLflow unreachable" not in capsys.readouterr().err


def test_failures_while_the_store_is_down_do_not_count_towards_the_cap():
    import threading

    up, done = threading.Event(), []

    def job():
        if not up.is_set():
            raise DOWN
        done.append("made")

    def probe():
        if not up.is_set():
            raise DOWN

    queue = WriteQueue(retry_every_s=0.01, max_attempts=2, probe=probe).start()
    queue.submit("t1", "start", job)
    queue.submit("t1", "result 1", job)
    threading.Timer(0.5, up.set).start()  # some 50 tries while the store is down
    queue.flush(timeout_s=5)
    assert done == ["made", "made"] and queue.lost == []


def test_waiting_for_the_writes_does_not_wait_out_a_retry(capsys):
    import time

    failed = []

    def upload():
        failed.append(1)
        raise TimeoutError("upload timed out")

    queue = WriteQueue(retry_every_s=30.0, probe=lambda: None).start()  # the store answers: the write's own error
    queue.submit("t1", "model", upload)
    started = time.perf_counter()
    assert not queue.wait_idle(10) and time.perf_counter() - started < 5  # Tune's state save is not held up
    assert failed == [1] and "MLflow unreachable" not in capsys.readouterr().err
    queue.flush(0.1)
    assert queue.lost[0]["error"] == "still failing when the phase ended: TimeoutError: upload timed out"
