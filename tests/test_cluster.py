"""The nightly job on a real Spark standalone cluster (a master and two workers on
127.0.0.1), submitted as users do: spark-submit --master spark://... --py-files the zip,
from another folder. It must run on the cluster's executors and publish the same tables,
bit for bit, as a local[2] run of the same configuration; the standalone top-N job
(jobs/recommend.py), submitted the same way on the published model, must give the
nightly run's lists."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from spark_cf.config import load_config
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.nightly.run import run_nightly
from spark_cf.packaging import build_zip

sys.path.insert(0, str(Path(__file__).parent))
from cluster import StandaloneCluster, cluster_env  # noqa: E402

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
RUN_DATE = "2026-05-06"

#: Each published table and the columns that order its rows.
TABLES = {
    "model/user_factors": ["user_id"],
    "model/item_factors": ["item_id"],
    "predictions": ["user_id", "item_id"],
    "top_n": ["user_id", "rank"],
}


def column_bytes(column: pa.ChunkedArray) -> bytes:
    """The column's values as bytes: floats by their bits (NaN included), lists flattened."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = np.asarray(column.combine_chunks().value_lengths(), dtype=np.int64)
        values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return lengths.tobytes() + np.ascontiguousarray(values).tobytes()
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        return np.ascontiguousarray(column.to_numpy()).tobytes()
    return json.dumps(column.to_pylist()).encode()


def read_sorted(run: Path, table: str) -> pa.Table:
    return pq.read_table(run / table).sort_by([(key, "ascending") for key in TABLES[table]])


def test_nightly_on_a_standalone_cluster_matches_local_bit_for_bit(tmp_path, spark):
    ratings = tmp_path / "ratings.parquet"
    write_parquet(
        SyntheticSpec(num_users=600, num_items=200, num_ratings=6000, true_rank=4, seed=11),
        str(ratings),
    )
    conf = tmp_path / "job.toml"
    conf.write_text(
        '[spark]\nmaster = "local[2]"\n'
        f'[input]\npath = "{ratings}"\n'
        "[model]\nrank = 4\nbiases = true\nreg = 3.0\n"
        "[train]\nmax_iter = 5\nnum_user_blocks = 2\nnum_item_blocks = 1\n"
        "[ranking]\nrank = 4\nmax_iter = 5\n"
        f'[output]\nroot = "{tmp_path / "local"}"\nrun_date = "{RUN_DATE}"\n'
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    build_zip(work / "spark_cf.zip")
    for job in ("nightly.py", "recommend.py"):
        shutil.copy(ROOT / "jobs" / job, work / job)
    on_cluster = tmp_path / "cluster_out" / f"run_date={RUN_DATE}"

    def submit(master: str, script: str, *args: str) -> str:
        proc = subprocess.run(
            [str(SPARK_SUBMIT), "--master", master, "--py-files", "spark_cf.zip", script, *args],
            cwd=work,
            env=cluster_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        # spark-submit passes the Python driver's stderr on to its stdout
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        loaded = [
            line for line in output.splitlines() if "INFO [MainThread] spark_cf: spark_cf" in line
        ]
        assert loaded and f"from {work / 'spark_cf.zip'}" in loaded[0], loaded  # the zip's
        return proc.stdout

    with StandaloneCluster(tmp_path / "cluster", workers=2, cores=1, memory="2g") as cluster:
        out = submit(
            cluster.url,
            "nightly.py",
            "--config",
            str(conf),
            "--set",
            f'output.root="{tmp_path / "cluster_out"}"',
        )
        assert f"published: {on_cluster}" in out and "rmse" in out  # the job's report
        state = cluster.master_json()
        workers = [cluster.worker_json(i) for i in range(2)]
        # the standalone top-N job on the published model, with the zip too
        out = submit(
            cluster.url,
            "recommend.py",
            "--config",
            str(conf),
            "--model",
            str(on_cluster / "ranking_model"),  # the model of the published top_n
            "--output",
            str(tmp_path / "recs"),
            "--set",
            "recommend.top_n=3",
        )
        assert f"top-N: {tmp_path / 'recs'}" in out

    meta = json.loads((on_cluster / "model" / "metadata.json").read_text())
    settings = meta["spark"]
    assert settings["spark.master"] == cluster.url  # spark-submit's master, not the config's
    app_id = settings["spark.app.id"]
    finished = {app["id"]: app for app in state["completedapps"] + state["activeapps"]}
    assert app_id in finished, state
    # one executor on each worker ran this application
    hosts = [
        w["id"]
        for w in workers
        if any(e["appid"] == app_id for e in w["executors"] + w["finishedexecutors"])
    ]
    assert len(hosts) == 2, workers
    assert "spark_cf.zip" in settings["spark.submit.pyFiles"]

    # the same configuration on local[2] (this process's session), for comparison
    cfg = load_config(str(conf))
    run_nightly(spark, cfg)
    local = tmp_path / "local" / f"run_date={RUN_DATE}"
    for table in TABLES:
        ours, theirs = read_sorted(on_cluster, table), read_sorted(local, table)
        assert ours.schema == theirs.schema, table
        assert ours.num_rows == theirs.num_rows > 0, table
        for name in ours.column_names:
            assert column_bytes(ours[name]) == column_bytes(theirs[name]), (table, name)
    local_meta = json.loads((local / "model" / "metadata.json").read_text())
    assert meta["final_cost"] == local_meta["final_cost"]
    assert meta["iterations"] == local_meta["iterations"] == 5
    metrics = json.loads((on_cluster / "metrics.json").read_text())
    raw = pq.read_table(ratings)
    assert metrics["ingest"]["rows_used"] == raw.num_rows

    # The recommend job's top 3 from the saved model are the nightly run's first 3 ranks,
    # bit for bit, and every user gets min(3, items left unrated) of them.
    recs = pq.read_table(tmp_path / "recs").sort_by(
        [("user_id", "ascending"), ("rank", "ascending")]
    )
    published = read_sorted(on_cluster, "top_n")
    first3 = published.filter(pc.less_equal(published["rank"], 3))
    assert recs.schema == published.schema
    for name in recs.column_names:
        assert column_bytes(recs[name]) == column_bytes(first3[name]), name
    num_items = len(set(raw["item_id"].to_pylist()))
    rated = Counter(raw["user_id"].to_pylist())
    assert recs.num_rows == sum(min(3, num_items - n) for n in rated.values())
