"""Real servers for the tests: `mlflow server` on a free loopback port (artifacts served by it)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1:port; stop() and start() again on the same port and store."""

    def __init__(self, backend: str, artifacts: Path):
        self.backend, self.artifacts, self.port = backend, artifacts, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = artifacts.parent / f"mlflow-server-{self.port}.log"
        self.process = None

    def start(self) -> "MlflowServer":
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend, "--artifacts-destination",
             str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            assert self.process.poll() is None, "mlflow server exited at start:\n" + self.log.read_text()[-3000:]
            time.sleep(0.5)
        raise TimeoutError("mlflow server did not come up")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
