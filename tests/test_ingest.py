"""Ingest on real Parquet files: schema errors, every quarantine reason, duplicates, counts,
and the deterministic id index."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from spark_cf import storage
from spark_cf.config import InputConfig
from spark_cf.data.indexing import apply_index, build_index
from spark_cf.data.ingest import ingest
from spark_cf.data.prepare import prepare, tag_holdout
from spark_cf.errors import InputError, SchemaError
from spark_cf.schema import IS_VAL, ITEM_IDX, USER_IDX

pytestmark = pytest.mark.spark


def write(tmp_path, table: pa.Table, name="ratings.parquet") -> str:
    path = tmp_path / name
    pq.write_table(table, path)
    return str(path)


def cfg(path, **kw) -> InputConfig:
    return InputConfig(path=path, **kw)


def test_bad_rows_are_quarantined_with_reasons_and_counted(spark, tmp_path):
    table = pa.table(
        {
            "user_id": pa.array([1, 2, None, 4, 5, 6, 7, 8, 9], pa.int64()),
            "item_id": pa.array([10, 20, 30, None, 50, 60, 70, 80, 90], pa.int64()),
            "rating": pa.array([4.0, 3.5, 2.0, 1.0, None, float("nan"), float("inf"), 9.0, 0.0]),
        }
    )
    result = ingest(spark, cfg(write(tmp_path, table)))
    expected_quarantine = spark.createDataFrame(
        [
            (None, 30, 2.0, "null or empty user_id"),
            (4, None, 1.0, "null or empty item_id"),
            (5, 50, None, "null rating"),
            (6, 60, float("nan"), "rating is NaN"),
            (7, 70, float("inf"), "rating is infinite"),
            (8, 80, 9.0, "rating outside [0.5, 5]"),
            (9, 90, 0.0, "rating outside [0.5, 5]"),
        ],
        "user_id long, item_id long, rating double, reason string",
    )
    assert_df_equality(
        result.quarantine,
        expected_quarantine,
        ignore_row_order=True,
        ignore_nullable=True,
        allow_nan_equality=True,
    )
    expected_used = spark.createDataFrame(
        [(1, 10, 4.0), (2, 20, 3.5)], "user_id long, item_id long, rating double"
    )
    assert_df_equality(result.ratings, expected_used, ignore_row_order=True, ignore_nullable=True)
    assert result.quarantined == {
        "null or empty user_id": 1,
        "null or empty item_id": 1,
        "null rating": 1,
        "rating is NaN": 1,
        "rating is infinite": 1,
        "rating outside [0.5, 5]": 2,
    }
    m = result.metrics()
    assert (m["rows_read"], m["rows_used"], m["rows_quarantined"], m["duplicates_merged"]) == (
        9,
        2,
        7,
        0,
    )


def test_string_ids_empty_ids_and_custom_columns(spark, tmp_path):
    table = pa.table(
        {
            "uid": ["u1", " u2 ", "", "u3", None],
            "movie": ["007", "042", "007", "  ", "042"],
            "stars": pa.array([5, 3, 4, 2, 1], pa.int32()),
        }
    )
    result = ingest(
        spark,
        cfg(
            write(tmp_path, table),
            user_col="uid",
            item_col="movie",
            rating_col="stars",
            rating_min=1,
            rating_max=5,
        ),
    )
    assert result.quarantined == {
        "null or empty uid": 2,
        "blank movie (only whitespace or invisible characters)": 1,
    }
    expected = spark.createDataFrame(
        [("u1", "007", 5.0), (" u2 ", "042", 3.0)], "user_id string, item_id string, rating double"
    )
    assert_df_equality(result.ratings, expected, ignore_row_order=True, ignore_nullable=True)


def test_missing_column_and_wrong_type_fail_before_work(spark, tmp_path):
    table = pa.table({"user_id": [1], "item": [2], "rating": [3.0]})
    with pytest.raises(SchemaError, match=r"no column 'item_id' \(input.item_col\)"):
        ingest(spark, cfg(write(tmp_path, table)))
    table = pa.table({"user_id": [1.5], "item_id": [2], "rating": [3.0]})
    with pytest.raises(SchemaError, match=r"'user_id' \(input.user_col\) has type double"):
        ingest(spark, cfg(write(tmp_path, table, "b.parquet")))
    table = pa.table({"user_id": [1], "item_id": [2], "rating": ["good"]})
    with pytest.raises(SchemaError, match="expected a number"):
        ingest(spark, cfg(write(tmp_path, table, "c.parquet")))
    with pytest.raises(InputError, match="does not exist"):
        ingest(spark, cfg(str(tmp_path / "nowhere")))


def test_nothing_left_is_an_error(spark, tmp_path):
    table = pa.table({"user_id": [1, 2], "item_id": [1, 2], "rating": [7.0, -1.0]})
    with pytest.raises(InputError, match="no usable ratings: all 2 rows"):
        ingest(spark, cfg(write(tmp_path, table)))


DUPS = pa.table(
    {
        "user_id": [1, 1, 1, 2, 2, 3],
        "item_id": [5, 5, 5, 6, 6, 7],
        "rating": [1.0, 4.0, 2.0, 3.0, 5.0, 2.5],
        "ts": pa.array([10, 30, 20, 7, 7, 1], pa.int64()),
    }
)


def test_duplicates_latest(spark, tmp_path):
    result = ingest(spark, cfg(write(tmp_path, DUPS), timestamp_col="ts", duplicates="latest"))
    expected = spark.createDataFrame(
        [(1, 5, 4.0, 30), (2, 6, 5.0, 7), (3, 7, 2.5, 1)],  # a tie on ts keeps the higher
        "user_id long, item_id long, rating double, timestamp long",
    )
    assert_df_equality(result.ratings, expected, ignore_row_order=True, ignore_nullable=True)
    assert (result.duplicates_merged, result.duplicate_pairs) == (3, 2)
    assert result.rows_read == result.rows_used + result.rows_quarantined + 3


def test_duplicates_mean(spark, tmp_path):
    result = ingest(spark, cfg(write(tmp_path, DUPS), duplicates="mean"))
    got = {(r.user_id, r.item_id): r.rating for r in result.ratings.collect()}
    assert got == {(1, 5): pytest.approx(7 / 3), (2, 6): 4.0, (3, 7): 2.5}
    assert result.duplicates_merged == 3


def test_duplicates_error_names_pairs(spark, tmp_path):
    with pytest.raises(
        InputError,
        match=r"2 \(user, item\) pairs occur more than once, "
        r"e.g. \(1, 5\) x3, \(2, 6\) x2",
    ):
        ingest(spark, cfg(write(tmp_path, DUPS), duplicates="error"))


def test_reads_folders_partitioned_datasets_and_globs(spark, tmp_path):
    base = tmp_path / "ds"
    pq.write_to_dataset(
        pa.table(
            {
                "user_id": [1, 2, 3, 4],
                "item_id": [1, 1, 2, 2],
                "rating": [1.0, 2, 3, 4],
                "day": ["a", "a", "b", "b"],
            }
        ),
        str(base),
        partition_cols=["day"],
    )
    assert ingest(spark, cfg(str(base))).rows_used == 4
    assert ingest(spark, cfg(str(base / "day=a"))).rows_used == 2
    assert ingest(spark, cfg(str(base / "day=*"))).rows_used == 4


def test_index_is_dense_sorted_and_independent_of_partitioning(spark, tmp_path):
    rng = np.random.default_rng(5)
    users = rng.choice(10_000, 300, replace=False)
    items = np.array([f"m{n:04d}" for n in rng.choice(5000, 80, replace=False)])
    u = rng.choice(users, 2000)
    i = rng.choice(items, 2000)
    df = spark.createDataFrame(
        pa.table({"user_id": u, "item_id": i, "rating": rng.integers(1, 6, 2000) * 1.0})
    )
    index = build_index(df)
    np.testing.assert_array_equal(index.user_ids.to_numpy(), np.unique(u))
    assert index.item_ids.to_pylist() == sorted(set(i.tolist()))
    one = apply_index(df.repartition(1), index).select("user_id", "item_id", USER_IDX, ITEM_IDX)
    many = apply_index(df.repartition(7), build_index(df.repartition(7))).select(
        "user_id", "item_id", USER_IDX, ITEM_IDX
    )
    assert_df_equality(one, many, ignore_row_order=True)
    row = one.where(F.col("user_id") == int(np.unique(u)[3])).first()
    assert row[USER_IDX] == 3


def test_holdout_split_is_deterministic_and_near_the_fraction(spark):
    rng = np.random.default_rng(2)
    n = 20_000
    df = spark.createDataFrame(
        pa.table(
            {
                USER_IDX: rng.integers(0, 500, n).astype(np.int32),
                ITEM_IDX: rng.integers(0, 400, n).astype(np.int32),
                "timestamp": rng.integers(0, 10**6, n),
            }
        )
    ).dropDuplicates([USER_IDX, ITEM_IDX])
    total = df.count()
    a = tag_holdout(
        df.repartition(3),
        fraction=0.2,
        split="random",
        seed=1,
        user_col=USER_IDX,
        item_col=ITEM_IDX,
    )
    b = tag_holdout(
        df.repartition(5),
        fraction=0.2,
        split="random",
        seed=1,
        user_col=USER_IDX,
        item_col=ITEM_IDX,
    )
    assert_df_equality(a, b, ignore_row_order=True)
    held = a.where(F.col(IS_VAL)).count()
    assert abs(held / total - 0.2) < 4 * math.sqrt(0.16 / total)
    # time: each user's most recent floor(0.2 n_u) ratings
    t = tag_holdout(
        df, fraction=0.2, split="time", seed=1, user_col=USER_IDX, item_col=ITEM_IDX
    ).toArrow()
    uid, ts, val = (t.column(c).to_numpy() for c in (USER_IDX, "timestamp", IS_VAL))
    for user in np.unique(uid)[:50]:
        mine = uid == user
        k = int(np.floor(0.2 * mine.sum()))
        newest = np.sort(ts[mine])[::-1]
        assert val[mine].sum() == k
        if k:
            assert ts[mine][val[mine]].min() >= newest[k - 1]


def test_prepare_normalisation_is_exact_item_means(spark):
    ratings = spark.createDataFrame(
        [(1, 1, 0.1), (2, 1, 0.2), (3, 1, 0.7), (1, 2, 4.0), (2, 3, 3.0)],
        "user_id long, item_id long, rating double",
    )
    data = prepare(
        ratings, holdout_fraction=0.0, split="random", seed=0, mean_normalization=True, biases=False
    )
    expected = np.array([np.mean([0.1, 0.2, 0.7]), 4.0, 3.0])
    np.testing.assert_allclose(data.normalization.item_means, expected, rtol=1e-15)
    biased = prepare(
        ratings, holdout_fraction=0.0, split="random", seed=0, mean_normalization=True, biases=True
    )
    assert biased.normalization.global_mean == pytest.approx(8.0 / 5, rel=1e-15)
    assert not biased.normalization.item_means.any()


def test_non_finite_double_timestamps_are_quarantined(spark, tmp_path):
    table = pa.table(
        {
            "user_id": [1, 2, 3],
            "item_id": [1, 1, 1],
            "rating": [4.0, 3.0, 2.0],
            "ts": [1.5e9, float("nan"), float("inf")],
        }
    )
    result = ingest(spark, cfg(write(tmp_path, table), timestamp_col="ts", duplicates="latest"))
    assert result.quarantined == {"ts is NaN or infinite": 2}
    assert [r.timestamp for r in result.ratings.collect()] == [1500000000]


# ----------------------------------------------------------------- ids are kept as given

BLANKS = ["\t\n", "\u00a0", "\u200b", "\ufeff", "\u3000 \u2003", "\r"]


def test_unicode_blank_ids_are_quarantined_and_raw_ids_never_merged(spark, tmp_path):
    users = ["u1", " u1 ", "u1\u00a0", *BLANKS, "u2"]
    table = pa.table(
        {
            "user_id": users,
            "item_id": ["i1"] * (len(users) - 1) + ["\u200b"],
            "rating": [1.0 + n % 4 for n in range(len(users))],
        }
    )
    result = ingest(spark, cfg(write(tmp_path, table)))
    blank = "blank {} (only whitespace or invisible characters)"
    assert result.quarantined == {blank.format("user_id"): len(BLANKS), blank.format("item_id"): 1}
    got = sorted((r.user_id, r.rating) for r in result.ratings.collect())
    # the three spellings of u1 stay three users with their own ratings, as written
    assert got == [(" u1 ", 2.0), ("u1", 1.0), ("u1\u00a0", 3.0)]
    assert result.duplicates_merged == 0
    reasons = {r.user_id: r.reason for r in result.quarantine.collect()}
    assert set(reasons) == {*BLANKS, "u2"}


# ----------------------------------------------------- bad files: one line naming the path


def test_a_file_that_is_not_parquet_is_refused_naming_it(spark, tmp_path):
    path = tmp_path / "ratings.parquet"
    path.write_text("user_id,item_id,rating\n1,2,3.0\n")
    with pytest.raises(InputError, match=rf"{path}.*is not a Parquet file") as info:
        ingest(spark, cfg(str(path)))
    assert "\n" not in str(info.value)


def test_a_truncated_parquet_file_in_a_folder_is_refused_naming_it(spark, tmp_path):
    folder = tmp_path / "ratings"
    folder.mkdir()
    table = pa.table({"user_id": [1, 2], "item_id": [3, 4], "rating": [1.0, 2.0]})
    pq.write_table(table, folder / "part-0.parquet")
    data = (folder / "part-0.parquet").read_bytes()
    (folder / "part-1.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"part-1\.parquet.*Could not read footer"):
        ingest(spark, cfg(str(folder)))


def test_a_corrupt_page_is_refused_naming_the_file(spark, tmp_path):
    path = tmp_path / "ratings.parquet"
    table = pa.table({"user_id": list(range(50)), "item_id": [3] * 50, "rating": [1.0] * 50})
    pq.write_table(table, path)
    data = bytearray(path.read_bytes())
    data[8:64] = b"\xff" * 56  # the first page header: the footer is intact
    path.write_bytes(bytes(data))
    assert pq.read_schema(path).names == ["user_id", "item_id", "rating"]
    with pytest.raises(InputError, match=rf"cannot read the Parquet input {path}: .*FAILED_READ"):
        ingest(spark, cfg(str(path)))


def test_an_empty_folder_is_refused(spark, tmp_path):
    (tmp_path / "ratings" / "day=1").mkdir(parents=True)
    (tmp_path / "ratings" / "_SUCCESS").write_text("")
    with pytest.raises(InputError, match=f"no Parquet files in {tmp_path / 'ratings'}"):
        ingest(spark, cfg(str(tmp_path / "ratings")))


def test_files_differing_only_in_width_are_widened_and_logged(spark, tmp_path, caplog):
    folder = tmp_path / "ratings"
    folder.mkdir()
    narrow = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int32()),
            "item_id": pa.array([7, 8], pa.int32()),
            "rating": pa.array([4, 5], pa.int64()),
        }
    )
    wide = pa.table(
        {
            "user_id": pa.array([3_000_000_000], pa.int64()),
            "item_id": pa.array([9], pa.int64()),
            "rating": pa.array([2.5], pa.float64()),
        }
    )
    pq.write_table(narrow, folder / "a.parquet")
    pq.write_table(wide, folder / "b.parquet")
    with caplog.at_level("WARNING", logger="spark_cf.storage"):
        result = ingest(spark, cfg(str(folder)))
    got = sorted((r.user_id, r.item_id, r.rating) for r in result.ratings.collect())
    assert got == [(1, 7, 4.0), (2, 8, 5.0), (3_000_000_000, 9, 2.5)]
    assert dict(result.ratings.dtypes)["user_id"] == "bigint"
    widened = [r.getMessage() for r in caplog.records if "disagree on the width" in r.getMessage()]
    assert any("column rating (bigint, double): read as double" in m for m in widened), widened
    assert any("column user_id (bigint, int): read as bigint" in m for m in widened), widened


def test_int_and_string_ids_across_files_are_refused_naming_the_files(spark, tmp_path):
    folder = tmp_path / "ratings"
    folder.mkdir()
    pq.write_table(
        pa.table({"user_id": [1], "item_id": [1], "rating": [1.0]}), folder / "a.parquet"
    )
    pq.write_table(
        pa.table({"user_id": ["u2"], "item_id": [2], "rating": [2.0]}), folder / "b.parquet"
    )
    with pytest.raises(
        SchemaError,
        match=r"disagree on the type of column 'user_id': bigint in \S*a\.parquet; "
        r"string in \S*b\.parquet",
    ):
        ingest(spark, cfg(str(folder)))


def test_int_and_double_ids_across_files_are_refused_while_ratings_widen(spark, tmp_path):
    """An id column of integers in one file and doubles in another is not widened to
    double (ids above 2**53 would change); a rating column is."""
    folder = tmp_path / "ratings"
    folder.mkdir()
    pq.write_table(
        pa.table({"user_id": [1], "item_id": [1], "rating": pa.array([1], pa.int64())}),
        folder / "a.parquet",
    )
    pq.write_table(
        pa.table({"user_id": [2.0], "item_id": [2], "rating": [2.5]}), folder / "b.parquet"
    )
    with pytest.raises(
        SchemaError,
        match=r"disagree on the type of column 'user_id': bigint in \S*a\.parquet; "
        r"double in \S*b\.parquet",
    ):
        ingest(spark, cfg(str(folder)))
    (folder / "b.parquet").unlink()
    pq.write_table(
        pa.table({"user_id": [2], "item_id": [2], "rating": [2.5]}), folder / "b.parquet"
    )
    ratings = ingest(spark, cfg(str(folder))).ratings
    assert sorted(r.rating for r in ratings.collect()) == [1.0, 2.5]


def test_pandas_nanosecond_timestamps_are_read(spark, tmp_path):
    import pandas as pd

    when = pd.to_datetime(
        ["2021-03-04 05:06:07.123456789", "1969-12-31 23:59:59.5", "2024-02-29 00:00:00"],
        format="ISO8601",
    )
    frame = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 1, 1], "rating": [2.0, 3.0, 4.0]})
    frame["ts"] = when
    path = tmp_path / "ratings.parquet"
    frame.to_parquet(path)
    assert "timeUnit=nanoseconds" in str(pq.ParquetFile(path).schema)  # Parquet NANOS
    result = ingest(spark, cfg(str(path), timestamp_col="ts", duplicates="latest"))
    got = sorted((r.user_id, r.item_id, r.rating, r.timestamp) for r in result.ratings.collect())
    seconds = when.asi8 // 10**9  # floor division: 1969-12-31 23:59:59.5 is second -1
    assert got == [(1, 1, 2.0, int(seconds[0])), (2, 1, 4.0, int(seconds[2]))]
    assert int(seconds[1]) == -1
    # the column itself is read to the microsecond
    micros = (
        storage.read_parquet(spark, str(path)).select(F.unix_micros("ts").alias("us")).collect()
    )
    assert [r.us for r in micros] == (when.asi8 // 1000).tolist()


# ------------------------------------------- interactions: no ratings, a count or nothing


def expected_sums(table: pa.Table, value_col: str | None) -> dict[tuple, float]:
    """The (user, item) -> summed value of ``table``, computed in Python from its rows."""
    rows = table.to_pylist()
    sums: dict[tuple, float] = {}
    for row in rows:
        value = 1.0 if value_col is None else row[value_col]
        key = (row["user_id"], row["item_id"])
        sums[key] = sums.get(key, 0.0) + value
    return sums


def test_interactions_without_a_value_column_count_one_per_row(spark, tmp_path):
    rng = np.random.default_rng(13)
    n = 400
    table = pa.table(
        {
            "user_id": rng.integers(0, 30, n),
            "item_id": [f"s{k}" for k in rng.integers(0, 20, n)],
            "ts": rng.integers(1_600_000_000, 1_700_000_000, n),
        }
    )
    path = write(tmp_path, table)
    sums = expected_sums(table, None)
    newest: dict[tuple, int] = {}
    for row in table.to_pylist():
        key = (row["user_id"], row["item_id"])
        newest[key] = max(newest.get(key, row["ts"]), row["ts"])
    assert max(sums.values()) > 1  # the rows repeat pairs

    result = ingest(
        spark,
        cfg(path, feedback="interactions", rating_col="", timestamp_col="ts", duplicates="sum"),
    )
    got = {(r.user_id, r.item_id): (r.rating, r.timestamp) for r in result.ratings.collect()}
    assert got == {key: (sums[key], newest[key]) for key in sums}
    assert dict(result.ratings.dtypes)["rating"] == "double"
    assert result.ratings.columns == ["user_id", "item_id", "rating", "timestamp"]
    assert (result.rows_read, result.rows_used, result.rows_quarantined) == (n, len(sums), 0)
    assert result.duplicates_merged == n - len(sums)
    assert result.duplicate_pairs == sum(1 for v in sums.values() if v > 1)
    assert result.rows_read == result.rows_used + result.rows_quarantined + result.duplicates_merged


def test_interactions_with_a_count_column_quarantine_non_positive_values(spark, tmp_path):
    table = pa.table(
        {
            "user_id": pa.array([1, 1, 1, 2, 2, 3, 4, 5, 6, 7, None, 8], pa.int64()),
            "item_id": pa.array([10, 10, 11, 10, 10, 12, 13, 14, 15, 16, 17, 18], pa.int64()),
            "plays": pa.array([3, 4, 1, 2, 0, None, -5, 7, 2, 1, 9, 1], pa.int32()),
        }
    )
    result = ingest(
        spark,
        cfg(write(tmp_path, table), feedback="interactions", rating_col="plays", duplicates="sum"),
    )
    assert result.quarantined == {
        "plays is not positive": 2,  # (2, 10) 0 and (4, 13) -5
        "null plays": 1,
        "null or empty user_id": 1,
    }
    reasons = sorted((r.item_id, r.user_id, r.reason, r.plays) for r in result.quarantine.collect())
    assert reasons == [
        (10, 2, "plays is not positive", 0),
        (12, 3, "null plays", None),
        (13, 4, "plays is not positive", -5),
        (17, None, "null or empty user_id", 9),
    ]
    usable = pa.table(
        {
            "user_id": [1, 1, 1, 2, 5, 6, 7, 8],
            "item_id": [10, 10, 11, 10, 14, 15, 16, 18],
            "plays": [3, 4, 1, 2, 7, 2, 1, 1],
        }
    )
    got = {(r.user_id, r.item_id): r.rating for r in result.ratings.collect()}
    assert got == expected_sums(usable, "plays")
    assert got[(1, 10)] == 7.0 and got[(5, 14)] == 7.0  # counts above rating_max are kept
    assert (result.rows_read, result.rows_used, result.duplicates_merged) == (12, 7, 1)
    assert result.rows_read == result.rows_used + result.rows_quarantined + result.duplicates_merged


def test_interactions_double_strengths_nan_infinite_and_the_sum_order(spark, tmp_path):
    values = [0.1, 0.2, 0.3, 1e-30, float("nan"), float("inf"), -float("inf"), 2.5]
    table = pa.table(
        {
            "user_id": [1, 1, 1, 1, 2, 3, 4, 5],
            "item_id": [1, 1, 1, 1, 1, 1, 1, 1],
            "w": values,
        }
    )
    path = write(tmp_path, table)
    one = ingest(spark, cfg(path, feedback="interactions", rating_col="w", duplicates="sum"))
    assert one.quarantined == {"w is NaN": 1, "w is infinite": 2}
    got = {r.user_id: r.rating for r in one.ratings.collect()}
    assert got == {1: 1e-30 + 0.1 + 0.2 + 0.3, 5: 2.5}  # added smallest first, exactly so
    # the same rows spread over several files and read in another order: the same sums
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, idx in enumerate([[3, 0], [2, 4, 5], [1, 6, 7]]):
        pq.write_table(table.take(idx), folder / f"part-{k}.parquet")
    spread = ingest(
        spark, cfg(str(folder), feedback="interactions", rating_col="w", duplicates="sum")
    )
    assert {r.user_id: r.rating for r in spread.ratings.collect()} == got


def test_interactions_schema_errors_and_nothing_usable(spark, tmp_path):
    table = pa.table({"user_id": [1, 2], "item_id": [1, 2], "plays": [0, -1]})
    path = write(tmp_path, table)
    with pytest.raises(SchemaError, match=r"no column 'rating' \(input.rating_col\).*or to \"\""):
        ingest(spark, cfg(path, feedback="interactions"))
    with pytest.raises(SchemaError, match="input.rating_col is empty"):
        ingest(spark, cfg(path, rating_col=""))  # feedback = ratings
    with pytest.raises(InputError, match="no usable interactions: all 2 rows"):
        ingest(spark, cfg(path, feedback="interactions", rating_col="plays"))
    with pytest.raises(InputError, match="set input.duplicates to 'mean', 'sum' or 'latest'"):
        ingest(
            spark,
            cfg(
                write(tmp_path, pa.table({"user_id": [1, 1], "item_id": [2, 2]}), "b.parquet"),
                feedback="interactions",
                rating_col="",
                duplicates="error",
            ),
        )


def test_sum_applies_to_ratings_too(spark, tmp_path):
    result = ingest(spark, cfg(write(tmp_path, DUPS), duplicates="sum"))
    got = {(r.user_id, r.item_id): r.rating for r in result.ratings.collect()}
    assert got == {(1, 5): 7.0, (2, 6): 8.0, (3, 7): 2.5}
    assert result.duplicates_merged == 3
