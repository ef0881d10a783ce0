"""Local runs retry failed tasks: a Python worker killed while it computes a block's
gradient costs a task attempt, not the run, and the model is the undisturbed one."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from spark_cf.config import load_config
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.nightly.run import ingest_and_prepare, train_with_config

pytestmark = [pytest.mark.spark, pytest.mark.slow]
GROUP = "spark-cf-kill-test"


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, started by any of its threads."""
    children = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                children += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        pass
    return children


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


def python_daemons(root: int) -> list[int]:
    """The ``pyspark.daemon`` processes below process ``root`` (its JVM's children)."""
    found, frontier = [], [root]
    while frontier:
        frontier = [child for pid in frontier for child in _children(pid)]
        for pid in frontier:
            try:
                if b"pyspark.daemon" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
        frontier = [pid for pid in frontier if pid not in found]
    return found


def busy_python_workers(daemons: list[int]) -> list[int]:
    """The daemons' forked workers that are running now (state R)."""
    return [pid for d in daemons for pid in _children(d) if _state(pid) == "R"]


def failed_tasks(tracker) -> int:
    """Failed task attempts in the jobs of this test's job group so far."""
    failed = 0
    for job in tracker.getJobIdsForGroup(GROUP):
        info = tracker.getJobInfo(job)
        for stage in info.stageIds if info else []:
            stage_info = tracker.getStageInfo(stage)
            failed += stage_info.numFailedTasks if stage_info else 0
    return failed


class WorkerKiller(threading.Thread):
    """Once training runs, SIGKILL a busy Python worker until a task attempt has failed."""

    def __init__(self, tracker, max_kills: int = 30):
        super().__init__(daemon=True)
        self.tracker = tracker
        self.max_kills = max_kills
        self.kills: list[int] = []
        self.finished = threading.Event()

    def run(self) -> None:
        while not self.finished.is_set() and not self.tracker.getJobIdsForGroup(GROUP):
            time.sleep(0.01)
        time.sleep(0.5)  # a few iterations in
        daemons, looked = [], 0.0
        while not self.finished.is_set() and len(self.kills) < self.max_kills:
            if time.monotonic() - looked > 1.0:
                daemons, looked = python_daemons(os.getpid()), time.monotonic()
            busy = busy_python_workers(daemons)
            if not busy:
                time.sleep(0.0005)
                continue
            os.kill(busy[0], signal.SIGKILL)
            self.kills.append(busy[0])
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and not self.finished.is_set():
                if failed_tasks(self.tracker):
                    return
                time.sleep(0.05)


def test_a_killed_python_worker_is_retried_and_the_model_is_unchanged(spark, tmp_path):
    assert spark.sparkContext.master.startswith("local[2,")  # local runs retry
    ratings = tmp_path / "ratings.parquet"
    write_parquet(
        SyntheticSpec(num_users=1500, num_items=500, num_ratings=30000, true_rank=5, seed=5),
        str(ratings),
    )
    conf = tmp_path / "job.toml"
    conf.write_text(
        f'[input]\npath = "{ratings}"\n[model]\nrank = 12\nreg = 10.0\n'
        # 40 iterations: enough busy moments for the killer (the kernel got faster, and 12
        # iterations could end with no kill landing inside a task)
        "[train]\nmax_iter = 40\ntol = 0.0\nnum_user_blocks = 2\nnum_item_blocks = 1\n"
    )
    cfg = load_config(str(conf))
    ingested, data = ingest_and_prepare(spark, cfg, {})
    undisturbed, _ = train_with_config(data, cfg)

    sc = spark.sparkContext
    killer = WorkerKiller(sc.statusTracker())
    sc.setJobGroup(GROUP, "training with a worker killed")
    killer.start()
    try:
        disturbed, result = train_with_config(data, cfg)
    finally:
        killer.finished.set()
        killer.join()
        sc.setLocalProperty("spark.jobGroup.id", None)
        ingested.unpersist()
    assert killer.kills, "no busy Python worker was found to kill"
    assert failed_tasks(sc.statusTracker()) >= 1, f"killed {killer.kills}, no task failed"
    assert result.iterations == 40
    for name in ("item_factors", "user_factors", "item_means"):
        np.testing.assert_array_equal(getattr(disturbed, name), getattr(undisturbed, name))
    assert disturbed.global_mean == undisturbed.global_mean
