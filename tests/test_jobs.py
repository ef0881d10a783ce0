"""The jobs as users run them: exit codes and one-line errors, and the verify job.

spark-submit with the library shipped as one zip, from another folder, is tested on a real
standalone cluster in test_cluster.py (the nightly and recommend jobs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from spark_cf.data.synthetic import SyntheticSpec, write_parquet

pytestmark = [pytest.mark.spark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.extended
def test_verify_job_on_string_ids(tmp_path):
    """(extended: about 45 s in a subprocess; test_verify.py keeps the parity check's
    coverage in-process, test_config.py the verify job's refusal of a bad config.)"""
    table = pq.read_table(write_parquet_path(tmp_path))
    strings = table.set_column(0, "user_id", pc.cast(table["user_id"], pa.string()))
    strings = strings.set_column(
        1, "item_id", pc.binary_join_element_wise("m", pc.cast(strings["item_id"], pa.string()), "")
    )
    path = tmp_path / "strings.parquet"
    pq.write_table(strings, path)
    args = [
        sys.executable,
        str(ROOT / "jobs" / "verify.py"),
        "--set",
        f"input.path={path}",
        "--set",
        "model.rank=3",
        "--set",
        "train.optimizer='nesterov'",
        "--set",
        "train.learning_rate=0.001",
        "--set",
        "train.max_iter=20",
        "--set",
        "train.num_user_blocks=2",
    ]
    # one run: an impossible tolerance makes it a mismatch (exit 3, rounding-level
    # differences exist), and the figures it prints show parity at 1e-9 on string ids
    proc = subprocess.run(
        [*args, "--tolerance", "1e-300"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "lockstep (tolerance 1e-300): MISMATCH" in proc.stdout
    figures = {
        name: float(re.search(rf"^{re.escape(name)}\s+([0-9.e+-]+)", proc.stdout, re.M)[1])
        for name in (
            "max |dX|",
            "max |dTheta|",
            "max |d prediction|",
            "max rel. dJ",
            "final rel. dJ",
            "lockstep rel. dJ",
            "lockstep rel. dgrad",
        )
    }
    assert max(figures.values()) <= 1e-9, figures
    assert re.search(r"^iterations\s+spark 20, reference 20$", proc.stdout, re.M), proc.stdout


def write_parquet_path(tmp_path) -> Path:
    path = tmp_path / "ints.parquet"
    write_parquet(SyntheticSpec(num_users=80, num_items=50, num_ratings=1200, seed=4), str(path))
    return path


def nightly(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "nightly.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_a_file_that_is_not_parquet_exits_2_with_one_line_naming_it(tmp_path):
    bad = tmp_path / "ratings.parquet"
    bad.write_text("user_id,item_id,rating\n1,2,3.0\n")
    proc = nightly("--set", f"input.path={bad}", "--set", f"output.root={tmp_path / 'out'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: cannot read the Parquet input {bad}: ")
    assert "is not a Parquet file" in line and "Py4JJavaError" not in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "run_date").exists()


def test_an_unwritable_output_root_exits_2_before_the_ratings_are_read(tmp_path):
    (tmp_path / "file").write_text("x")
    root = tmp_path / "file" / "out"
    ratings = tmp_path / "ratings.parquet"
    pq.write_table(pa.table({"user_id": [1], "item_id": [1], "rating": [9.0]}), ratings)
    proc = nightly("--set", f"input.path={ratings}", "--set", f"output.root={root}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: output.root = {root} is not writable")
    assert "stage ingest" not in proc.stderr  # refused before the ratings were read


@pytest.mark.parametrize(
    "query, code, error_class",
    [
        ("bad_file", 2, "FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER"),
        ("SELECT 1 / 0 AS x", 1, "DIVIDE_BY_ZERO"),
    ],
)
def test_a_jvm_error_becomes_one_line_with_its_class(
    spark, tmp_path, capsys, query, code, error_class
):
    from spark_cf import cli

    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")

    def body() -> int:
        if query == "bad_file":
            spark.read.parquet(str(bad))  # raw Spark, no translation on the way
        else:
            spark.sql(query).collect()  # ANSI mode is Spark 4's default
        return 0

    assert cli.run(body) == code
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: Spark error [{error_class}]: "), lines
    assert "SQLSTATE" not in lines[0] and "\tat " not in lines[0]
