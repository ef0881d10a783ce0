"""The most-popular baseline: its @k metrics against the definitions written out here on
a small set with known counts, and the items' training counts saved with a model (and a
model saved without them still loading)."""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from spark_cf.schema import IS_VAL, ITEM, USER

K = 3
THRESHOLD = 4.0
# (user, item) training pairs: item counts 10: 5, 11: 4, 12: 4 (a tie: 11 first), 16: 3,
# 13: 2, 14: 1, 15: 0 (held-out only)
TRAIN = [
    (1, 10), (1, 11), (1, 12),
    (2, 10), (2, 11), (2, 13),
    (3, 10), (3, 12), (3, 16),
    (4, 10), (4, 11), (4, 16), (4, 13),
    (5, 10), (5, 12), (5, 16), (5, 14),
    (6, 11), (6, 12),
]  # fmt: skip
# (user, item, rating) held out; user 3 has no relevant rating, user 7 none in training
HELD = [
    (1, 16, 5.0), (1, 13, 2.0), (1, 15, 4.0),
    (2, 12, 4.5), (2, 14, 4.0),
    (3, 11, 3.0),
    (4, 15, 5.0),
    (5, 11, 4.0), (5, 13, 4.0), (5, 15, 4.5),
    (6, 16, 1.0), (6, 10, 4.0),
    (7, 10, 5.0),
]  # fmt: skip


def most_popular_lists(train, users, k):
    """Each user's k most rated training items (count desc, then item id), the items the
    user rated in training left out."""
    counts = Counter(i for _, i in train)
    items = sorted({i for _, i in train} | {i for _, i, _ in HELD})
    order = sorted(items, key=lambda i: (-counts[i], i))
    rated = {u: {i for v, i in train if v == u} for u in users}
    return {u: [i for i in order if i not in rated[u]][:k] for u in users}


def metrics_by_definition(lists, relevant, k):
    """Mean over users with a relevant item of: precision = hits / k; recall = hits / |R|;
    nDCG = sum over hits at rank r of 1/log2(r + 1), over the same sum for ranks
    1..min(|R|, k); AP = sum over hits at rank r of (hits up to r) / r, over min(|R|, k)."""
    p = r = n = ap = 0.0
    for u, rel in relevant.items():
        hit_ranks = [rank for rank, i in enumerate(lists[u], start=1) if i in rel]
        p += len(hit_ranks) / k
        r += len(hit_ranks) / len(rel)
        ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(rel), k) + 1))
        n += sum(1 / math.log2(rank + 1) for rank in hit_ranks) / ideal
        ap += sum(h / rank for h, rank in enumerate(hit_ranks, start=1)) / min(len(rel), k)
    m = len(relevant)
    return {"precision_at_k": p / m, "recall_at_k": r / m, "ndcg_at_k": n / m, "map_at_k": ap / m}


@pytest.mark.spark
def test_popularity_metrics_of_heldout_metrics_follow_the_definitions(spark):
    from spark_cf.data.prepare import prepare
    from spark_cf.outputs.evaluation import heldout_metrics, item_mean_baseline
    from spark_cf.outputs.report import metrics_table

    rows = [(u, i, 3.0) for u, i in TRAIN] + HELD
    df = spark.createDataFrame(rows, "user_id long, item_id long, rating double")
    data = prepare(
        df, holdout_fraction=0.0, split="random", seed=0, mean_normalization=True, biases=False
    )
    # the split above instead of the hash's (ids < 100, so user * 100 + item is the pair)
    held = [u * 100 + i for u, i, _ in HELD]
    tagged = data.ratings.withColumn(IS_VAL, (F.col(USER) * 100 + F.col(ITEM)).isin(held)).cache()
    data = dataclasses.replace(data, ratings=tagged)
    got = heldout_metrics(
        spark,
        data,
        item_mean_baseline(data),
        k=K,
        relevance_threshold=THRESHOLD,
        clip=(0.5, 5.0),
    )
    tagged.unpersist()
    assert list(got) == ["model", "popularity", "item_mean", "global_mean"]
    relevant: dict[int, set] = {}
    for u, i, rating in HELD:
        if rating >= THRESHOLD:
            relevant.setdefault(u, set()).add(i)
    lists = most_popular_lists(TRAIN, relevant, K)
    # by hand: the tie 11/12 goes to 11; user 7 (no training rating) gets the top three
    assert lists[1] == [16, 13, 14] and lists[6] == [10, 16, 13] and lists[7] == [10, 11, 12]
    want = metrics_by_definition(lists, relevant, K)
    popularity = got["popularity"]
    assert popularity["users"] == len(relevant) == 6
    assert popularity["rmse"] is None and popularity["mae"] is None
    for name, value in want.items():
        assert popularity[name] == pytest.approx(value, rel=1e-12), name
    assert 0 < want["precision_at_k"] < 1
    table = metrics_table(got, K)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert rows["popularity"][:2] == ["n/a", "n/a"]


def test_metrics_table_prints_the_note_of_an_unavailable_baseline():
    from spark_cf.outputs.evaluation import unavailable
    from spark_cf.outputs.report import metrics_table

    table = metrics_table(
        {"model": {"rmse": 0.9, "ndcg_at_k": 0.2}, "popularity": unavailable("no counts")}, 10
    )
    lines = table.splitlines()
    assert lines[3].split() == ["popularity"] + ["n/a"] * 6
    assert lines[-1] == "popularity: no counts"


@pytest.mark.spark
def test_item_counts_are_saved_with_the_model_and_an_old_model_loads_without(spark, tmp_path):
    from spark_cf.data.indexing import IdIndex
    from spark_cf.model.cf_model import CFModel
    from spark_cf.model.persistence import load_model, save_model

    rng = np.random.default_rng(0)
    counts = np.array([7, 0, 3, 3], dtype=np.int64)
    model = CFModel(
        IdIndex(pa.array([1, 2, 3], pa.int64()), pa.array([10, 20, 30, 40], pa.int64())),
        rng.normal(size=(4, 2)),
        rng.normal(size=(3, 2)),
        rng.normal(size=4),
        0.0,
        item_counts=counts,
    )
    save_model(spark, model, str(tmp_path / "new"))
    back = load_model(spark, str(tmp_path / "new"))
    assert back.item_counts.dtype == np.int64
    np.testing.assert_array_equal(back.item_counts, counts)
    # the layout before the counts: item_factors without the column, written by Spark
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    shutil.rmtree(tmp_path / "old" / "item_factors")
    spark.read.parquet(str(tmp_path / "new" / "item_factors")).drop("count").write.parquet(
        str(tmp_path / "old" / "item_factors")
    )
    assert "count" not in pq.read_table(tmp_path / "old" / "item_factors").column_names
    old = load_model(spark, str(tmp_path / "old"))
    assert old.item_counts is None
    np.testing.assert_array_equal(old.item_factors, model.item_factors)
    np.testing.assert_array_equal(old.item_means, model.item_means)
    # and a model without counts saves none
    save_model(spark, old, str(tmp_path / "again"))
    assert "count" not in pq.read_table(tmp_path / "again" / "item_factors").column_names
