"""Fail before the work: paths the run writes or reads later are checked before the
ratings are read; block grids too large to set up are refused at load; a rank above the
number of users or items is warned about."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_cf.config import MAX_BLOCKS, MAX_BLOCKS_PER_SIDE, config_from_dict, load_config
from spark_cf.errors import ConfigError, InputError, ModelError, PathError, SchemaError
from spark_cf.nightly import preflight
from spark_cf.nightly.run import run_nightly
from spark_cf.training.fit import warn_rank

RATINGS = pa.table(
    {
        "user_id": [1, 1, 2, 2, 3, 3],
        "item_id": [1, 2, 1, 3, 2, 3],
        "rating": [4.0, 3.0, 5.0, 2.0, 1.0, 4.5],
    }
)


def nightly_config(tmp_path, ratings: str, **sections):
    raw = {
        "input": {"path": ratings},
        "model": {"rank": 2},
        "train": {"max_iter": 2},
        "output": {"root": str(tmp_path / "out"), "run_date": "2026-01-02"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


# ------------------------------------------------------------------------- pure checks


def test_block_grids_beyond_the_bounds_are_refused_at_load_naming_the_key():
    with pytest.raises(ConfigError, match=r"train.num_user_blocks must be in \[0, 65,536\]"):
        load_config(None, ["train.num_user_blocks=100000000"])
    with pytest.raises(ConfigError, match=r"train.num_item_blocks must be in \[0, 65,536\]"):
        load_config(None, [f"train.num_item_blocks={MAX_BLOCKS_PER_SIDE + 1}"])
    with pytest.raises(ConfigError, match="train.num_user_blocks x train.num_item_blocks"):
        load_config(None, ["train.num_user_blocks=1000", "train.num_item_blocks=101"])
    ok = load_config(
        None, ["train.num_user_blocks=1000", f"train.num_item_blocks={MAX_BLOCKS // 1000}"]
    )
    assert (ok.train.num_user_blocks, ok.train.num_item_blocks) == (1000, 100)


def test_rank_above_the_users_or_items_is_warned_naming_both(caplog):
    with caplog.at_level(logging.WARNING, logger="spark_cf.training.fit"):
        assert warn_rank(5, 40, 3)
        assert not warn_rank(3, 40, 3)
    (record,) = caplog.records
    assert "model.rank = 5 exceeds the number of items (40 users, 3 items)" in record.getMessage()


def test_checkpoint_dir_under_a_file_is_refused_naming_the_key(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathError, match=f"train.checkpoint_dir = {tmp_path / 'file'}/ck is not"):
        preflight.check_local_writable("train.checkpoint_dir", str(tmp_path / "file" / "ck"))
    preflight.check_local_writable("train.checkpoint_dir", str(tmp_path / "ck"))
    assert list((tmp_path / "ck").iterdir()) == []  # the probe is gone


# ------------------------------------------------------------------- checks on Spark paths


@pytest.mark.spark
def test_output_root_under_a_file_or_read_only_is_refused_and_the_probe_leaves_nothing(
    spark, tmp_path
):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathError, match=f"output.root = {tmp_path / 'file'} is a file"):
        preflight.check_writable(spark, "output.root", str(tmp_path / "file"))
    under = str(tmp_path / "file" / "out")
    with pytest.raises(PathError, match=f"output.root = {under}"):
        preflight.check_writable(spark, "output.root", under)
    # /proc refuses new entries even to root (chmod 555 would not stop root)
    with pytest.raises(PathError, match="output.root = /proc/spark-cf-out"):
        preflight.check_writable(spark, "output.root", "/proc/spark-cf-out")
    preflight.check_writable(spark, "output.root", str(tmp_path / "new" / "out"))
    assert list((tmp_path / "new" / "out").iterdir()) == []
    # a job's output table: the folder that holds it (and its staging copy) is probed
    recs = tmp_path / "file" / "recs"
    with pytest.raises(PathError, match=f"--output = {recs}: its folder {tmp_path / 'file'} is a"):
        preflight.check_parent_writable(spark, "--output", str(recs))
    preflight.check_parent_writable(spark, "--output", str(tmp_path / "new" / "recs"))
    assert not (tmp_path / "new" / "recs").exists()


@pytest.mark.spark
def test_nightly_refuses_an_unwritable_root_before_reading_the_ratings(spark, tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    # input that would fail later: it is not Parquet, but the root is found first
    (tmp_path / "ratings.parquet").write_text("not parquet")
    cfg = nightly_config(
        tmp_path, str(tmp_path / "ratings.parquet"), output={"root": str(tmp_path / "file/out")}
    )
    with caplog.at_level(logging.INFO, logger="spark_cf"):
        with pytest.raises(PathError, match=f"output.root = {tmp_path / 'file/out'}"):
            run_nightly(spark, cfg)
    assert not [r for r in caplog.records if "stage ingest" in r.getMessage()]


@pytest.mark.spark
def test_nightly_refuses_bad_warm_start_and_pairs_before_reading_the_ratings(spark, tmp_path):
    ratings = str(tmp_path / "missing.parquet")  # would fail at ingest
    (tmp_path / "notamodel").mkdir()
    cfg = nightly_config(tmp_path, ratings, train={"warm_start": str(tmp_path / "notamodel")})
    with pytest.raises(ModelError, match=r"train.warm_start = \S*notamodel is not a model"):
        run_nightly(spark, cfg)
    cfg = nightly_config(tmp_path, ratings, predict={"pairs": str(tmp_path / "nopairs")})
    with pytest.raises(InputError, match=r"predict.pairs: input path \S*nopairs does not exist"):
        run_nightly(spark, cfg)
    pq.write_table(pa.table({"user": [1], "item_id": [2]}), tmp_path / "pairs.parquet")
    cfg = nightly_config(tmp_path, ratings, predict={"pairs": str(tmp_path / "pairs.parquet")})
    with pytest.raises(
        SchemaError, match=r"predict.pairs = \S*pairs.parquet has no column 'user_id'"
    ):
        run_nightly(spark, cfg)
    ck = tmp_path / "ckfile"
    ck.write_text("x")
    cfg = nightly_config(
        tmp_path, ratings, train={"checkpoint_dir": str(ck), "checkpoint_every": 1}
    )
    with pytest.raises(PathError, match=f"train.checkpoint_dir = {ck}"):
        run_nightly(spark, cfg)


@pytest.mark.spark
def test_a_warm_start_model_of_another_rank_is_refused_before_the_ratings(spark, tmp_path):
    model = tmp_path / "model"
    for part in ("user_factors", "item_factors"):
        (model / part).mkdir(parents=True)
    (model / "metadata.json").write_text('{"rank": 7}')
    cfg = nightly_config(
        tmp_path, str(tmp_path / "missing.parquet"), train={"warm_start": str(model)}
    )
    with pytest.raises(ModelError, match="has rank 7 but model.rank = 2"):
        run_nightly(spark, cfg)


@pytest.mark.spark
def test_fit_warns_when_the_rank_exceeds_the_items_it_indexed(spark, caplog):
    from spark_cf.data.prepare import prepare
    from spark_cf.training.fit import fit

    data = prepare(
        spark.createDataFrame(RATINGS),
        holdout_fraction=0.0,
        split="random",
        seed=0,
        mean_normalization=True,
        biases=False,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="spark_cf.training.fit"):
            fit(data, rank=4, max_iter=1, num_user_blocks=1)
    finally:
        data.ratings.unpersist()
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "model.rank = 4 exceeds the number of users and items (3 users, 3 items)" in m
        for m in messages
    ), messages
