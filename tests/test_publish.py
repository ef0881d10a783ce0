"""Publishing that two runs and a crash cannot break (spark_cf.outputs.publish), on real folders
through the session's Hadoop file system: the lock, renames that never nest, a crash at
every step of a publication (in process, and one real kill of another process), recovery
by the next run, and no debris where a reader's glob looks."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_cf import cli, storage
from spark_cf.errors import LockError, PathError, PublishError
from spark_cf.outputs import publish
from spark_cf.outputs.publish import Crash, Publication, Target

pytestmark = pytest.mark.spark

DATE = "run_date=2026-01-02"
#: The glob the README recommends, and the plain one readers write anyway.
GLOBS = ("{root}/run_date=*/predictions/*.parquet", "{root}/*/predictions/*.parquet")


def write_run(folder: str, version: int) -> None:
    """A tiny complete run: a predictions table tagged with ``version``, then _SUCCESS."""
    os.makedirs(f"{folder}/predictions")
    pq.write_table(
        pa.table({"version": [version] * 3, "user_id": [1, 2, 3]}),
        f"{folder}/predictions/part-0.parquet",
    )
    Path(folder, "_SUCCESS").write_text("")


def published_version(run: Path) -> int:
    """The version of the complete run at ``run`` (fails unless _SUCCESS is there)."""
    assert (run / "_SUCCESS").exists(), f"no complete run at {run}"
    versions = set(pq.read_table(str(run / "predictions"))["version"].to_pylist())
    assert len(versions) == 1
    return versions.pop()


def glob_hits(root: Path) -> dict[str, list[str]]:
    return {g: sorted(glob.glob(g.format(root=root))) for g in GLOBS}


def assert_no_debris(root: Path, runs: list[str]) -> None:
    """Only the runs under ``root``, and the globs match exactly their predictions."""
    assert sorted(os.listdir(root)) == sorted(runs)
    expected = sorted(str(root / r / "predictions" / "part-0.parquet") for r in runs)
    for hits in glob_hits(root).values():
        assert hits == expected


def publish_run(spark, root: Path, version: int, name: str = DATE) -> None:
    with Publication(spark, str(root / name)) as pub:
        write_run(pub.staging, version)
        pub.commit()


@pytest.fixture
def hook():
    """Set ``publish.fault_hook`` for one test, unset after."""

    def set_hook(fn):
        publish.fault_hook = fn

    yield set_hook
    publish.fault_hook = None


def crash_at(step: str):
    def fn(name: str) -> None:
        if name == step:
            raise Crash(step)

    return fn


# ----------------------------------------------------------------------------- renames


def test_rename_onto_an_existing_folder_is_refused_and_nests_nothing(spark, tmp_path):
    src, dst = tmp_path / "staged", tmp_path / "run"
    write_run(str(src), 2)
    write_run(str(dst), 1)
    with pytest.raises(PublishError, match="existing path"):
        storage.rename(spark, str(src), str(dst))
    assert sorted(os.listdir(dst)) == ["_SUCCESS", "predictions"]  # nothing moved inside
    assert published_version(dst) == 1 and published_version(src) == 2
    # a job that meets this after its work exits 1 (the file system, not the input)
    assert cli.run(lambda: storage.rename(spark, str(src), str(dst))) == cli.EXIT_CRASH


def test_rename_to_a_free_path_moves_the_folder(spark, tmp_path):
    src, dst = tmp_path / "staged", tmp_path / "deeper" / "run"
    write_run(str(src), 2)
    storage.rename(spark, str(src), str(dst))
    assert not src.exists() and published_version(dst) == 2


def test_a_folder_holding_a_child_of_its_own_name_renames(spark, tmp_path):
    """``--model-out out/user_factors`` stages a folder that holds ``user_factors``: that
    child is not a sign of nesting."""
    src, dst = tmp_path / "user_factors", tmp_path / "out" / "user_factors"
    write_run(str(src / "user_factors"), 3)
    storage.rename(spark, str(src), str(dst))
    assert not src.exists() and published_version(dst / "user_factors") == 3


# --------------------------------------------------------------------------- publishing


def test_republishing_replaces_the_run_and_leaves_only_the_runs(spark, tmp_path):
    root = tmp_path / "out"
    publish_run(spark, root, 1)
    publish_run(spark, root, 2, "run_date=2026-01-03")
    publish_run(spark, root, 3)
    assert published_version(root / DATE) == 3
    assert published_version(root / "run_date=2026-01-03") == 2
    assert_no_debris(root, [DATE, "run_date=2026-01-03"])


def test_staging_is_invisible_to_the_globs_while_a_run_is_written(spark, tmp_path, hook):
    root = tmp_path / "out"
    publish_run(spark, root, 1)
    seen: dict[str, dict[str, list[str]]] = {}
    hook(lambda step: seen.setdefault(step, glob_hits(root)))
    publish_run(spark, root, 2)
    old = [str(root / DATE / "predictions" / "part-0.parquet")]
    for step in ("staged", "swapped", "cleaned"):  # the run is complete at each
        assert all(hits == old for hits in seen[step].values()), step
    assert all(hits == [] for hits in seen["aside"].values())  # between the two renames
    assert_no_debris(root, [DATE])


def test_a_failed_write_leaves_the_published_run_and_no_debris(spark, tmp_path):
    root = tmp_path / "out"
    publish_run(spark, root, 1)
    with pytest.raises(ZeroDivisionError):
        with Publication(spark, str(root / DATE)) as pub:
            write_run(pub.staging, 2)
            _ = 1 / 0
    assert published_version(root / DATE) == 1
    assert_no_debris(root, [DATE])


@pytest.mark.parametrize("step", publish.STEPS)
def test_crash_at_each_step_leaves_a_complete_run_and_the_next_run_no_debris(
    spark, tmp_path, hook, step, caplog
):
    root = tmp_path / "out"
    publish_run(spark, root, 1)
    hook(crash_at(step))
    with pytest.raises(Crash):
        publish_run(spark, root, 2)
    hook(None)
    run = root / DATE
    lock = root / "_staging" / f"{DATE}.lock"
    assert lock.exists()  # a killed run leaves its lock (its owner is then dead)
    if step == "aside":  # between the two renames: the old run waits complete aside
        assert not run.exists()
        assert published_version(root / "_staging" / f"{DATE}.aside") == 1
    else:
        assert published_version(run) == (2 if step in ("swapped", "cleaned") else 1)
    for hits in glob_hits(root).values():  # no staged or aside table matches the globs
        assert all(h.startswith(str(run) + "/") for h in hits)
    with caplog.at_level(logging.WARNING, logger="spark_cf.outputs.publish"):
        with Publication(spark, str(run)):  # the next run's start recovers
            pass
    assert "taking over the stale lock" in caplog.text
    assert published_version(run) == (2 if step in ("swapped", "cleaned") else 1)
    assert_no_debris(root, [DATE])
    publish_run(spark, root, 3)
    assert published_version(run) == 3
    assert_no_debris(root, [DATE])


def test_a_failed_swap_puts_the_set_aside_run_back(spark, tmp_path, hook):
    """The second rename of the swap fails after the old run was moved aside (here its
    staging folder vanished under it): the old run must be back at its place, complete,
    within the same publication, not left aside for the next run to recover."""
    root = tmp_path / "out"
    publish_run(spark, root, 1)
    staging: list[str] = []

    def lose_staging(step: str) -> None:
        if step == "aside":  # the old run is aside, the new one not yet renamed in
            assert not (root / DATE).exists()
            shutil.rmtree(staging[0])

    hook(lose_staging)
    with pytest.raises(PublishError, match="does not exist"):
        with Publication(spark, str(root / DATE)) as pub:
            staging.append(pub.staging)
            write_run(pub.staging, 2)
            pub.commit()
    hook(None)
    assert published_version(root / DATE) == 1
    assert not (root / "_staging").exists()  # no aside, no lock left
    assert_no_debris(root, [DATE])


def test_next_run_of_another_date_removes_a_crashed_runs_debris(spark, tmp_path, hook):
    root = tmp_path / "out"
    publish_run(spark, root, 1)
    hook(crash_at("aside"))
    with pytest.raises(Crash):
        publish_run(spark, root, 2)
    hook(None)
    publish_run(spark, root, 5, "run_date=2026-01-03")
    assert published_version(root / DATE) == 1  # put back by the other date's run
    assert_no_debris(root, [DATE, "run_date=2026-01-03"])


def test_leftovers_of_the_old_layout_are_recovered(spark, tmp_path):
    """Before this protocol: ``_staging-<name>-<hex12>`` staging and ``...-old`` asides
    beside the runs."""
    root = tmp_path / "out"
    write_run(str(root / f"_staging-{DATE}-0123456789ab-old"), 1)  # killed mid-swap
    write_run(str(root / f"_staging-{DATE}-ba9876543210"), 2)  # killed while writing
    write_run(str(root / "run_date=2026-01-03"), 4)
    write_run(str(root / "_staging-run_date=2026-01-03-aaaabbbbcccc-old"), 3)  # killed after
    publish_run(spark, root, 6, "run_date=2026-01-04")
    assert published_version(root / DATE) == 1
    assert published_version(root / "run_date=2026-01-03") == 4
    assert_no_debris(root, [DATE, "run_date=2026-01-03", "run_date=2026-01-04"])


def test_write_table_replaces_a_table_without_debris(spark, tmp_path):
    path = tmp_path / "tables" / "ratings.parquet"
    storage.write_table(spark.createDataFrame([(1, 2.0), (2, 3.0)], "u int, r double"), str(path))
    storage.write_table(spark.createDataFrame([(7, 1.0)], "u int, r double"), str(path))
    assert pq.read_table(str(path)).to_pylist() == [{"u": 7, "r": 1.0}]
    assert os.listdir(tmp_path / "tables") == ["ratings.parquet"]


# ------------------------------------------------------------------------------ the lock


def write_lock(root: Path, **owner) -> Path:
    values = {
        "host": socket.gethostname(),
        "pid": 1,
        "pid_start": None,
        "user": "someone",
        "app_id": "local-1",
        "started_at": time.time(),
        "token": "t",
    }
    values.update(owner)
    path = root / "_staging" / f"{DATE}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    return path


def test_second_run_of_a_date_exits_4_naming_the_lock_while_the_first_holds_it(
    spark, tmp_path, capsys
):
    from spark_cf.config import Config
    from spark_cf.nightly.run import run_nightly

    root = tmp_path / "out"
    ratings = tmp_path / "ratings.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1, 1], "rating": [4.0, 3.0]}), ratings)
    cfg = Config().replace(
        input={"path": str(ratings)},
        output={"root": str(root), "run_date": "2026-01-02"},
    )
    sc = spark.sparkContext
    with Publication(spark, str(root / DATE)) as first:
        sc.setJobGroup("second-run", "the refused run")
        code = cli.run(lambda: run_nightly(spark, cfg))
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        assert list(sc.statusTracker().getJobIdsForGroup("second-run")) == []  # no work done
        write_run(first.staging, 1)
        first.commit()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == cli.EXIT_LOCKED == 4
    assert len(errors) == 1  # one line naming the lock and its owner
    assert f"{root}/_staging/{DATE}.lock" in errors[0] and f"pid {os.getpid()}" in errors[0]
    assert published_version(root / DATE) == 1  # the first run published undisturbed
    assert_no_debris(root, [DATE])


def test_a_lock_of_a_live_process_is_refused_and_of_a_dead_one_taken_over(spark, tmp_path, caplog):
    root = tmp_path / "out"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(root, pid=sleeper.pid, pid_start=publish._process_start(sleeper.pid))
        with pytest.raises(LockError, match=f"pid {sleeper.pid} on {socket.gethostname()}"):
            publish_run(spark, root, 1)
    finally:
        sleeper.kill()
        sleeper.wait()
    with caplog.at_level(logging.WARNING, logger="spark_cf.outputs.publish"):
        publish_run(spark, root, 1)
    assert f"process {sleeper.pid} on {socket.gethostname()} is gone" in caplog.text
    assert published_version(root / DATE) == 1
    assert_no_debris(root, [DATE])


def test_a_run_waits_for_another_runs_short_recovery_hold(spark, tmp_path):
    """Another run's start holds a target's lock briefly to clean up after a crash: a run
    of that target then waits instead of exiting 4."""
    root = tmp_path / "out"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock = write_lock(root, pid=sleeper.pid, purpose="recover")
        threading.Timer(1.0, lock.unlink).start()
        started = time.perf_counter()
        publish_run(spark, root, 1)
        assert time.perf_counter() - started >= 1.0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert published_version(root / DATE) == 1
    assert_no_debris(root, [DATE])


def test_an_empty_lock_is_taken_over_once_a_minute_old(spark, tmp_path):
    """A run killed between creating its lock and writing its owner leaves it empty."""
    root = tmp_path / "out"
    lock = write_lock(root)
    lock.write_text("")
    with pytest.raises(LockError, match="owner not written yet"):
        publish_run(spark, root, 1)
    os.utime(lock, (time.time() - 120, time.time() - 120))
    publish_run(spark, root, 1)
    assert published_version(root / DATE) == 1
    assert_no_debris(root, [DATE])


def test_a_lock_from_another_host_is_taken_over_only_after_the_timeout(spark, tmp_path):
    root = tmp_path / "out"
    write_lock(root, host="elsewhere", started_at=time.time() - 7200)
    with pytest.raises(LockError, match="elsewhere"):
        with Publication(spark, str(root / DATE), timeout_s=3 * 3600):
            pass
    with Publication(spark, str(root / DATE), timeout_s=3600) as pub:
        write_run(pub.staging, 1)
        pub.commit()
    assert published_version(root / DATE) == 1
    assert_no_debris(root, [DATE])


@pytest.mark.slow
def test_a_killed_process_mid_swap_is_recovered_by_the_next_run(spark, tmp_path):
    """A real kill (``os._exit`` in another process) between the two renames."""
    root = tmp_path / "out"
    publish_run(spark, root, 1)
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pyspark.sql import SparkSession
        from spark_cf.outputs import publish
        from test_publish import write_run

        spark = (
            SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
            .getOrCreate()
        )
        publish.fault_hook = lambda step: os._exit(9) if step == "aside" else None
        with publish.Publication(spark, {str(root / DATE)!r}) as pub:
            write_run(pub.staging, 2)
            pub.commit()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert not (root / DATE).exists()  # killed between the two renames
    owner = json.loads((root / "_staging" / f"{DATE}.lock").read_text())
    assert owner["pid"] != os.getpid()
    publish_run(spark, root, 3, "run_date=2026-01-03")  # another date's run recovers it
    assert published_version(root / DATE) == 1
    publish_run(spark, root, 4)
    assert published_version(root / DATE) == 4
    assert_no_debris(root, [DATE, "run_date=2026-01-03"])


def test_a_live_owner_keeps_its_lock_past_the_timeout(spark, tmp_path):
    """The timeout is for owners that cannot be checked: a run known to go on (here a real
    process on this host) is never taken over, and its staging is left alone."""
    root = tmp_path / "out"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(root, pid=sleeper.pid, started_at=time.time() - 25 * 3600)
        staging = root / "_staging" / f"{DATE}.staging-0123456789ab"
        write_run(str(staging), 7)
        with pytest.raises(LockError, match=f"pid {sleeper.pid}"):
            with Publication(spark, str(root / DATE), timeout_s=3600):
                pass
        assert published_version(staging) == 7
    finally:
        sleeper.kill()
        sleeper.wait()


def test_target_of_an_absolute_or_remote_path_keeps_its_root():
    top = Target.of("/model")
    assert (top.parent, top.final, top.control) == ("/", "/model", "/_staging")
    run = Target.of("hdfs://nn:8020/cf/run_date=2026-01-02")
    assert run.final == "hdfs://nn:8020/cf/run_date=2026-01-02"
    assert run.lock == "hdfs://nn:8020/cf/_staging/run_date=2026-01-02.lock"
    assert Target.of("model").final == "./model"


def test_target_must_name_a_visible_folder():
    assert Target.of("out/run_date=2026-01-02/").final == "out/run_date=2026-01-02"
    with pytest.raises(PathError, match="_staging"):  # a bad path given: exit 2
        Target.of("out/_staging")
    assert not issubclass(PathError, PublishError)


def test_lock_timeout_must_be_positive():
    from spark_cf.config import load_config
    from spark_cf.errors import ConfigError

    assert load_config(None).output.lock_timeout_hours == 24.0
    with pytest.raises(ConfigError, match=r"output\.lock_timeout_hours must be > 0"):
        load_config(None, ["output.lock_timeout_hours=0"])
