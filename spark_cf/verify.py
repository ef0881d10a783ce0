"""Parity: the Spark path against the single-node NumPy reference on the same data.

Two checks, both reported:

- *lockstep*: at every point the Spark run evaluates, the reference objective is evaluated
  too, and the largest relative differences of the cost and the gradient are kept. This
  checks the distributed computation itself at every iterate.
- *trajectory*: the reference trains on its own from the same initial parameters with the
  same optimiser code; the factors and every cost in the two histories are compared.

The two differ only in how the cost and gradients are summed (blocks with segment sums on
Spark, ``bincount`` over all ratings in NumPy), so they agree to rounding. Gradient
descent and the momentum methods keep rounding differences at that level for hundreds of
iterations; L-BFGS on this non-convex objective can amplify them (by about 10x every few
iterations while it leaves the saddle near the small random start), so its trajectory
check can exceed 1e-9 after 100 iterations while the lockstep check stays at 1e-15.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spark_cf.config import Config
from spark_cf.dataset import IS_VAL, TrainingData
from spark_cf.distributed import BlockedRatings
from spark_cf.indexing import ITEM_IDX, USER_IDX
from spark_cf.model import CFModel, fit, optimizer_settings
from spark_cf.optimizers import Evaluation
from spark_cf.params import Layout
from spark_cf.reference import ReferenceObjective, train_reference
from spark_cf.training import TrainResult
from spark_cf.validation import RATING

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-9
#: The trajectory tolerance for L-BFGS, whose path amplifies rounding (module docstring).
LBFGS_TRAJECTORY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ParityReport:
    """Largest differences between the Spark and the reference results."""

    iterations_spark: int
    iterations_reference: int
    max_abs_item_factors: float
    max_abs_user_factors: float
    max_abs_biases: float
    max_rel_cost: float
    lockstep_rel_cost: float
    lockstep_rel_grad: float
    tolerance: float
    trajectory_tolerance: float

    @property
    def lockstep_ok(self) -> bool:
        return max(self.lockstep_rel_cost, self.lockstep_rel_grad) <= self.tolerance

    @property
    def trajectory_ok(self) -> bool:
        return (
            self.iterations_spark == self.iterations_reference
            and max(
                self.max_abs_item_factors,
                self.max_abs_user_factors,
                self.max_abs_biases,
                self.max_rel_cost,
            )
            <= self.trajectory_tolerance
        )

    @property
    def ok(self) -> bool:
        return self.lockstep_ok and self.trajectory_ok

    def lines(self) -> list[str]:
        return [
            f"iterations          spark {self.iterations_spark}, reference "
            f"{self.iterations_reference}",
            f"max |dX|            {self.max_abs_item_factors:.3e}",
            f"max |dTheta|        {self.max_abs_user_factors:.3e}",
            f"max |d bias|        {self.max_abs_biases:.3e}",
            f"max rel. dJ         {self.max_rel_cost:.3e}",
            f"lockstep rel. dJ    {self.lockstep_rel_cost:.3e}",
            f"lockstep rel. dgrad {self.lockstep_rel_grad:.3e}",
            f"lockstep (tolerance {self.tolerance:.0e}): "
            f"{'OK' if self.lockstep_ok else 'MISMATCH'}",
            f"trajectory (tolerance {self.trajectory_tolerance:.0e}): "
            f"{'OK' if self.trajectory_ok else 'MISMATCH'}",
        ]


class Lockstep:
    """Wraps the Spark objective: evaluates the reference at the same points and keeps the
    largest relative differences; returns the Spark evaluation."""

    def __init__(self, spark_objective, reference_objective) -> None:
        self.spark_objective = spark_objective
        self.reference_objective = reference_objective
        self.rel_cost = 0.0
        self.rel_grad = 0.0
        self.evaluations = 0

    def __call__(self, w: np.ndarray) -> Evaluation:
        ours = self.spark_objective(w)
        theirs = self.reference_objective(w)
        self.evaluations += 1
        self.rel_cost = max(
            self.rel_cost, abs(ours.cost - theirs.cost) / max(abs(theirs.cost), 1e-300)
        )
        scale = max(float(np.max(np.abs(theirs.grad))), 1e-300)
        self.rel_grad = max(self.rel_grad, float(np.max(np.abs(ours.grad - theirs.grad))) / scale)
        return ours


def reference_for(data: TrainingData, cfg: Config) -> tuple[TrainResult, Layout]:
    """Train the NumPy reference on the same ratings, on its own (its own normalisation)."""
    a = data.arrays()
    train = ~a[IS_VAL]
    items, users, y = a[ITEM_IDX], a[USER_IDX], a[RATING]
    m, t = cfg.model, cfg.train
    result, layout, _ = train_reference(
        items[train],
        users[train],
        y[train],
        data.index.num_items,
        data.index.num_users,
        rank=m.rank,
        reg=m.reg,
        optimizer=t.optimizer,
        settings=optimizer_settings(t),
        max_iter=t.max_iter,
        tol=t.tol,
        init_scale=m.init_scale,
        seed=m.seed,
        biases=m.biases,
        mean_normalization=m.mean_normalization,
        divergence_patience=t.divergence_patience,
        validation=(items[~train], users[~train], y[~train]),
    )
    return result, layout


def lockstep_reference(data: TrainingData, cfg: Config) -> ReferenceObjective:
    """The reference objective on the Spark path's normalised ratings (for :class:`Lockstep`)."""
    a = data.arrays()
    train = ~a[IS_VAL]
    items, users, y = a[ITEM_IDX], a[USER_IDX], a[RATING]
    offsets = data.normalization.offsets(items)
    layout = Layout(data.index.num_items, data.index.num_users, cfg.model.rank, cfg.model.biases)
    y_norm = y - offsets
    return ReferenceObjective(
        layout,
        items[train],
        users[train],
        y_norm[train],
        cfg.model.reg,
        (items[~train], users[~train], y_norm[~train]),
    )


