"""The library bodies of jobs/train.py, recommend.py and evaluate.py against the nightly
run on the same ratings: one metadata, one publication, one evaluation, one top-N."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from spark_cf.config import Config
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.nightly.run import run_evaluate, run_nightly, run_recommend, run_train
from spark_cf.outputs.evaluation import RANKING_METRICS
from spark_cf.outputs.report import metrics_table
from spark_cf.schema import IS_VAL, ITEM, RANK, RATING, SCORE, USER

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def setup(spark, tmp_path_factory):
    """A nightly run, and the training and held-out ratings it split, as Parquet."""
    from spark_cf.data.prepare import prepare

    tmp = tmp_path_factory.mktemp("jobs")
    ratings = tmp / "ratings.parquet"
    write_parquet(
        SyntheticSpec(num_users=120, num_items=70, num_ratings=2500, true_rank=3, seed=9),
        str(ratings),
    )
    cfg = Config().replace(
        input={"path": str(ratings)},
        model={"rank": 3, "reg": 1.0, "biases": True},
        train={"max_iter": 8, "num_user_blocks": 2, "num_item_blocks": 1},
        ranking={"rank": 3, "max_iter": 5},
        evaluate={"holdout_fraction": 0.25, "k": 5},
        recommend={"top_n": 4, "block_size": 32},
        output={"root": str(tmp / "out"), "run_date": "2026-03-04"},
    )
    outcome = run_nightly(spark, cfg)
    # the same split as the nightly's (a seeded hash of the pair), written as two inputs
    data = prepare(
        spark.read.parquet(str(ratings)),
        holdout_fraction=cfg.evaluate.holdout_fraction,
        split=cfg.evaluate.split,
        seed=cfg.model.seed,
        mean_normalization=True,
        biases=True,
    )
    for name, held in (("heldout", True), ("training", False)):
        part = data.ratings.where(data.ratings[IS_VAL] == held).select(USER, ITEM, RATING)
        part.write.parquet(str(tmp / f"{name}.parquet"))
    data.ratings.unpersist()
    return tmp, cfg, Path(outcome.path), outcome


def assert_same_metrics(got: dict, want: dict) -> None:
    """The same keys, None where ``want`` has None, the other values to 1e-12."""
    assert set(got) == set(want)
    for name, value in want.items():
        if value is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(value, rel=1e-12), name


def test_train_publishes_a_model_with_the_nightly_models_metadata_keys(spark, setup):
    tmp, cfg, run, _ = setup
    target, model, result = run_train(spark, cfg, str(tmp / "trained"))
    nightly = json.loads((run / "model" / "metadata.json").read_text())
    trained = json.loads((Path(target) / "metadata.json").read_text())
    assert sorted(trained) == sorted(nightly)
    assert (Path(target) / "_SUCCESS").exists()
    # the same split, seed and settings: the same model as the nightly's
    for key in ("iterations", "final_cost", "rating_mean", "trained_on", "input_fingerprint"):
        assert trained[key] == nightly[key], key
    assert trained["history"] == [
        {**h, "seconds": trained["history"][n]["seconds"]} for n, h in enumerate(result.history)
    ]
    theirs = pq.read_table(run / "model" / "item_factors").to_pydict()
    mine = pq.read_table(Path(target) / "item_factors").to_pydict()
    assert mine == theirs


def test_evaluate_reproduces_the_nightly_heldout_evaluation(spark, setup):
    tmp, cfg, run, outcome = setup
    metrics = run_evaluate(
        spark,
        cfg.replace(input={"path": str(tmp / "heldout.parquet")}),
        str(run / "model"),
        exclude_from=str(tmp / "training.parquet"),
    )
    nightly = outcome.metrics["evaluation"]["model"]
    assert set(metrics["model"]) == set(nightly)
    for name, value in nightly.items():
        # RMSE/MAE may sum the rows in another order
        assert metrics["model"][name] == pytest.approx(value, rel=1e-12), name
    # the most-popular baseline from the counts saved with the model: the nightly's, which
    # counted the training split, and in metrics.json with the four @k metrics
    published = json.loads((run / "metrics.json").read_text())["evaluation"]["popularity"]
    assert published == outcome.metrics["evaluation"]["popularity"]
    assert published["rmse"] is None and published["mae"] is None
    assert all(0 < published[name] < 1 for name in RANKING_METRICS)
    assert_same_metrics(metrics["popularity"], published)
    assert "popularity" in metrics_table(metrics, cfg.evaluate.k)


def test_evaluate_ranks_by_the_exclude_from_counts_for_a_model_saved_without_counts(spark, setup):
    tmp, cfg, run, outcome = setup
    old = tmp / "old_model"
    shutil.copytree(run / "model", old)
    shutil.rmtree(old / "item_factors")
    items = spark.read.parquet(str(run / "model" / "item_factors")).drop("count")
    items.write.parquet(str(old / "item_factors"))
    heldout = cfg.replace(input={"path": str(tmp / "heldout.parquet")})
    metrics = run_evaluate(spark, heldout, str(old), exclude_from=str(tmp / "training.parquet"))
    assert_same_metrics(metrics["popularity"], outcome.metrics["evaluation"]["popularity"])
    # neither counts nor --exclude-from: reported as unavailable, and the table says so
    metrics = run_evaluate(spark, heldout, str(old))
    assert [metrics["popularity"][name] for name in RANKING_METRICS] == [None] * 4
    assert (
        metrics_table(metrics, cfg.evaluate.k)
        .splitlines()[-1]
        .startswith("popularity: unavailable")
    )


def test_recommend_reproduces_the_nightly_top_n(spark, setup):
    tmp, cfg, run, _ = setup
    out = tmp / "recommended"
    rows, unknown = run_recommend(spark, cfg, str(run / "ranking_model"), str(out))
    theirs = pq.read_table(run / "top_n").sort_by([(USER, "ascending"), (RANK, "ascending")])
    mine = pq.read_table(out).sort_by([(USER, "ascending"), (RANK, "ascending")])
    assert rows == theirs.num_rows and unknown == []
    assert mine.column(ITEM).to_pylist() == theirs.column(ITEM).to_pylist()
    np.testing.assert_array_equal(mine.column(SCORE), theirs.column(SCORE))
