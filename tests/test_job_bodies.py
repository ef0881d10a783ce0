"""The library bodies of jobs/train.py, recommend.py and evaluate.py against the nightly
run on the same ratings: one metadata, one publication, one evaluation, one top-N."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from spark_cf.config import Config
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.nightly.run import run_evaluate, run_nightly, run_recommend, run_train
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


def test_recommend_reproduces_the_nightly_top_n(spark, setup):
    tmp, cfg, run, _ = setup
    out = tmp / "recommended"
    rows, unknown = run_recommend(spark, cfg, str(run / "model"), str(out))
    theirs = pq.read_table(run / "top_n").sort_by([(USER, "ascending"), (RANK, "ascending")])
    mine = pq.read_table(out).sort_by([(USER, "ascending"), (RANK, "ascending")])
    assert rows == theirs.num_rows and unknown == []
    assert mine.column(ITEM).to_pylist() == theirs.column(ITEM).to_pylist()
    np.testing.assert_array_equal(mine.column(SCORE), theirs.column(SCORE))
