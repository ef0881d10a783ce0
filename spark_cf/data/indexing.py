"""Raw ids to dense 0-based indices and back.

The indices are the positions of the ids in sorted order (numbers by value, strings by
their UTF-8 bytes, as Spark orders them), so the same set of ids always gets the same
indices, whatever the partitioning of the input. The sorted id arrays are kept on the
driver: they are the maps back to raw ids for every table we write.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_cf.schema import ITEM, ITEM_IDX, USER, USER_IDX


@dataclass(frozen=True)
class IdIndex:
    """Sorted distinct raw ids of users and items; index ``k`` is the ``k``-th id."""

    user_ids: pa.Array
    item_ids: pa.Array

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def user_map(self, spark: SparkSession) -> DataFrame:
        """DataFrame (user_id, user_idx)."""
        return _map_frame(spark, self.user_ids, USER, USER_IDX)

    def item_map(self, spark: SparkSession) -> DataFrame:
        """DataFrame (item_id, item_idx)."""
        return _map_frame(spark, self.item_ids, ITEM, ITEM_IDX)

    def user_positions(self, raw: pa.Array) -> np.ndarray:
        """Indices of raw user ids (-1 for ids the index does not know)."""
        return _positions(self.user_ids, raw)

    def item_positions(self, raw: pa.Array) -> np.ndarray:
        """Indices of raw item ids (-1 for ids the index does not know)."""
        return _positions(self.item_ids, raw)


def _map_frame(spark: SparkSession, ids: pa.Array, id_col: str, idx_col: str) -> DataFrame:
    table = pa.table({id_col: ids, idx_col: pa.array(np.arange(len(ids), dtype=np.int32))})
    return spark.createDataFrame(table)


def _positions(sorted_ids: pa.Array, raw: pa.Array) -> np.ndarray:
    found = pc.index_in(raw, value_set=sorted_ids)
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _sorted_distinct(df: DataFrame, col: str) -> pa.Array:
    table = df.select(col).distinct().toArrow()
    column = table.column(col).combine_chunks()
    return pc.take(column, pc.sort_indices(column))


def build_index(ratings: DataFrame) -> IdIndex:
    """Collect the distinct user and item ids (two Spark jobs) and sort them."""
    return IdIndex(_sorted_distinct(ratings, USER), _sorted_distinct(ratings, ITEM))


def apply_index(ratings: DataFrame, index: IdIndex) -> DataFrame:
    """Add user_idx and item_idx (int) by broadcast joins on the raw ids.

    Every id of ``ratings`` must be in ``index`` (build it from the same ratings).
    """
    spark = ratings.sparkSession
    users = F.broadcast(index.user_map(spark))
    items = F.broadcast(index.item_map(spark))
    return ratings.join(users, on=USER, how="inner").join(items, on=ITEM, how="inner")
