"""spark_cf.data.convert and jobs/convert.py: delimited text to ratings Parquet, with rejects."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from conftest import shared_file

from spark_cf.data.convert import FORMATS, convert, parse_columns, read_delimited, resolve_format
from spark_cf.errors import ConfigError, InputError, SchemaError

pytestmark = pytest.mark.spark

ML_SCHEMA = "user_id long, item_id long, rating double, timestamp long"
MT_SCHEMA = "user_id long, item_id string, rating double, timestamp long"
REJECTS_SCHEMA = "source_file string not null, line string, reason string"
JOB_PATH = Path(__file__).resolve().parents[1] / "jobs" / "convert.py"


def write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def rejects_df(spark, path: str, rows: list[tuple[str, str]]):
    return spark.createDataFrame(
        [(f"file:{path}", line, reason) for line, reason in rows], REJECTS_SCHEMA
    )


# --- formats and column mappings (no Spark work) ---------------------------------------


def test_parse_columns_names_and_positions():
    assert parse_columns("user=uid, item=iid,rating=r,timestamp=ts") == {
        "user": "uid",
        "item": "iid",
        "rating": "r",
        "timestamp": "ts",
    }
    assert parse_columns("user=0,item=2,rating=1") == {"user": 0, "item": 2, "rating": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user=u,item=i", "misses rating"),
        ("user=u,item=i,rating=r,score=s", "unknown role 'score'"),
        ("user=u,user=v,item=i,rating=r", "given twice"),
        ("user,item=i,rating=r", "role=column pairs"),
    ],
)
def test_parse_columns_refuses_bad_mappings(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_columns(text)


def test_resolve_format_presets_and_refusals():
    # a preset without overrides comes back as it is
    for name, preset in FORMATS.items():
        assert resolve_format(name) == preset, name
    # each override replaces its own field and nothing else
    overrides = {
        "delimiter": ";",
        "header": True,
        "columns": {"user": 0, "item": 1, "rating": 2},
        "user_type": "string",
        "item_type": "long",
    }
    for field, value in overrides.items():
        got = resolve_format("movietweetings", **{field: value})
        assert got == dataclasses.replace(FORMATS["movietweetings"], **{field: value}), field
        assert got != FORMATS["movietweetings"], field
    with pytest.raises(ConfigError, match="unknown format 'tsv'"):
        resolve_format("tsv")
    with pytest.raises(ConfigError, match="delimiter must not be empty"):
        resolve_format("csv", delimiter="")
    with pytest.raises(ConfigError, match="item_type must be one of"):
        resolve_format("csv", item_type="int")
    with pytest.raises(ConfigError, match="without a header needs a column mapping"):
        resolve_format("csv", header=False)


# --- reading ---------------------------------------------------------------------------


def test_movielens_crlf_bom_and_malformed_lines(spark, tmp_path):
    path = write_bytes(
        tmp_path / "ratings.csv",
        b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n"
        b"1,31,2.5,1260759144\r\n"
        b" 2 , 10 ,4,835355493\r\n"  # padded fields
        b"\r\n"  # blank line: skipped, not a reject
        b"3,4,abc,5\r\n"
        b"4,5\r\n"
        b"5,6,7,8,9\r\n"
        b"6,1.5,3,1\r\n"
        b"7,,3,1\r\n"
        b"8,1,NaN,1\r\n"
        b"9,1,3,yesterday\r\n"
        b"1,1029,3.0,1260759179",  # last line without a line end
    )
    result = read_delimited(spark, path, fmt="movielens")

    expected = spark.createDataFrame(
        [(1, 31, 2.5, 1260759144), (2, 10, 4.0, 835355493), (1, 1029, 3.0, 1260759179)],
        ML_SCHEMA,
    )
    assert_df_equality(result.ratings, expected)
    expected_rejects = rejects_df(
        spark,
        path,
        [
            ("3,4,abc,5", "rating is not a number"),
            ("4,5", "expected 4 fields, got 2"),
            ("5,6,7,8,9", "expected 4 fields, got 5"),
            ("6,1.5,3,1", "item_id is not an integer"),
            ("7,,3,1", "item_id is empty"),
            ("8,1,NaN,1", "rating is not finite"),
            ("9,1,3,yesterday", "timestamp is not an integer"),
        ],
    )
    assert_df_equality(result.rejects, expected_rejects)


def test_movietweetings_keeps_leading_zeros(spark, tmp_path):
    path = write_bytes(
        tmp_path / "ratings.dat",
        b"1::0104257::8::1364690142\n"
        b"2::0000001::10::1364690143\r\n"
        b"3::1074638::0::1365029107\n"
        b"x::0104257::8::1\n"
        b"4::0104257:8::1\n",
    )
    result = read_delimited(spark, path, fmt="movietweetings")

    expected = spark.createDataFrame(
        [
            (1, "0104257", 8.0, 1364690142),
            (2, "0000001", 10.0, 1364690143),
            (3, "1074638", 0.0, 1365029107),
        ],
        MT_SCHEMA,
    )
    assert_df_equality(result.ratings, expected)
    expected_rejects = rejects_df(
        spark,
        path,
        [
            ("x::0104257::8::1", "user_id is not an integer"),
            ("4::0104257:8::1", "expected 4 fields, got 3"),
        ],
    )
    assert_df_equality(result.rejects, expected_rejects)

    # A mapping by the preset's field names still works without a header.
    no_time = read_delimited(
        spark,
        path,
        fmt="movietweetings",
        columns={"user": "user_id", "item": "movie_id", "rating": "rating"},
    )
    assert no_time.ratings.columns == ["user_id", "item_id", "rating"]


def test_generic_csv_by_header_names_without_timestamp(spark, tmp_path):
    path = write_bytes(
        tmp_path / "ratings.tsv",
        b"score\tiid\tuid\tnote\r\n4.5\t007\tu1\tok\r\n1\tA\tu2\t\r\n",
    )
    result = read_delimited(
        spark,
        path,
        fmt="csv",
        delimiter="\t",
        columns={"user": "uid", "item": "iid", "rating": "score"},
    )
    expected = spark.createDataFrame(
        [("u1", "007", 4.5), ("u2", "A", 1.0)], "user_id string, item_id string, rating double"
    )
    assert_df_equality(result.ratings, expected)
    assert result.rejects.count() == 0


def test_generic_csv_default_columns_and_positions(spark, tmp_path):
    named = write_bytes(tmp_path / "named.csv", b"item_id,user_id,rating,timestamp\ni1,u1,2,10\n")
    result = read_delimited(spark, named, fmt="csv")
    expected = spark.createDataFrame(
        [("u1", "i1", 2.0, 10)], "user_id string, item_id string, rating double, timestamp long"
    )
    assert_df_equality(result.ratings, expected)

    headerless = write_bytes(tmp_path / "plain.csv", b"7|8|3.5\n9|10\n")
    result = read_delimited(
        spark,
        headerless,
        fmt="csv",
        delimiter="|",
        header=False,
        columns={"user": 0, "item": 1, "rating": 2},
        user_type="long",
    )
    expected = spark.createDataFrame([(7, "8", 3.5)], "user_id long, item_id string, rating double")
    assert_df_equality(result.ratings, expected)
    assert_df_equality(
        result.rejects, rejects_df(spark, headerless, [("9|10", "expected 3 fields, got 2")])
    )


def test_header_without_the_mapped_column_is_refused(spark, tmp_path):
    path = write_bytes(tmp_path / "ratings.csv", b"uid,iid,stars\n1,2,3\n")
    with pytest.raises(SchemaError, match=r"'userId' for user is not in the header.*uid, iid"):
        read_delimited(spark, path, fmt="movielens")


def test_missing_or_empty_input_is_refused(spark, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_delimited(spark, str(tmp_path / "nope.csv"))
    empty = write_bytes(tmp_path / "empty.csv", b"")
    with pytest.raises(InputError, match="is empty"):
        read_delimited(spark, empty)


# --- convert ---------------------------------------------------------------------------


def test_convert_writes_ratings_and_rejects_and_counts(spark, tmp_path):
    src = write_bytes(
        tmp_path / "ratings.csv",
        b"userId,movieId,rating,timestamp\r\n1,2,3.5,100\r\n2,3,bad,200\r\n3,4,5,300\r\n",
    )
    dst = str(tmp_path / "out")
    counts = convert(spark, src, dst, fmt="movielens")

    assert counts == {"rows_read": 3, "rows_written": 2, "rows_rejected": 1}
    assert pq.read_table(dst).to_pylist() == [
        {"user_id": 1, "item_id": 2, "rating": 3.5, "timestamp": 100},
        {"user_id": 3, "item_id": 4, "rating": 5.0, "timestamp": 300},
    ]
    assert pq.read_table(dst + "_rejects").to_pylist() == [
        {"source_file": f"file:{src}", "line": "2,3,bad,200", "reason": "rating is not a number"}
    ]

    # A clean re-run replaces the table and removes the stale rejects.
    write_bytes(tmp_path / "ratings.csv", b"userId,movieId,rating,timestamp\n5,6,1,7\n")
    assert convert(spark, src, dst) == {"rows_read": 1, "rows_written": 1, "rows_rejected": 0}
    assert pq.read_table(dst).to_pylist() == [
        {"user_id": 5, "item_id": 6, "rating": 1.0, "timestamp": 7}
    ]
    assert not (tmp_path / "out_rejects").exists()


def test_convert_without_any_usable_line_leaves_output_alone(spark, tmp_path):
    src = write_bytes(tmp_path / "ratings.dat", b"1,2,3,4\n5,6,7,8\n")
    rejects = str(tmp_path / "quarantine")
    with pytest.raises(InputError, match=r"no line .* is a usable rating \(2 rejected"):
        convert(spark, src, str(tmp_path / "out"), fmt="movietweetings", rejects_path=rejects)
    assert not (tmp_path / "out").exists()
    assert pq.read_table(rejects).num_rows == 2


# --- the real data sets ----------------------------------------------------------------


@pytest.mark.data
def test_real_data_sets_convert_completely(spark, tmp_path):
    ml_path = shared_file("ml-latest-small/ratings.csv")
    mt_path = shared_file("movietweetings-100k/ratings.dat")

    with ml_path.open(newline="") as fh:
        ml_rows = list(csv.reader(fh))[1:]
    mt_rows = [line.split("::") for line in mt_path.read_text().splitlines() if line]

    def summary(dst: str) -> tuple[pa.Table, dict[str, float]]:
        table = pq.read_table(dst)
        return table, {
            "n": table.num_rows,
            "users": len(pc.unique(table["user_id"])),
            "items": len(pc.unique(table["item_id"])),
            "rating_sum": pc.sum(table["rating"]).as_py(),
            "timestamp_sum": pc.sum(table["timestamp"]).as_py(),
        }

    ml_dst = str(tmp_path / "ml")
    counts = convert(spark, str(ml_path), ml_dst, fmt="movielens")
    assert counts == {"rows_read": 100_836, "rows_written": 100_836, "rows_rejected": 0}
    assert not (tmp_path / "ml_rejects").exists()
    ml, row = summary(ml_dst)
    assert ml.schema.names == ["user_id", "item_id", "rating", "timestamp"]
    assert ml.schema.types == [pa.int64(), pa.int64(), pa.float64(), pa.int64()]
    assert (row["n"], row["users"], row["items"]) == (100_836, 610, 9_724)
    assert row["rating_sum"] == pytest.approx(sum(float(r[2]) for r in ml_rows))
    assert row["timestamp_sum"] == sum(int(r[3]) for r in ml_rows)

    mt_dst = str(tmp_path / "mt")
    counts = convert(spark, str(mt_path), mt_dst, fmt="movietweetings")
    assert counts == {"rows_read": 100_000, "rows_written": 100_000, "rows_rejected": 0}
    assert not (tmp_path / "mt_rejects").exists()
    mt, row = summary(mt_dst)
    assert mt.schema.names == ["user_id", "item_id", "rating", "timestamp"]
    assert mt.schema.types == [pa.int64(), pa.string(), pa.float64(), pa.int64()]
    assert (row["n"], row["users"], row["items"]) == (100_000, 16_554, 10_506)
    assert row["rating_sum"] == pytest.approx(sum(float(r[2]) for r in mt_rows))
    assert row["timestamp_sum"] == sum(int(r[3]) for r in mt_rows)
    items = set(pc.unique(mt["item_id"]).to_pylist())
    expected_items = {r[1] for r in mt_rows}
    assert any(i.startswith("0") for i in expected_items)
    assert items == expected_items


# --- the job ---------------------------------------------------------------------------


@pytest.fixture
def job(spark, monkeypatch):
    """jobs/convert.py as a module, using the test session; its stop() is recorded."""
    spec = importlib.util.spec_from_file_location("jobs_convert", JOB_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sessions = []

    def fake_build_session(master, app_name):
        sessions.append((master, app_name))
        return spark

    stops = []
    monkeypatch.setattr(module, "build_session", fake_build_session)
    monkeypatch.setattr(spark, "stop", lambda: stops.append(True))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield module, sessions, stops
    root.handlers[:], root.level = handlers, level  # undo setup_logging(force=True)


def test_job_converts_and_writes_parquet(job, tmp_path):
    module, sessions, stops = job
    src = write_bytes(
        tmp_path / "in.psv",
        b"uid|iid|r|ts\r\nu1|0042|4.5|10\r\nu2|0007|oops|11\r\nu3|0042|2|12\r\n",
    )
    out = tmp_path / "out"
    code = module.main(
        [
            "--input",
            src,
            "--output",
            str(out),
            "--format",
            "csv",
            "--delimiter",
            "pipe",
            "--header",
            "--columns",
            "user=uid,item=iid,rating=r,timestamp=ts",
            "--log-level",
            "WARNING",
        ]
    )
    assert code == 0
    assert sessions == [("local[2]", "spark-cf-convert")]
    assert stops == [True]
    table = pq.read_table(out).sort_by([("user_id", "ascending")])
    assert table.column_names == ["user_id", "item_id", "rating", "timestamp"]
    assert table.to_pydict() == {
        "user_id": ["u1", "u3"],
        "item_id": ["0042", "0042"],
        "rating": [4.5, 2.0],
        "timestamp": [10, 12],
    }
    rejects = pq.read_table(tmp_path / "out_rejects").to_pydict()
    assert rejects["line"] == ["u2|0007|oops|11"]
    assert rejects["reason"] == ["rating is not a number"]


def test_job_missing_input_exits_2(job, tmp_path, capsys):
    module, _, stops = job
    code = module.main(
        ["--input", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "out")]
    )
    assert code == 2
    assert stops == [True]
    err = capsys.readouterr().err
    assert "error: input path" in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_job_bad_columns_exit_2_before_spark(job, tmp_path):
    module, sessions, _ = job
    code = module.main(
        [
            "--input",
            str(tmp_path / "x"),
            "--output",
            str(tmp_path / "out"),
            "--format",
            "csv",
            "--columns",
            "user=a,item=b",
        ]
    )
    assert code == 2
    assert sessions == []
