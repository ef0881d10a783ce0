"""The fitted model and the function that fits it on Spark.

Scoring rule (the same for every consumer of the saved tables)::

    prediction(user j, item i) = theta_j . x_i + mean_i + b_i + b_j + global_mean

``mean_i`` is the item's normalisation mean (0 with biases or without normalisation),
``b_i``/``b_j`` the biases (0 without them), ``global_mean`` the biased model's centre
(0 for the course's model). A user the model has never seen has ``theta = 0`` and
``b_j = 0``, so gets ``mean_i + b_i + global_mean``: the item mean, the cold-start rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spark_cf import preflight
from spark_cf.config import ModelConfig, TrainConfig
from spark_cf.dataset import TrainingData
from spark_cf.distributed import BlockedRatings, choose_blocks
from spark_cf.indexing import IdIndex
from spark_cf.optimizers import OptimizerSettings, make_optimizer
from spark_cf.params import Layout, initial_parameters, row_preconditioner
from spark_cf.training import CheckpointPolicy, TrainResult, fingerprint_of, minimize

log = logging.getLogger(__name__)


@dataclass
class CFModel:
    """Item features, user parameters, biases and offsets, with the raw-id index."""

    index: IdIndex
    item_factors: np.ndarray  # (num_items, rank)
    user_factors: np.ndarray  # (num_users, rank)
    item_means: np.ndarray  # (num_items,) normalisation means, 0 when none
    global_mean: float
    item_bias: np.ndarray | None = None
    user_bias: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.item_factors.shape[1])

    @property
    def biases(self) -> bool:
        return self.item_bias is not None

    def item_offsets(self) -> np.ndarray:
        """What every prediction of an item adds to ``theta . x``: mean + bias + global."""
        out = self.item_means + self.global_mean
        return out + self.item_bias if self.item_bias is not None else out

    def predict_indices(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Predictions for dense indices; a user index of -1 is a user the model never saw."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        item_idx = np.asarray(item_idx, dtype=np.int64)
        known = user_idx >= 0
        out = self.item_offsets()[item_idx].astype(np.float64)
        u, i = user_idx[known], item_idx[known]
        dots = np.einsum("nk,nk->n", self.user_factors[u], self.item_factors[i])
        if self.user_bias is not None:
            dots = dots + self.user_bias[u]
        out[known] += dots
        return out


def optimizer_settings(train: TrainConfig) -> OptimizerSettings:
    return OptimizerSettings(
        learning_rate=train.learning_rate,
        momentum=train.momentum,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        adam_epsilon=train.adam_epsilon,
        lbfgs_memory=train.lbfgs_memory,
        lbfgs_precondition=train.lbfgs_precondition,
    )


def training_fingerprint(model: ModelConfig, train: TrainConfig, data_summary: dict) -> str:
    """What a checkpoint must match: the settings the trajectory depends on and the data."""
    keep_train = {
        k: v
        for k, v in train.__dict__.items()
        if k not in ("max_iter", "tol", "checkpoint_every", "checkpoint_dir", "resume")
    }
    return fingerprint_of({"model": model.__dict__, "train": keep_train, "data": data_summary})


def fit(
    data: TrainingData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    callback=None,
    stop_when=None,
    wrap_objective=None,
    blocks: BlockedRatings | None = None,
) -> tuple[CFModel, TrainResult]:
    """Fit on Spark: block and cache the ratings, then run the configured optimiser.

    Returns the model (on the driver) and the training result with its history.
    ``wrap_objective(f) -> f'`` may wrap the Spark objective (the parity check does).
    ``callback`` and ``stop_when`` are passed to :func:`spark_cf.training.minimize`.
    ``blocks`` reuses ratings already blocked and cached (and leaves them cached).
    """
    if train_cfg.warm_start == "latest":
        from spark_cf.errors import ConfigError

        raise ConfigError(
            "train.warm_start = 'latest' is resolved by the nightly job only; give the "
            "model folder of an earlier run, e.g. output/run_date=2026-11-24/model"
        )
    spark = data.ratings.sparkSession
    cores = spark.sparkContext.defaultParallelism
    user_blocks, item_blocks = choose_blocks(
        data.num_train + data.num_val, train_cfg.num_user_blocks, train_cfg.num_item_blocks, cores
    )
    index = data.index
    owned = blocks is None
    if blocks is None:
        blocks = BlockedRatings(
            data.ratings,
            num_users=index.num_users,
            num_items=index.num_items,
            normalization=data.normalization,
            user_blocks=user_blocks,
            item_blocks=item_blocks,
        )
    user_blocks, item_blocks = blocks.user_blocks, blocks.item_blocks
    try:
        layout = Layout(index.num_items, index.num_users, model_cfg.rank, model_cfg.biases)
        preflight.warn_rank(model_cfg.rank, index.num_users, index.num_items)
        w0 = initial_parameters(layout, init_scale=model_cfg.init_scale, seed=model_cfg.seed)
        if train_cfg.warm_start:
            w0 = warm_start_parameters(
                load_model(spark, train_cfg.warm_start), layout, index, w0, train_cfg.warm_start
            )
        optimizer = make_optimizer(
            train_cfg.optimizer,
            optimizer_settings(train_cfg),
            layout.size,
            row_preconditioner(layout, blocks.item_counts, blocks.user_counts),
        )
        summary = {
            "ratings": blocks.num_ratings,
            "held_out": blocks.num_val,
            "checksum": repr(blocks.checksum),
            "users": index.num_users,
            "items": index.num_items,
            "blocks": [user_blocks, item_blocks],
        }
        checkpoint = None
        if train_cfg.checkpoint_dir:
            checkpoint = CheckpointPolicy(
                train_cfg.checkpoint_dir, train_cfg.checkpoint_every, train_cfg.resume
            )
        log.info(
            "training: rank %d, reg %g, %s (learning rate %g), biases %s, max %d iterations, "
            "%dx%d blocks",
            model_cfg.rank,
            model_cfg.reg,
            train_cfg.optimizer,
            train_cfg.learning_rate,
            model_cfg.biases,
            train_cfg.max_iter,
            user_blocks,
            item_blocks,
        )
        objective = blocks.objective(layout, model_cfg.reg)
        if wrap_objective is not None:
            objective = wrap_objective(objective)
        result = minimize(
            objective,
            w0,
            optimizer,
            max_iter=train_cfg.max_iter,
            tol=train_cfg.tol,
            divergence_patience=train_cfg.divergence_patience,
            checkpoint=checkpoint,
            fingerprint=training_fingerprint(model_cfg, train_cfg, summary),
            callback=callback,
            stop_when=stop_when,
        )
    finally:
        if owned:
            blocks.unpersist()
    result.extra["blocks"] = [user_blocks, item_blocks]
    w = result.w
    model = CFModel(
        index=index,
        item_factors=layout.X(w).copy(),
        user_factors=layout.Theta(w).copy(),
        item_means=data.normalization.item_means.copy(),
        global_mean=data.normalization.global_mean,
        item_bias=layout.item_bias(w).copy() if model_cfg.biases else None,
        user_bias=layout.user_bias(w).copy() if model_cfg.biases else None,
    )
    return model, result


def warm_start_parameters(
    previous: CFModel, layout: Layout, index: IdIndex, w0: np.ndarray, source: str = ""
) -> np.ndarray:
    """``w0`` with the rows of the users and items ``previous`` knows (matched by raw id)
    replaced by their fitted features and biases; the others keep their random start.

    Raises :class:`~spark_cf.errors.ModelError` when the ranks differ.
    """
    from spark_cf.errors import ModelError

    if previous.rank != layout.rank:
        raise ModelError(
            f"train.warm_start: the model at {source or 'the warm start'} has rank "
            f"{previous.rank}, this run model.rank = {layout.rank}; use the same rank or "
            f"train.warm_start = ''"
        )
    w = np.array(w0, dtype=np.float64, copy=True)
    users = previous.index.user_positions(index.user_ids)
    items = previous.index.item_positions(index.item_ids)
    u_new, i_new = np.flatnonzero(users >= 0), np.flatnonzero(items >= 0)
    layout.Theta(w)[u_new] = previous.user_factors[users[u_new]]
    layout.X(w)[i_new] = previous.item_factors[items[i_new]]
    if layout.biases and previous.biases:
        layout.user_bias(w)[u_new] = previous.user_bias[users[u_new]]
        layout.item_bias(w)[i_new] = previous.item_bias[items[i_new]]
    log.info(
        "warm start from %s: %d of %d users and %d of %d items carried over%s",
        source or "a previous model",
        len(u_new),
        index.num_users,
        len(i_new),
        index.num_items,
        "" if previous.biases or not layout.biases else " (biases start at zero)",
    )
    return w


# ------------------------------------------------------------------ tables and round trip

USER_FACTORS, ITEM_FACTORS, METADATA = "user_factors", "item_factors", "metadata.json"


def _features_array(matrix: np.ndarray):
    import pyarrow as pa

    rows, rank = matrix.shape
    offsets = pa.array(np.arange(0, (rows + 1) * rank, rank, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix).ravel()))


def factor_tables(model: CFModel):
    """The model as two Arrow tables: user_factors and item_factors (see README)."""
    import pyarrow as pa

    users = {"user_id": model.index.user_ids, "features": _features_array(model.user_factors)}
    items = {
        "item_id": model.index.item_ids,
        "features": _features_array(model.item_factors),
        "mean": pa.array(model.item_means),
    }
    if model.biases:
        users["bias"] = pa.array(model.user_bias)
        items["bias"] = pa.array(model.item_bias)
    return pa.table(users), pa.table(items)


def save_model(spark, model: CFModel, path: str) -> None:
    """Write ``path/user_factors``, ``path/item_factors`` (Parquet) and ``path/metadata.json``.

    ``path`` is a staging folder: the caller publishes it as a whole
    (:class:`spark_cf.publish.Publication`).
    """
    from spark_cf import io

    users, items = factor_tables(model)
    io.write_parquet(spark.createDataFrame(users), f"{path}/{USER_FACTORS}", partitions=1)
    io.write_parquet(spark.createDataFrame(items), f"{path}/{ITEM_FACTORS}", partitions=1)
    meta = dict(model.metadata)
    meta.update(
        rank=model.rank,
        global_mean=model.global_mean,
        biases=model.biases,
        num_users=model.index.num_users,
        num_items=model.index.num_items,
    )
    io.write_json(spark, f"{path}/{METADATA}", meta)


def _matrix(column, rank: int) -> np.ndarray:
    import pyarrow as pa

    flat = pa.concat_arrays([c.flatten() for c in column.chunks]) if column.num_chunks else []
    return np.asarray(flat, dtype=np.float64).reshape(-1, rank)


def load_model(spark, path: str) -> CFModel:
    """Read a model written by :func:`save_model` back (rows ordered by raw id again)."""
    import pyarrow.compute as pc

    from spark_cf import io
    from spark_cf.errors import ModelError

    for part in (USER_FACTORS, ITEM_FACTORS, METADATA):
        if not io.exists(spark, f"{path}/{part}"):
            raise ModelError(f"no model at {path}: {part} is missing")
    meta = io.read_json(spark, f"{path}/{METADATA}")
    rank = int(meta["rank"])
    users = spark.read.parquet(f"{path}/{USER_FACTORS}").toArrow()
    items = spark.read.parquet(f"{path}/{ITEM_FACTORS}").toArrow()
    users = users.take(pc.sort_indices(users, [("user_id", "ascending")]))
    items = items.take(pc.sort_indices(items, [("item_id", "ascending")]))
    biases = bool(meta["biases"])
    index = IdIndex(
        users.column("user_id").combine_chunks(), items.column("item_id").combine_chunks()
    )
    return CFModel(
        index=index,
        item_factors=_matrix(items.column("features"), rank),
        user_factors=_matrix(users.column("features"), rank),
        item_means=items.column("mean").to_numpy(),
        global_mean=float(meta["global_mean"]),
        item_bias=items.column("bias").to_numpy() if biases else None,
        user_bias=users.column("bias").to_numpy() if biases else None,
        metadata=meta,
    )
