"""Evaluation metrics against values worked out by hand (no JVM), and the evaluation the
nightly job and jobs/evaluate.py share, with the item means it uses, on Spark."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from spark_cf.outputs.evaluation import ranking_metrics, regression_metrics
from spark_cf.outputs.report import format_table
from spark_cf.schema import IS_VAL, ITEM, ITEM_IDX, RATING, USER, USER_IDX


def test_regression_metrics_skip_nan_predictions():
    m = regression_metrics(np.array([3.0, 4.0, 5.0, 1.0]), np.array([2.0, 4.0, 7.0, np.nan]))
    assert m["count"] == 3
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert m["mae"] == pytest.approx(1.0)
    assert math.isnan(regression_metrics(np.array([1.0]), np.array([np.nan]))["rmse"])


def test_ranking_metrics_by_hand():
    # user 1: relevant {10, 20, 30}; top-3 = 10 (hit), 40, 20 (hit)
    # user 2: relevant {50};         top-3 = 60, 70, 80 (no hit)
    # user 3: no relevant item: not counted
    rec_users = [1, 1, 1, 2, 2, 2, 3, 3, 3]
    rec_items = [10, 40, 20, 60, 70, 80, 10, 20, 30]
    rec_ranks = [1, 2, 3, 1, 2, 3, 1, 2, 3]
    m = ranking_metrics(
        np.array(rec_users),
        np.array(rec_items),
        np.array(rec_ranks),
        np.array([1, 1, 1, 2]),
        np.array([10, 20, 30, 50]),
        k=3,
    )
    assert m["users"] == 2
    assert m["precision_at_k"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["recall_at_k"] == pytest.approx((2 / 3 + 0) / 2)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_at_k"] == pytest.approx((dcg / idcg + 0) / 2)
    ap = (1 / 1 + 2 / 3) / 3
    assert m["map_at_k"] == pytest.approx((ap + 0) / 2)


def test_ranking_metrics_ignore_ranks_beyond_k_and_string_ids():
    m = ranking_metrics(
        np.array(["a", "a"]),
        np.array(["x", "y"]),
        np.array([1, 2]),
        np.array(["a"]),
        np.array(["y"]),
        k=1,
    )
    assert m["precision_at_k"] == 0.0 and m["recall_at_k"] == 0.0
    m = ranking_metrics(
        np.array(["a", "a"]),
        np.array(["x", "y"]),
        np.array([1, 2]),
        np.array(["a"]),
        np.array(["y"]),
        k=2,
    )
    assert m["precision_at_k"] == pytest.approx(0.5)
    assert m["ndcg_at_k"] == pytest.approx((1 / math.log2(3)) / 1.0)


def test_format_table_shows_na():
    text = format_table({"model": {"rmse": 0.9, "map": None}}, ["rmse", "map"])
    assert "0.9000" in text and "n/a" in text


# ------------------------------------------------------------------ on Spark


def _ratings(spark):
    """Ratings whose float sums depend on the order (tenths), an item (30) rated only in
    the held-out split, and raw ids that are not indices; one rating per (user, item)."""
    rows = []
    for n in range(60):
        user, item = 100 + n // 3, (10, 20, 40)[n % 3]
        rows.append((user, item, 0.5 + (n % 10) / 10 + (n % 3) * 0.7, False))
    rows += [(100, 30, 4.5, True), (101, 30, 3.0, True), (300, 10, 5.0, True)]
    return rows


def _prepared(spark, rows, partitions: int):
    from spark_cf.data.prepare import prepare

    df = spark.createDataFrame(
        [(u, i, r) for u, i, r, _ in rows], "user_id long, item_id long, rating double"
    ).repartition(partitions)
    held = {(u, i) for u, i, _, v in rows if v}
    data = prepare(
        df, holdout_fraction=0.0, split="random", seed=0, mean_normalization=True, biases=False
    )
    # the split of the rows above instead of the hash's
    is_held = F.udf(lambda u, i: (u, i) in held, "boolean")
    tagged = data.ratings.withColumn(IS_VAL, is_held(USER, ITEM)).cache()
    return data, tagged


@pytest.mark.spark
def test_exact_item_means_match_exact_sums_whatever_the_partitioning(spark):
    from spark_cf.data.prepare import exact_item_means

    rows = _ratings(spark)
    results = []
    for partitions in (1, 5):
        data, tagged = _prepared(spark, rows, partitions)
        train = tagged.where(~F.col(IS_VAL))
        results.append((exact_item_means(train, data.index.num_items), data.index))
        tagged.unpersist()
    (first, index), (second, _) = results
    assert first.view(np.uint64).tolist() == second.view(np.uint64).tolist()
    items = index.item_ids.to_pylist()
    train = [(i, r) for _, i, r, v in rows if not v]
    for item in (10, 20, 40):
        mine = [Fraction(repr(r)) for i, r in train if i == item]
        assert first[items.index(item)] == float(sum(mine) / len(mine))
    # item 30 has held-out ratings only: the mean of all training ratings
    everything = [Fraction(repr(r)) for _, r in train]
    assert first[items.index(30)] == float(sum(everything) / len(everything))


@pytest.mark.spark
def test_the_item_mean_baseline_predicts_the_normalisation_means(spark):
    from spark_cf.data.prepare import prepare
    from spark_cf.outputs.evaluation import item_mean_baseline

    df = spark.createDataFrame(
        [(u, i, r) for u, i, r, _ in _ratings(spark)], "user_id long, item_id long, rating double"
    )
    data = prepare(
        df, holdout_fraction=0.3, split="random", seed=1, mean_normalization=True, biases=False
    )
    baseline = item_mean_baseline(data)
    users = np.zeros(data.index.num_items, dtype=np.int64)
    items = np.arange(data.index.num_items)
    got = baseline.predict_indices(users, items)
    assert got.view(np.uint64).tolist() == data.normalization.item_means.view(np.uint64).tolist()
    data.ratings.unpersist()


@pytest.mark.spark
def test_evaluate_model_scores_and_ranks_by_the_rule(spark):
    from spark_cf.data.indexing import IdIndex
    from spark_cf.model.cf_model import CFModel
    from spark_cf.outputs.evaluation import evaluate_model

    rng = np.random.default_rng(3)
    users, items, rank, k = [5, 6, 7, 8], [1, 2, 3, 4, 5, 6], 2, 2
    model = CFModel(
        IdIndex(pa.array(users, pa.int64()), pa.array(items, pa.int64())),
        rng.normal(size=(len(items), rank)),
        rng.normal(size=(len(users), rank)),
        rng.uniform(2, 4, len(items)),
        0.0,
        rng.normal(size=len(items)),
        rng.normal(size=len(users)),
    )

    def rule(u, i):
        ui, ii = users.index(u), items.index(i)
        s = model.item_means[ii] + model.item_bias[ii]
        if u in users:
            s += float(np.dot(model.user_factors[ui], model.item_factors[ii]))
            s += model.user_bias[ui]
        return s

    # rated by a known user, by a user the model never saw (9), of an unknown item (99)
    truth = [(5, 1, 4.0), (5, 3, 2.0), (6, 2, 5.0), (7, 4, 4.5), (9, 1, 4.0), (8, 99, 5.0)]
    exclude = [(5, 2), (6, 1)]  # raw ids; left out of the lists
    table = pa.table(
        {
            USER: pa.array([t[0] for t in truth], pa.int64()),
            ITEM: pa.array([t[1] for t in truth], pa.int64()),
            RATING: pa.array([t[2] for t in truth]),
        }
    )
    excluded = spark.createDataFrame(
        [(users.index(u), items.index(i)) for u, i in exclude], f"{USER_IDX} int, {ITEM_IDX} int"
    )
    got = evaluate_model(
        spark, model, table, excluded, k=k, relevance_threshold=4.0, clip=(1.0, 5.0)
    )

    def predicted(u, i):
        if i not in items:
            return np.nan
        ui = users.index(u) if u in users else -1
        s = model.item_means[items.index(i)] + model.item_bias[items.index(i)]
        return rule(u, i) if ui >= 0 else s

    y = np.array([t[2] for t in truth])
    pred = np.clip([predicted(u, i) for u, i, _ in truth], 1.0, 5.0)
    ok = np.isfinite(pred)
    assert got["count"] == 5
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((pred[ok] - y[ok]) ** 2)), rel=1e-12)
    assert got["mae"] == pytest.approx(np.mean(np.abs(pred[ok] - y[ok])), rel=1e-12)
    rel = [(u, i) for u, i, r in truth if r >= 4.0]
    rec = []
    for u in sorted({u for u, _ in rel if u in users}):
        left = [i for i in items if (u, i) not in exclude]
        ranked = sorted(left, key=lambda i: (-rule(u, i), i))[:k]
        rec += [(u, i, n + 1) for n, i in enumerate(ranked)]
    expected = ranking_metrics(
        np.array([r[0] for r in rec]),
        np.array([r[1] for r in rec]),
        np.array([r[2] for r in rec]),
        np.array([u for u, _ in rel]),
        np.array([i for _, i in rel]),
        k,
    )
    # users 9 (unknown) and 8 (an unknown item) count, with no hit
    assert expected["users"] == 5
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
