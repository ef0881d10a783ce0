"""Fit the model on Spark: block and cache the ratings, start, run the optimiser.

:func:`fit` takes plain keyword arguments (ALS's vocabulary in snake_case): the nightly
job turns its config into them (:func:`spark_cf.config.fit_arguments`), the pyspark.ml
Estimator (:class:`spark_cf.ml.SparkCF`) its Params. It reads and writes no files: a warm
start is a model given as ``initial_model``, checkpoints go through a ``checkpointer``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from spark_cf.config import AUTO, LIBRARY_REG, ModelConfig, TrainConfig
from spark_cf.data.indexing import IdIndex
from spark_cf.data.prepare import TrainingData
from spark_cf.errors import DivergenceError
from spark_cf.model.cf_model import CFModel
from spark_cf.model.normalization import Normalization
from spark_cf.training.blocks import BlockedRatings, choose_blocks
from spark_cf.training.loop import Checkpointing, TrainResult, fingerprint_of, minimize
from spark_cf.training.objective import RATINGS, CostSpec
from spark_cf.training.optimizers import OptimizerSettings, make_optimizer, needs_curvature
from spark_cf.training.params import Layout, initial_parameters, row_preconditioner
from spark_cf.training.partitioned import PartitionedObjective, PartitionedOptimizer
from spark_cf.training.shared import SharedEvaluations

log = logging.getLogger(__name__)

_M, _T = ModelConfig, TrainConfig  # the defaults live there (conf/default.toml)
#: a regularisation this small against the ratings per row counts as "ALS's scale": see
#: :func:`warn_reg`
ALS_SCALE_REG = 0.01


def optimizer_settings(train: TrainConfig) -> OptimizerSettings:
    """The optimiser settings of ``[train]`` (the fields share their names)."""
    return OptimizerSettings(
        **{f.name: getattr(train, f.name) for f in dataclasses.fields(OptimizerSettings)}
    )


def fit(
    data: TrainingData,
    *,
    rank: int = _M.rank,
    reg_param: float | str = LIBRARY_REG,
    reg_grid: Sequence[float] = _M.reg_grid,
    max_iter: int = _T.max_iter,
    tol: float = _T.tol,
    seed: int = _M.seed,
    optimizer: str = _T.optimizer,
    learning_rate: float = _T.learning_rate,
    biases: bool = _M.biases,
    init_scale: float = _M.init_scale,
    num_user_blocks: int = _T.num_user_blocks,
    num_item_blocks: int = _T.num_item_blocks,
    momentum: float = _T.momentum,
    adam_beta1: float = _T.adam_beta1,
    adam_beta2: float = _T.adam_beta2,
    adam_epsilon: float = _T.adam_epsilon,
    lbfgs_memory: int = _T.lbfgs_memory,
    lbfgs_precondition: str = _T.lbfgs_precondition,
    user_side: str = _T.user_side,
    divergence_patience: int = _T.divergence_patience,
    initial_model: CFModel | None = None,
    checkpointer: Checkpointing | None = None,
    callback: Callable[[int, float, float], None] | None = None,
    stop_when: Callable[[dict[str, float]], bool] | None = None,
    wrap_objective: Callable | None = None,
    blocks: BlockedRatings | None = None,
    objective: str = RATINGS,
    alpha: float = 1.0,
) -> tuple[CFModel, TrainResult]:
    """Fit on Spark: block and cache the ratings, then run the optimiser.

    The defaults are ``conf/default.toml``'s (:class:`~spark_cf.config.ModelConfig`,
    :class:`~spark_cf.config.TrainConfig`); the objective and the update rules are in
    :mod:`spark_cf.training.loop`.

    Parameters
    ----------
    data
        Prepared ratings (:func:`spark_cf.data.prepare.prepare`): the normalisation
        (``mean_normalization``) was chosen there, with the same ``biases``.
    rank, reg_param, biases, init_scale, seed
        The model: ``reg_param`` is lambda on the summed cost (``model.reg``), not ALS's
        per-rating ``regParam``, or ``"auto"``: see ``reg_grid``. Its default is a number
        (``LIBRARY_REG``, 10), not the config's ``"auto"``: the grid needs held-out
        ratings, which ``data`` need not have.
    reg_grid
        With ``reg_param="auto"`` (``model.reg_grid``): one model is trained for each of
        these values, side by side in the same Spark jobs (each evaluation of the blocks
        serves every value: the regularisation is added on the driver), and the one with
        the lowest held-out RMSE at its last iterate is returned. Its
        ``TrainResult.extra`` records ``reg`` (the choice) and ``reg_grid`` (each value's
        held-out RMSE, iterations and stop reason). Needs held-out ratings in ``data``;
        each model checkpoints in ``<checkpointer.directory>/reg=<value>``.
    max_iter, tol, optimizer, learning_rate, momentum, adam_beta1, adam_beta2, adam_epsilon,
    lbfgs_memory, lbfgs_precondition, divergence_patience
        The optimiser and the stopping rules (``[train]``).
    num_user_blocks, num_item_blocks
        The block grid; 0 = from the data size and the cores.
    user_side
        Where the user side (Theta, the user biases and the optimiser's state for them)
        lives while training: ``"driver"`` (one vector, broadcast to every task),
        ``"executors"`` (with each user block's ratings, in Spark's cache:
        :mod:`spark_cf.training.partitioned`) or ``"auto"`` (:func:`resolve_user_side`).
    initial_model
        A warm start: the users and items it knows (matched by raw id) start from its
        features and biases, the others at random. Its rank must be ``rank``.
    checkpointer
        Where the loop saves and resumes its state
        (:class:`spark_cf.training.checkpoints.Checkpointer`); None = no checkpoints. A
        checkpoint is refused unless the data and every argument but ``max_iter`` and
        ``tol`` (and the start, warm or random) are the same.
    callback, stop_when
        Passed to :func:`spark_cf.training.loop.minimize`.
    wrap_objective
        ``wrap_objective(f) -> f'`` wraps the Spark objective (the parity check does).
    blocks
        Ratings already blocked and cached (left cached); None = block them here and
        release them at the end. For ``objective="ranking"`` they must hold the raw values
        (built with a zero normalisation); ``alpha`` is not in them, so several alphas can
        share one set.
    objective, alpha
        ``"ratings"`` (the course's cost on the rated pairs) or ``"ranking"`` (the
        implicit-feedback cost over all pairs with confidence ``1 + alpha r`` on the rated
        ones: :mod:`spark_cf.training.objective`). A ranking fit ignores
        ``data.normalization`` (it trains on the raw values) and returns a model with zero
        means and global mean, whose score is ``theta_u . x_i``, plus ``b_i + b_u`` with
        ``biases`` (the item bias carries popularity, so a user with no training pairs
        still gets a list); its history's RMSEs are distances of the pairs' scores from
        preference 1.

    Returns
    -------
    (CFModel, TrainResult)
        The model on the driver and the run with its history; ``TrainResult.extra`` holds
        ``blocks``, ``objective``, ``alpha`` and ``reg``.

    Raises
    ------
    ValueError
        ``objective`` is unknown, ``alpha`` is negative, or ``blocks`` of a ranking fit
        subtracted a normalisation
        (checked by :class:`~spark_cf.training.blocks.SparkObjective`); ``"auto"``
        without held-out ratings or with an empty grid.
    ModelError
        ``initial_model`` has another rank.
    DivergenceError, CheckpointError
        From the loop.
    """
    if isinstance(reg_param, str):
        arguments = {k: v for k, v in locals().items() if k not in ("data", "reg_param")}
        if reg_param != AUTO:
            raise ValueError(f'reg_param = {reg_param!r}: expected a number >= 0 or "auto"')
        return _fit_reg_grid(data, **arguments)
    cost = CostSpec(objective, alpha)
    normalization = _normalization(data, cost)
    index = data.index
    owned = blocks is None
    if blocks is None:
        blocks = _block(data, cost, num_user_blocks, num_item_blocks)
    user_blocks, item_blocks = blocks.user_blocks, blocks.item_blocks
    settings = OptimizerSettings(
        learning_rate=learning_rate,
        momentum=momentum,
        adam_beta1=adam_beta1,
        adam_beta2=adam_beta2,
        adam_epsilon=adam_epsilon,
        lbfgs_memory=lbfgs_memory,
        lbfgs_precondition=lbfgs_precondition,
    )
    try:
        layout = Layout(index.num_items, index.num_users, rank, biases)
        warn_rank(rank, index.num_users, index.num_items)
        w0 = initial_parameters(layout, init_scale=init_scale, seed=seed)
        if initial_model is not None:
            w0 = warm_start_parameters(initial_model, layout, index, w0)
        # a wrapped objective (the parity check) is the driver's
        side = "driver" if wrap_objective and user_side == "auto" else user_side
        side = resolve_user_side(side, layout)
        if side == "driver":
            opt = make_optimizer(
                optimizer,
                settings,
                layout.size,
                row_preconditioner(layout, blocks.item_counts, blocks.user_counts),
            )
        else:
            opt = None
        summary = {
            "ratings": blocks.num_ratings,
            "held_out": blocks.num_val,
            "checksum": repr(blocks.checksum),
            "users": index.num_users,
            "items": index.num_items,
            "blocks": [user_blocks, item_blocks],
        }
        settings_used = {
            "rank": rank,
            "reg_param": reg_param,
            "biases": biases,
            "objective": cost.objective,
            "alpha": cost.alpha,
            "optimizer": optimizer,
            "divergence_patience": divergence_patience,
            **dataclasses.asdict(settings),
        }
        log.info(
            "training: %s objective%s, rank %d, reg %g, %s (learning rate %g), biases %s, "
            "max %d iterations, %dx%d blocks, user side on the %s",
            cost.objective,
            f" (alpha {cost.alpha:g})" if cost.ranking else "",
            rank,
            reg_param,
            optimizer,
            learning_rate,
            biases,
            max_iter,
            user_blocks,
            item_blocks,
            side,
        )
        engine = None
        if side == "executors":
            if wrap_objective is not None:
                raise ValueError('user_side = "executors" cannot wrap the objective')
            engine = PartitionedObjective(
                blocks,
                layout,
                reg_param,
                cost,
                curvature=needs_curvature(optimizer, settings),
                precondition=lbfgs_precondition if optimizer == "lbfgs" else "none",
            )
            opt = PartitionedOptimizer(optimizer, settings, engine)
            f = opt.objective
        else:
            f = blocks.objective(layout, reg_param, cost, curvature=opt.needs_curvature)
        if wrap_objective is not None:
            f = wrap_objective(f)
        try:
            result = minimize(
                f,
                w0,
                opt,
                max_iter=max_iter,
                tol=tol,
                divergence_patience=divergence_patience,
                checkpointer=checkpointer,
                fingerprint=training_fingerprint(settings_used, summary, normalization, w0),
                callback=callback,
                stop_when=stop_when,
            )
        finally:
            if engine is not None:
                engine.close()
    finally:
        if owned:
            blocks.unpersist()
    result.extra["blocks"] = [user_blocks, item_blocks]
    result.extra["user_side"] = side
    result.extra["objective"] = cost.objective
    result.extra["alpha"] = cost.alpha
    result.extra["reg"] = float(reg_param)
    w = result.w
    model = CFModel(
        index=index,
        item_factors=layout.X(w).copy(),
        user_factors=layout.Theta(w).copy(),
        item_means=normalization.item_means.copy(),
        global_mean=normalization.global_mean,
        item_bias=layout.item_bias(w).copy() if biases else None,
        user_bias=layout.user_bias(w).copy() if biases else None,
        item_counts=blocks.item_counts.copy(),
    )
    return model, result


#: ``user_side = "auto"`` keeps the user side on the executors from this many user
#: parameters (users x (rank + biases)). Measured on one 2-core machine
#: (``benchmarks/user_scale.py``, 2M ratings): an evaluation on the executors takes about
#: twice the driver's up to 5M user parameters and the same at 25M, where the driver's
#: memory starts to bind (L-BFGS keeps 2 x lbfgs_memory + 4 full vectors there).
AUTO_EXECUTORS_USER_PARAMS = 20_000_000


def resolve_user_side(user_side: str, layout: Layout) -> str:
    """``"driver"`` or ``"executors"`` for ``user_side`` (``"auto"``: by the number of
    user parameters, :data:`AUTO_EXECUTORS_USER_PARAMS`)."""
    if user_side not in ("auto", "driver", "executors"):
        raise ValueError(f'user_side = {user_side!r}: expected "auto", "driver" or "executors"')
    if user_side != "auto":
        return user_side
    per_user = layout.rank + (1 if layout.biases else 0)
    return "executors" if layout.num_users * per_user >= AUTO_EXECUTORS_USER_PARAMS else "driver"


def _normalization(data: TrainingData, cost: CostSpec) -> Normalization:
    """What the blocks subtract: the data's normalisation, or for the ranking objective
    (which weighs the raw values) nothing."""
    if cost.ranking:
        return Normalization(np.zeros(data.index.num_items), 0.0)
    return data.normalization


def _block(
    data: TrainingData, cost: CostSpec, num_user_blocks: int, num_item_blocks: int
) -> BlockedRatings:
    """``data``'s ratings blocked and cached for ``cost`` (the grid from the settings)."""
    cores = data.ratings.sparkSession.sparkContext.defaultParallelism
    user_blocks, item_blocks = choose_blocks(
        data.num_train + data.num_val, num_user_blocks, num_item_blocks, cores
    )
    return BlockedRatings(
        data.ratings,
        num_users=data.index.num_users,
        num_items=data.index.num_items,
        normalization=_normalization(data, cost),
        user_blocks=user_blocks,
        item_blocks=item_blocks,
    )


#: ``model.reg = "auto"``: a model of the grid stops once its held-out RMSE has stayed
#: above its best for this many iterations in a row (it overfits: a smaller reg than the
#: data wants), so that it does not hold the shared jobs up
GRID_PATIENCE = 5


class HeldOutRising:
    """``stop_when`` for the grid: ``"held_out_not_improving"`` once the held-out RMSE has been
    above its best so far for ``patience`` iterations in a row. It reads only its own
    run's history, so the stop does not depend on the other runs or the threads."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.above = 0

    def __call__(self, record: dict[str, float]) -> str | None:
        rmse = record.get("val_rmse", math.nan)
        if not math.isfinite(rmse):
            return None
        if rmse < self.best:
            self.best, self.above = rmse, 0
            return None
        self.above += 1
        return "held_out_not_improving" if self.above >= self.patience else None


def _fit_reg_grid(
    data: TrainingData,
    *,
    reg_grid: Sequence[float],
    blocks: BlockedRatings | None,
    checkpointer: Checkpointing | None,
    wrap_objective: Callable | None,
    **arguments: Any,
) -> tuple[CFModel, TrainResult]:
    """``fit(reg_param="auto")``: one fit per value of ``reg_grid``, in driver threads that
    share each Spark job (:class:`~spark_cf.training.shared.SharedEvaluations`), and the
    one with the lowest held-out RMSE at its last iterate (ties: the smaller value).
    Each fit's trajectory is exactly what it would be alone, so the choice does not
    depend on the threads' timing. A fit whose held-out RMSE keeps rising stops early
    (:class:`HeldOutRising`)."""
    grid = sorted({float(r) for r in reg_grid})
    if not grid or any(not np.isfinite(r) or r < 0 for r in grid):
        raise ValueError(f"reg_grid = {list(reg_grid)!r}: expected numbers >= 0, at least one")
    if not data.num_val:
        raise ValueError(
            'reg_param = "auto" chooses on the held-out ratings, and there are none: hold '
            "some out (evaluate.holdout_fraction > 0) or give a number"
        )
    if checkpointer is not None and not hasattr(checkpointer, "directory"):
        raise ValueError(
            'reg_param = "auto" checkpoints each model of the grid in a folder of its own: '
            "give a Checkpointer (spark_cf.training.checkpoints), or a number"
        )
    if wrap_objective is not None:
        raise ValueError('reg_param = "auto" cannot wrap the objective: give a number')
    cost = CostSpec(arguments["objective"], arguments["alpha"])
    owned = blocks is None
    if blocks is None:
        blocks = _block(data, cost, arguments["num_user_blocks"], arguments["num_item_blocks"])
    settings = OptimizerSettings(
        **{f.name: arguments[f.name] for f in dataclasses.fields(OptimizerSettings)}
    )
    layout = Layout(
        data.index.num_items, data.index.num_users, arguments["rank"], arguments["biases"]
    )
    shared = SharedEvaluations(
        blocks.objective(
            layout,
            grid[0],
            cost,
            curvature=needs_curvature(arguments["optimizer"], settings),
        ),
        len(grid),
    )
    # With the user side on the executors each model keeps its own states there and runs
    # its own jobs (the threads still overlap them); the driver's path shares each job.
    separate = resolve_user_side(arguments["user_side"], layout) == "executors"
    log.info("model.reg = auto: training %d models side by side, reg %s", len(grid), grid)

    user_stop = arguments.pop("stop_when")

    def one(reg: float):
        rising = HeldOutRising(GRID_PATIENCE)

        def stop_when(record):
            return (user_stop(record) if user_stop is not None else None) or rising(record)

        own = None  # each model's checkpoints in <checkpoint_dir>/reg=<value>
        if checkpointer is not None:
            own = dataclasses.replace(
                checkpointer, directory=f"{checkpointer.directory.rstrip('/')}/reg={reg:g}"
            )
        try:
            return fit(
                data,
                reg_param=reg,
                blocks=blocks,
                checkpointer=own,
                wrap_objective=None if separate else (lambda _f: shared.proxy(reg, reg)),
                stop_when=stop_when,
                **arguments,
            )
        finally:
            shared.done()

    try:
        with ThreadPoolExecutor(max_workers=len(grid), thread_name_prefix="reg") as pool:
            futures = [pool.submit(one, reg) for reg in grid]
        outcomes = [f.exception() or f.result() for f in futures]
    finally:
        if owned:
            blocks.unpersist()
    records = []
    for reg, outcome in zip(grid, outcomes):
        if isinstance(outcome, DivergenceError):  # this value only: the others may do
            log.warning("model.reg = auto: reg %g diverged: %s", reg, outcome)
            records.append({"reg": reg, "val_rmse": None, "stop_reason": "diverged"})
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        result = outcome[1]
        last = result.history[-1]
        records.append(
            {
                "reg": reg,
                "val_rmse": last.get("val_rmse", float("nan")),
                "train_rmse": last.get("train_rmse", float("nan")),
                "iterations": result.iterations,
                "stop_reason": result.stop_reason,
                "final_cost": result.final_cost,
            }
        )
    scores = [
        r["val_rmse"] if r["val_rmse"] is not None and np.isfinite(r["val_rmse"]) else np.inf
        for r in records
    ]
    best = int(np.argmin(scores))
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures and not np.isfinite(scores[best]):  # every value diverged
        raise failures[0]
    model, result = outcomes[best]
    result.extra["reg_grid"] = records
    result.extra["reg_auto"] = True
    result.extra["evaluation_jobs"] = shared.jobs
    for r in records:
        if r["val_rmse"] is None:
            continue
        log.info(
            "model.reg = auto: reg %g, held-out RMSE %.4f after %d iterations (%s)%s",
            r["reg"],
            r["val_rmse"],
            r["iterations"],
            r["stop_reason"],
            "  <- chosen" if r["reg"] == grid[best] else "",
        )
    return model, result


def training_fingerprint(
    settings: dict[str, Any],
    data_summary: dict[str, Any],
    normalization: Normalization,
    w0: np.ndarray,
) -> str:
    """What a checkpoint must match: the settings the trajectory depends on (all but
    ``max_iter`` and ``tol``; the objective and ``alpha`` among them), the data (its blocks
    and the normalisation the blocks subtracted) and the start ``w0`` (which covers
    ``seed``, ``init_scale`` and a warm start's model)."""
    norm = normalization
    return fingerprint_of(
        {
            "settings": settings,
            "data": data_summary,
            "normalization": [
                hashlib.sha256(np.ascontiguousarray(norm.item_means).tobytes()).hexdigest(),
                repr(float(norm.global_mean)),
            ],
            "start": hashlib.sha256(np.ascontiguousarray(w0).tobytes()).hexdigest(),
        }
    )


def warm_start_parameters(
    previous: CFModel, layout: Layout, index: IdIndex, w0: np.ndarray
) -> np.ndarray:
    """``w0`` with the rows of the users and items ``previous`` knows (matched by raw id)
    replaced by their fitted features and biases; the others keep their random start.

    Raises :class:`~spark_cf.errors.ModelError` when the ranks differ.
    """
    from spark_cf.errors import ModelError

    if previous.rank != layout.rank:
        raise ModelError(
            f"the warm start's model (train.warm_start, or initial_model) has rank "
            f"{previous.rank}, this fit's model.rank (rank) = {layout.rank}; use the same "
            f"rank, or start cold (train.warm_start = '', initial_model=None)"
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
        "warm start: %d of %d users and %d of %d items carried over%s",
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


def warn_reg(reg: float, num_ratings: int, num_users: int, num_items: int, key: str) -> bool:
    """Log a warning when the regularisation ``reg`` (named ``key`` in the message) is on
    ALS's per-rating scale rather than ours; returns whether it warned.

    Our lambda weighs the summed cost, ALS's ``regParam`` each row's ratings, so our
    lambda acts like ALS's ``lambda / n`` on a row with ``n`` ratings. With ``n`` the mean
    ratings per row (users and items together), ``reg / n`` below
    :data:`ALS_SCALE_REG` (ALS's smallest usual value) leaves the model nearly
    unregularised: typically ALS's ``regParam = 0.1`` copied as it is.
    """
    rows = num_users + num_items
    if reg <= 0 or not rows or not num_ratings:
        return False
    per_row = 2.0 * num_ratings / rows
    if reg / per_row >= ALS_SCALE_REG:
        return False
    log.warning(
        "%s = %g regularises the summed cost, not each rating as ALS's regParam does: with "
        "%.1f ratings per user or item on average it weighs like ALS's regParam = %.2g, "
        "nearly no regularisation. For the effect of ALS's regParam r set %s to about "
        "r x %.1f (%.3g for ALS's 0.1), or choose it with CrossValidator",
        key,
        reg,
        per_row,
        reg / per_row,
        key,
        per_row,
        0.1 * per_row,
    )
    return True
