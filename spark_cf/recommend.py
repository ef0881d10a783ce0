"""Predictions for (user, item) pairs and top-N lists, as Spark transforms over a model.

Both score with the rule in :mod:`spark_cf.model`. Top-N is computed by blocks: users in
blocks of ``block_size``, items in chunks; each (user block, item chunk) gives a local
top-N that is merged into the block's top-N, so no task ever holds the whole score
matrix. Ties are broken by the smaller item index (= the smaller raw id), so the output
is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_type

from spark_cf.indexing import ITEM_IDX, USER_IDX
from spark_cf.model import CFModel
from spark_cf.validation import ITEM, USER

PREDICTION, RANK, SCORE = "prediction", "rank", "score"
ITEM_CHUNK = 8192


# ---------------------------------------------------------------------- NumPy kernels


def top_n_rows(scores: np.ndarray, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``n`` best (score desc, item asc) of ``scores`` with item ids ``items``.

    ``items`` is (rows, m) or (m,). Returns (item ids, scores), each (rows, min(n, m)),
    ordered best first; excluded entries carry ``-inf`` scores.
    """
    rows, m = scores.shape
    items = np.broadcast_to(items, scores.shape)
    if m > n:
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        cand_s = np.take_along_axis(scores, part, axis=1)
        cand_i = np.take_along_axis(items, part, axis=1)
        threshold = cand_s.min(axis=1)
        # Rows with ties at the threshold beyond the n taken: redo them exactly.
        tied = np.flatnonzero((scores >= threshold[:, None]).sum(axis=1) > n)
        for r in tied:
            keep = np.flatnonzero(scores[r] >= threshold[r])
            order = np.lexsort((items[r, keep], -scores[r, keep]))[:n]
            cand_s[r] = scores[r, keep[order]]
            cand_i[r] = items[r, keep[order]]
    else:
        cand_s, cand_i = scores.copy(), np.array(items)
    order = np.lexsort((cand_i, -cand_s), axis=-1)
    return np.take_along_axis(cand_i, order, axis=1), np.take_along_axis(cand_s, order, axis=1)


def top_n_block(
    user_factors: np.ndarray,
    user_bias: np.ndarray,
    item_factors: np.ndarray,
    item_offsets: np.ndarray,
    rated_rows: np.ndarray,
    rated_items: np.ndarray,
    n: int,
    item_chunk: int = ITEM_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` items for each user of a block (rows of ``user_factors``).

    ``rated_rows``/``rated_items`` list the (row, item) pairs to exclude. Scores are
    ``user_factors @ item_factors.T + item_offsets + user_bias``, computed one chunk of
    items at a time and merged.
    """
    rows = user_factors.shape[0]
    num_items = item_factors.shape[0]
    best_i = np.empty((rows, 0), dtype=np.int64)
    best_s = np.empty((rows, 0))
    for start in range(0, num_items, item_chunk):
        stop = min(start + item_chunk, num_items)
        scores = user_factors @ item_factors[start:stop].T
        scores += item_offsets[start:stop]
        scores += user_bias[:, None]
        inside = (rated_items >= start) & (rated_items < stop)
        scores[rated_rows[inside], rated_items[inside] - start] = -np.inf
        chunk_i, chunk_s = top_n_rows(scores, np.arange(start, stop), n)
        best_i, best_s = top_n_rows(
            np.concatenate([best_s, chunk_s], axis=1), np.concatenate([best_i, chunk_i], axis=1), n
        )
    return best_i, best_s


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
                best_i, best_s = top_n_block(
                    theta[members], user_bias[members], x, offsets, rows_ex, items_ex, n
                )
                width = best_i.shape[1]
                ok = np.isfinite(best_s).ravel()
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
