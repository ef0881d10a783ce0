"""A model on disk: two Parquet factor tables and ``metadata.json`` (see README)."""

from __future__ import annotations

import numpy as np

from spark_cf.data.indexing import IdIndex
from spark_cf.model.cf_model import CFModel
from spark_cf.schema import (
    BIAS,
    COUNT,
    FEATURES,
    ITEM,
    ITEM_FACTORS,
    MEAN,
    METADATA,
    USER,
    USER_FACTORS,
)


def _features_array(matrix: np.ndarray):
    import pyarrow as pa

    rows, rank = matrix.shape
    offsets = pa.array(np.arange(0, (rows + 1) * rank, rank, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix).ravel()))


def factor_tables(model: CFModel):
    """The model as two Arrow tables: user_factors and item_factors (see README)."""
    import pyarrow as pa

    users = {USER: model.index.user_ids, FEATURES: _features_array(model.user_factors)}
    items = {
        ITEM: model.index.item_ids,
        FEATURES: _features_array(model.item_factors),
        MEAN: pa.array(model.item_means),
    }
    if model.biases:
        users[BIAS] = pa.array(model.user_bias)
        items[BIAS] = pa.array(model.item_bias)
    return pa.table(users), pa.table(items)


def save_model(spark, model: CFModel, path: str) -> None:
    """Write ``path/user_factors``, ``path/item_factors`` (Parquet) and ``path/metadata.json``.

    ``item_factors`` holds :func:`factor_tables`' columns and, when the model has them,
    the items' training rating counts (``count``).

    ``path`` is a staging folder: the caller publishes it as a whole
    (:class:`spark_cf.outputs.publish.Publication`).
    """
    import pyarrow as pa

    from spark_cf import storage

    users, items = factor_tables(model)
    if model.item_counts is not None:  # not a scoring parameter: saved, not in the factors
        items = items.append_column(COUNT, pa.array(np.asarray(model.item_counts, np.int64)))
    storage.write_parquet(spark.createDataFrame(users), f"{path}/{USER_FACTORS}", partitions=1)
    storage.write_parquet(spark.createDataFrame(items), f"{path}/{ITEM_FACTORS}", partitions=1)
    meta = dict(model.metadata)
    meta.update(
        rank=model.rank,
        global_mean=model.global_mean,
        biases=model.biases,
        num_users=model.index.num_users,
        num_items=model.index.num_items,
    )
    storage.write_json(spark, f"{path}/{METADATA}", meta)


def _matrix(column, rank: int) -> np.ndarray:
    import pyarrow as pa

    flat = pa.concat_arrays([c.flatten() for c in column.chunks]) if column.num_chunks else []
    return np.asarray(flat, dtype=np.float64).reshape(-1, rank)


def load_model(spark, path: str) -> CFModel:
    """Read a model written by :func:`save_model` back (rows ordered by raw id again).

    A model saved without the items' ``count`` column (before it existed) loads with
    ``item_counts`` None.
    """
    import pyarrow.compute as pc

    from spark_cf import storage
    from spark_cf.errors import ModelError

    for part in (USER_FACTORS, ITEM_FACTORS, METADATA):
        if not storage.exists(spark, f"{path}/{part}"):
            raise ModelError(f"no model at {path}: {part} is missing")
    meta = storage.read_json(spark, f"{path}/{METADATA}")
    rank = int(meta["rank"])
    users = spark.read.parquet(f"{path}/{USER_FACTORS}").toArrow()
    items = spark.read.parquet(f"{path}/{ITEM_FACTORS}").toArrow()
    users = users.take(pc.sort_indices(users, [(USER, "ascending")]))
    items = items.take(pc.sort_indices(items, [(ITEM, "ascending")]))
    biases = bool(meta["biases"])
    index = IdIndex(users.column(USER).combine_chunks(), items.column(ITEM).combine_chunks())
    return CFModel(
        index=index,
        item_factors=_matrix(items.column(FEATURES), rank),
        user_factors=_matrix(users.column(FEATURES), rank),
        item_means=items.column(MEAN).to_numpy(),
        global_mean=float(meta["global_mean"]),
        item_bias=items.column(BIAS).to_numpy() if biases else None,
        user_bias=users.column(BIAS).to_numpy() if biases else None,
        item_counts=items.column(COUNT).to_numpy() if COUNT in items.column_names else None,
        metadata=meta,
    )
