"""The jobs as users run them: spark-submit with the library shipped as one zip, from
another working directory, and the standalone jobs on a published model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from spark_cf.packaging import build_zip
from spark_cf.synthetic import SyntheticSpec, write_parquet

pytestmark = [pytest.mark.spark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


def submit(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    return subprocess.run(
        [str(SPARK_SUBMIT), "--master", "local[2]", "--py-files", "spark_cf.zip", script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_spark_submit_with_the_zip_from_another_directory(tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    build_zip(work / "spark_cf.zip")
    for job in ("nightly.py", "recommend.py"):
        shutil.copy(ROOT / "jobs" / job, work / job)
    ratings = tmp_path / "ratings.parquet"
    write_parquet(
        SyntheticSpec(num_users=150, num_items=90, num_ratings=3000, seed=9), str(ratings)
    )
    conf = tmp_path / "job.toml"
    conf.write_text(
        f'[input]\npath = "{ratings}"\n[model]\nrank = 3\n[train]\nmax_iter = 10\n'
        f'[output]\nroot = "{tmp_path / "out"}"\nrun_date = "2026-03-04"\n'
    )
    proc = submit(work, "nightly.py", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # spark-submit passes the Python driver's stderr on to its stdout
    output = proc.stdout + proc.stderr
    loaded = [line for line in output.splitlines() if "INFO spark_cf: spark_cf" in line]
    assert loaded and f"from {work / 'spark_cf.zip'}" in loaded[0], loaded  # from the zip
    run = tmp_path / "out" / "run_date=2026-03-04"
    assert (run / "_SUCCESS").exists()
    assert f"published: {run}" in proc.stdout and "rmse" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ingest"]["rows_used"] == 3000

    proc = submit(
        work,
        "recommend.py",
        "--config",
        str(conf),
        "--model",
        str(run / "model"),
        "--output",
        str(tmp_path / "recs"),
        "--set",
        "recommend.top_n=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = pq.read_table(tmp_path / "recs")
    raw = pq.read_table(ratings)
    num_items = len(set(raw["item_id"].to_pylist()))
    rated = Counter(raw["user_id"].to_pylist())
    assert recs.num_rows == sum(min(3, num_items - n) for n in rated.values())
    assert sorted(set(recs["rank"].to_pylist())) == [1, 2, 3]


def test_a_bad_input_exits_non_zero_with_one_line(tmp_path):
    conf = tmp_path / "job.toml"
    conf.write_text(f'[input]\npath = "{tmp_path / "nothing"}"\n[output]\nroot = "{tmp_path}"\n')
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "nightly.py"), "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert f"error: input path {tmp_path / 'nothing'} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
