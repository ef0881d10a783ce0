"""Predictions for (user, item) pairs and top-N lists, as Spark transforms over a model.

Both score with the rule in :mod:`spark_cf.model.cf_model`. Top-N is computed by blocks of
``block_size`` users, one Spark task each: the task scores a slice of its users against
every item with one matrix product (at most :data:`MAX_SCORES` scores at a time, so no
task holds the whole score matrix) and a compiled pass keeps each user's best N. Ties are
broken by the smaller item index (= the smaller raw id), so the output is deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numba
import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_type

from spark_cf.model.cf_model import CFModel
from spark_cf.schema import ITEM, ITEM_IDX, PREDICTION, RANK, SCORE, USER, USER_IDX

#: scores computed at once per task by the top-N (a float64 matrix of 128 MB)
MAX_SCORES = 1 << 24
# Numba caches compiled code beside this file; from a zip each worker compiles once.
_CACHE = os.path.isfile(__file__)


# ---------------------------------------------------------------------- NumPy kernels


def top_n_block(
    user_factors: np.ndarray,
    user_bias: np.ndarray,
    item_factors: np.ndarray,
    item_offsets: np.ndarray,
    rated_rows: np.ndarray,
    rated_items: np.ndarray,
    n: int,
    max_scores: int = MAX_SCORES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``n`` items for each user of a block (rows of ``user_factors``).

    ``rated_rows``/``rated_items`` list the (row, item) pairs to exclude. Scores are
    ``user_factors @ item_factors.T + item_offsets + user_bias`` (one matrix product for
    at most ``max_scores`` scores at a time); a compiled pass keeps each row's best ``n``,
    ordered by score, ties to the smaller item index. Returns (items, scores, counts):
    (rows, n) arrays whose row ``r`` is filled up to ``counts[r]`` (less than ``n`` only
    when the user has fewer than ``n`` items left).
    """
    rows = user_factors.shape[0]
    num_items = item_factors.shape[0]
    best_i = np.zeros((rows, n), dtype=np.int64)
    best_s = np.full((rows, n), -np.inf)
    counts = np.zeros(rows, dtype=np.int64)
    step = max(1, max_scores // max(num_items, 1))
    order = np.argsort(rated_rows, kind="stable")
    rated_rows, rated_items = rated_rows[order], rated_items[order]
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        scores = user_factors[start:stop] @ item_factors.T
        scores += item_offsets
        scores += user_bias[start:stop, None]
        lo, hi = np.searchsorted(rated_rows, [start, stop])
        scores[rated_rows[lo:hi] - start, rated_items[lo:hi]] = -np.inf
        _select_top(scores, best_i[start:stop], best_s[start:stop], counts[start:stop])
    return best_i, best_s, counts


@numba.njit(cache=_CACHE, nogil=True)
def _select_top(scores, out_i, out_s, counts):  # pragma: no cover
    """Per row of ``scores``, the best ``out_i.shape[1]`` (score desc, item asc), skipping
    ``-inf`` (excluded). Items are visited in ascending order, so an item that ties the
    current last never displaces it, and a new item goes after the scores equal to its own."""
    rows, m = scores.shape
    n = out_i.shape[1]
    for r in range(rows):
        cnt = 0
        for j in range(m):
            s = scores[r, j]
            if s == -np.inf:
                continue
            if cnt == n:
                if s <= out_s[r, n - 1]:
                    continue
                pos = n - 1
            else:
                pos = cnt
                cnt += 1
            while pos > 0 and out_s[r, pos - 1] < s:
                out_s[r, pos] = out_s[r, pos - 1]
                out_i[r, pos] = out_i[r, pos - 1]
                pos -= 1
            out_s[r, pos] = s
            out_i[r, pos] = j
        counts[r] = cnt


def score_pairs(model_arrays: tuple, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Scores of index pairs; -1 marks an unknown user (cold start) or item (NaN)."""
    theta, user_bias, x, item_offsets = model_arrays
    out = np.full(users.shape, np.nan)
    known_item = items >= 0
    out[known_item] = item_offsets[items[known_item]]
    both = known_item & (users >= 0)
    u, i = users[both], items[both]
    out[both] += np.einsum("nk,nk->n", theta[u], x[i]) + user_bias[u]
    return out


def _model_arrays(model: CFModel) -> tuple:
    user_bias = (
        model.user_bias if model.user_bias is not None else np.zeros(len(model.user_factors))
    )
    return model.user_factors, user_bias, model.item_factors, model.item_offsets()


# ---------------------------------------------------------------------- Spark transforms


def predict(
    pairs: DataFrame,
    model: CFModel,
    *,
    unknown_item: str = "nan",
    fallback: float = float("nan"),
    clip: tuple[float, float] | None = None,
) -> DataFrame:
    """(user_id, item_id, prediction) for every pair of ``pairs`` (other columns dropped).

    A user the model never saw gets the item's mean (cold start); an item it never saw
    gets NaN (``unknown_item = "nan"``), ``fallback`` (``"global_mean"``), or the row is
    left out (``"drop"``). ``clip`` bounds the predictions (NaN stays NaN).
    """
    spark = pairs.sparkSession
    arrays = _model_arrays(model)
    indexed = (
        pairs.select(USER, ITEM)
        .join(F.broadcast(model.index.user_map(spark)), on=USER, how="left")
        .join(F.broadcast(model.index.item_map(spark)), on=ITEM, how="left")
        .select(
            USER,
            ITEM,
            F.coalesce(F.col(USER_IDX), F.lit(-1)).alias(USER_IDX),
            F.coalesce(F.col(ITEM_IDX), F.lit(-1)).alias(ITEM_IDX),
        )
    )
    if unknown_item == "drop":
        indexed = indexed.where(F.col(ITEM_IDX) >= 0)
    low, high = clip if clip is not None else (-np.inf, np.inf)
    fill = fallback if unknown_item == "global_mean" else np.nan

    def score(batches: Iterator) -> Iterator:
        for batch in batches:
            users = batch.column(USER_IDX).to_numpy().astype(np.int64)
            items = batch.column(ITEM_IDX).to_numpy().astype(np.int64)
            values = score_pairs(arrays, users, items)
            values[items < 0] = fill
            values = np.clip(values, low, high)
            yield pa.RecordBatch.from_arrays(
                [batch.column(USER), batch.column(ITEM), pa.array(values)],
                names=[USER, ITEM, PREDICTION],
            )

    out_schema = indexed.select(USER, ITEM).schema.add(PREDICTION, "double", nullable=True)
    return indexed.mapInArrow(score, out_schema)


def top_n(
    spark: SparkSession,
    model: CFModel,
    rated: DataFrame | None,
    *,
    n: int,
    users: np.ndarray | None = None,
    block_size: int = 4096,
) -> DataFrame:
    """Long-form top-N lists: (user_id, rank 1..N, item_id, score).

    ``users``: the dense indices to recommend for (None = all users). ``rated``: a
    DataFrame of (user_idx, item_idx) pairs to exclude (None = exclude nothing).
    """
    all_users = np.arange(model.index.num_users) if users is None else np.asarray(users)
    all_users = np.unique(all_users.astype(np.int64))
    num_blocks = max(1, -(-len(all_users) // block_size))
    arrays = _model_arrays(model)
    user_ids = model.index.user_ids
    item_ids = model.index.item_ids
    position = np.full(model.index.num_users, -1, dtype=np.int64)
    position[all_users] = np.arange(len(all_users))

    blocks = spark.range(num_blocks).select(F.col("id").cast("int").alias("block"))
    if rated is not None and len(all_users):
        pos_map = spark.createDataFrame(
            pa.table(
                {
                    USER_IDX: all_users.astype(np.int32),
                    "pos": np.arange(len(all_users), dtype=np.int64),
                }
            )
        )
        grouped = (
            rated.select(USER_IDX, ITEM_IDX)
            .join(F.broadcast(pos_map), on=USER_IDX, how="inner")
            .withColumn("block", (F.col("pos") / F.lit(block_size)).cast("int"))
            .groupBy("block")
            .agg(
                F.collect_list(USER_IDX).alias("r_users"), F.collect_list(ITEM_IDX).alias("r_items")
            )
        )
        blocks = blocks.join(grouped, on="block", how="left")
    else:
        blocks = blocks.select(
            "block",
            F.lit(None).cast("array<int>").alias("r_users"),
            F.lit(None).cast("array<int>").alias("r_items"),
        )
    blocks = blocks.repartition(min(num_blocks, spark.sparkContext.defaultParallelism * 4), "block")

    def recommend(batches: Iterator) -> Iterator:
        theta, user_bias, x, offsets = arrays
        for batch in batches:
            for row in range(batch.num_rows):
                block = batch.column("block")[row].as_py()
                members = all_users[block * block_size : (block + 1) * block_size]
                r_users = batch.column("r_users")[row].values
                r_items = batch.column("r_items")[row].values
                if r_users is None:
                    rows_ex = np.empty(0, dtype=np.int64)
                    items_ex = np.empty(0, dtype=np.int64)
                else:
                    rows_ex = position[r_users.to_numpy().astype(np.int64)] - block * block_size
                    items_ex = r_items.to_numpy().astype(np.int64)
                best_i, best_s, counts = top_n_block(
                    theta[members], user_bias[members], x, offsets, rows_ex, items_ex, n
                )
                width = best_i.shape[1]
                ok = (np.arange(width) < counts[:, None]).ravel()
                user_col = np.repeat(members, width)[ok]
                rank_col = np.tile(np.arange(1, width + 1, dtype=np.int32), len(members))[ok]
                yield pa.RecordBatch.from_arrays(
                    [
                        user_ids.take(pa.array(user_col)),
                        pa.array(rank_col),
                        item_ids.take(pa.array(best_i.ravel()[ok])),
                        pa.array(best_s.ravel()[ok]),
                    ],
                    names=[USER, RANK, ITEM, SCORE],
                )

    schema = T.StructType(
        [
            T.StructField(USER, from_arrow_type(model.index.user_ids.type)),
            T.StructField(RANK, T.IntegerType()),
            T.StructField(ITEM, from_arrow_type(model.index.item_ids.type)),
            T.StructField(SCORE, T.DoubleType()),
        ]
    )
    return blocks.mapInArrow(recommend, schema)
