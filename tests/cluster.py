"""Test support: a Spark standalone cluster (one master, N workers) on 127.0.0.1.

pip's pyspark has no ``start-master.sh``, but its ``spark-class`` starts the master and
the workers as ordinary processes. Each runs in its own process group (the executors a
worker starts are in the worker's group), so :meth:`StandaloneCluster.stop` ends exactly
what was started, also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = Path(sys.executable).parent / "spark-class"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def cluster_env() -> dict[str, str]:
    """The environment of every cluster process and of the driver: loopback only."""
    return dict(
        os.environ,
        SPARK_HOME=str(SPARK_HOME),
        SPARK_LOCAL_IP=HOST,
        SPARK_LOCAL_HOSTNAME=HOST,
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )


def read_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


class StandaloneCluster:
    """A master and ``workers`` workers, each with ``cores`` cores and ``memory``.

    Use as a context manager; ``url`` is the master's ``spark://`` address,
    ``master_json`` and ``worker_json`` read their web UIs' JSON.
    """

    def __init__(self, work: Path, workers: int = 2, cores: int = 1, memory: str = "2g"):
        self.work = Path(work)
        self.num_workers = workers
        self.cores = cores
        self.memory = memory
        self.port = free_port()
        self.webui_port = free_port()
        self.worker_webui_ports = [free_port() for _ in range(workers)]
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"spark://{HOST}:{self.port}"

    def master_json(self) -> dict[str, Any]:
        return read_json(f"http://{HOST}:{self.webui_port}/json/")

    def worker_json(self, index: int) -> dict[str, Any]:
        return read_json(f"http://{HOST}:{self.worker_webui_ports[index]}/json/")

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.work / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.processes.append(
            subprocess.Popen(
                [str(SPARK_CLASS), *args],
                cwd=self.work,
                env=cluster_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def start(self, timeout: float = 120.0) -> StandaloneCluster:
        """Start the master and the workers; wait until every worker is ALIVE."""
        self.work.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "master",
            MASTER_CLASS,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--webui-port",
            str(self.webui_port),
        )
        for index, webui in enumerate(self.worker_webui_ports):
            work_dir = self.work / f"worker-{index}"
            work_dir.mkdir(exist_ok=True)
            self._spawn(
                f"worker-{index}",
                WORKER_CLASS,
                "--host",
                HOST,
                "--cores",
                str(self.cores),
                "--memory",
                self.memory,
                "--webui-port",
                str(webui),
                "--work-dir",
                str(work_dir),
                self.url,
            )
        deadline = time.monotonic() + timeout
        while True:
            alive = self._alive_workers()
            if alive == self.num_workers:
                return self
            dead = [p.args[1] for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"cluster not up ({alive} of {self.num_workers} workers alive, "
                    f"exited: {dead}); logs in {self.work}"
                )
            time.sleep(0.5)

    def _alive_workers(self) -> int:
        try:
            state = self.master_json()
        except OSError:
            return 0
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def stop(self, grace: float = 10.0) -> None:
        """End every process group this cluster started: TERM, then KILL after ``grace``."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in reversed(self.processes):
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group: executors included
            except ProcessLookupError:
                pass
            proc.wait()

    def __enter__(self) -> StandaloneCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
