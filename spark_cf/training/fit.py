"""Fit the model on Spark: block and cache the ratings, start, run the optimiser."""

from __future__ import annotations

import logging

import numpy as np

from spark_cf.config import ModelConfig, TrainConfig
from spark_cf.data.indexing import IdIndex
from spark_cf.data.prepare import TrainingData
from spark_cf.model.cf_model import CFModel
from spark_cf.model.persistence import load_model
from spark_cf.training.blocks import BlockedRatings, choose_blocks
from spark_cf.training.loop import CheckpointPolicy, TrainResult, fingerprint_of, minimize
from spark_cf.training.optimizers import OptimizerSettings, make_optimizer
from spark_cf.training.params import Layout, initial_parameters, row_preconditioner

log = logging.getLogger(__name__)


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
    ``callback`` and ``stop_when`` are passed to :func:`spark_cf.training.loop.minimize`.
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
        warn_rank(model_cfg.rank, index.num_users, index.num_items)
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


def warn_rank(rank: int, num_users: int, num_items: int) -> bool:
    """Log a warning when ``model.rank`` exceeds the number of users or of items (the
    extra features can only fit noise); returns whether it warned."""
    fewer = [name for name, n in (("users", num_users), ("items", num_items)) if n < rank]
    if not fewer:
        return False
    log.warning(
        "model.rank = %d exceeds the number of %s (%d users, %d items): the extra "
        "features can only fit noise; lower model.rank",
        rank,
        " and ".join(fewer),
        num_users,
        num_items,
    )
    return True
