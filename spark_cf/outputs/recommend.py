"""Predictions for (user, item) pairs and top-N lists, as Spark transforms over a model.

Both score with the one rule, :mod:`spark_cf.model.scoring` (predictions with its
pairwise form, top-N with its matrix form). Top-N is computed by blocks of
``block_size`` users, one Spark task each: the task scores a slice of its users against
every item with one matrix product (at most :data:`MAX_SCORES` scores at a time, so no
task holds the whole score matrix) and a compiled pass keeps each user's best N. Ties are
broken by the smaller item index (= the smaller raw id), so the output is deterministic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numba
import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_type

from spark_cf.config import RecommendConfig
from spark_cf.data.indexing import IdIndex, apply_index
from spark_cf.model.cf_model import CFModel
from spark_cf.model.scoring import score_block, score_pairs
from spark_cf.schema import ITEM, ITEM_IDX, PREDICTION, RANK, SCORE, USER, USER_IDX

log = logging.getLogger(__name__)

#: scores computed at once per task by the top-N (a float64 matrix of 128 MB)
MAX_SCORES = 1 << 24
# Numba caches compiled code beside this file; from a zip each worker compiles once.
_CACHE = os.path.isfile(__file__)


# ---------------------------------------------------------------------- NumPy kernels


def top_n_block(
    user_factors: np.ndarray,
    user_bias: np.ndarray | None,
    item_factors: np.ndarray,
    item_offsets: np.ndarray,
    rated_rows: np.ndarray,
    rated_items: np.ndarray,
    n: int,
    max_scores: int = MAX_SCORES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``n`` items for each user of a block (rows of ``user_factors``).

    ``rated_rows``/``rated_items`` list the (row, item) pairs to exclude. Scores are the
    rule's matrix form (:func:`spark_cf.model.scoring.score_block`, at most
    ``max_scores`` scores at a time; ``user_bias`` None without biases); a compiled
    pass keeps each row's best ``n``, ordered by score, ties to the smaller item index.
    Returns (items, scores, counts): (rows, n) arrays whose row ``r`` is filled up to
    ``counts[r]`` (less than ``n`` only when the user has fewer than ``n`` items left).
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
        bias = user_bias[start:stop] if user_bias is not None else None
        scores = score_block(user_factors[start:stop], bias, item_factors, item_offsets)
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


def _model_arrays(model: CFModel) -> tuple:
    """What the Spark tasks need of the model: (Theta, user bias or None, X, offsets)."""
    return model.user_factors, model.user_bias, model.item_factors, model.item_offsets()


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
            values = score_pairs(*arrays, users, items)
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
                bias = user_bias[members] if user_bias is not None else None
                best_i, best_s, counts = top_n_block(
                    theta[members], bias, x, offsets, rows_ex, items_ex, n
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


# ---------------------------------------------------------------------- for the jobs


def rated_pairs(ratings: DataFrame, index: IdIndex) -> DataFrame:
    """(user_idx, item_idx) of the ratings whose user and item ``index`` knows (the others
    are dropped): what a model's top-N leaves out. ``ratings`` has ``user_id`` and
    ``item_id``."""
    return apply_index(ratings.select(USER, ITEM), index).select(USER_IDX, ITEM_IDX)


def recommendations(
    spark: SparkSession, model: CFModel, rated: DataFrame | None, rec: RecommendConfig
) -> tuple[DataFrame, list]:
    """The top-N table for ``[recommend]``, ordered by user and rank, and the requested raw
    user ids the model does not know.

    Parameters
    ----------
    spark
        The session.
    model
        The model to recommend with.
    rated
        (user_idx, item_idx) pairs, left out when ``rec.exclude_rated`` (None: none).
    rec
        ``top_n``, ``users`` (empty: all), ``exclude_rated`` and ``block_size``.

    Returns
    -------
    (DataFrame of (user_id, rank, item_id, score), list of unknown raw user ids)
    """
    wanted, unknown = recommend_targets(model, rec.users)
    recs = top_n(
        spark,
        model,
        rated if rec.exclude_rated else None,
        n=rec.top_n,
        users=wanted,
        block_size=rec.block_size,
    )
    return recs.orderBy(USER, RANK), unknown


def recommend_targets(model: CFModel, users: tuple) -> tuple[np.ndarray | None, list]:
    """Indices of the configured users (None = all) and the raw ids the model does not know."""
    if not users:
        return None, []
    raw = pa.array(list(users), type=model.index.user_ids.type)
    positions = model.index.user_positions(raw)
    unknown = [u for u, p in zip(users, positions) if p < 0]
    if unknown:
        log.warning(
            "%d users in recommend.users are not in the model (no ratings): %s",
            len(unknown),
            unknown[:10],
        )
    return positions[positions >= 0], unknown