def compare(
    model: CFModel,
    spark_result: TrainResult,
    reference: tuple[TrainResult, Layout],
    lockstep: Lockstep,
    tolerance: float = DEFAULT_TOLERANCE,
    trajectory_tolerance: float | None = None,
) -> ParityReport:
    """Compare a Spark-trained model and its history with the reference's."""
    ref_result, layout = reference
    w = ref_result.w
    ours = [h["cost"] for h in spark_result.history]
    theirs = [h["cost"] for h in ref_result.history]
    rel = max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(ours, theirs))
    bias_diff = 0.0
    if model.item_bias is not None and model.user_bias is not None:
        bias_diff = max(
            float(np.max(np.abs(model.item_bias - layout.item_bias(w)))),
            float(np.max(np.abs(model.user_bias - layout.user_bias(w)))),
        )
    return ParityReport(
        iterations_spark=spark_result.iterations,
        iterations_reference=ref_result.iterations,
        max_abs_item_factors=float(np.max(np.abs(model.item_factors - layout.X(w)))),
        max_abs_user_factors=float(np.max(np.abs(model.user_factors - layout.Theta(w)))),
        max_abs_biases=bias_diff,
        max_rel_cost=float(rel),
        lockstep_rel_cost=lockstep.rel_cost,
        lockstep_rel_grad=lockstep.rel_grad,
        tolerance=tolerance,
        trajectory_tolerance=tolerance if trajectory_tolerance is None else trajectory_tolerance,
    )


def verify(
    data: TrainingData,
    cfg: Config,
    tolerance: float = DEFAULT_TOLERANCE,
    trajectory_tolerance: float | None = None,
    *,
    blocks: BlockedRatings | None = None,
    shared=None,
) -> ParityReport:
    """Train on Spark (checked in lockstep) and with the reference alone, and compare.

    ``blocks`` reuses cached blocks; ``shared`` is a proxy of
    :class:`~spark_cf.distributed.SharedEvaluations` to evaluate through (the parity
    matrix runs several trainings per Spark job that way).

    ``trajectory_tolerance`` defaults to ``tolerance``, and for L-BFGS to
    ``max(tolerance, LBFGS_TRAJECTORY_TOLERANCE)``.
    """
    if trajectory_tolerance is None:
        trajectory_tolerance = tolerance
        if cfg.train.optimizer == "lbfgs":
            trajectory_tolerance = max(tolerance, LBFGS_TRAJECTORY_TOLERANCE)
    reference_objective = lockstep_reference(data, cfg)
    wrapped: list[Lockstep] = []

    def wrap(objective):
        wrapped.append(Lockstep(shared or objective, reference_objective))
        return wrapped[0]

    model, result = fit(data, cfg.model, cfg.train, wrap_objective=wrap, blocks=blocks)
    report = compare(
        model, result, reference_for(data, cfg), wrapped[0], tolerance, trajectory_tolerance
    )
    for line in report.lines():
        log.info("parity: %s", line)
    return report
