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
iterations, so for them the trajectory check compares the factors themselves. L-BFGS on
this non-convex objective amplifies them (by about 10x every few iterations while it
leaves the saddle near the small random start), and the factors are not identifiable:
any invertible ``R`` turns ``(X, Theta)`` into ``(X R, Theta R^-T)`` with the same
predictions, and any rotation keeps the cost too. Two L-BFGS runs that differ by rounding
can therefore end on factors that differ by 1e-2 (seen on ml-latest-small after 160
iterations) while their predictions and costs agree. For L-BFGS the trajectory check
judges what is identifiable, the predictions on every rated pair and the cost at each
iteration both runs made and at their ends, and reports the factor differences without
judging them; its stopping iteration may differ too, since the relative-decrease stop
rule fires within rounding of its threshold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spark_cf.config import AUTO, Config, fit_arguments
from spark_cf.data.prepare import TrainingData
from spark_cf.errors import ConfigError
from spark_cf.model.cf_model import CFModel
from spark_cf.reference.numpy_cf import ReferenceObjective, train_reference
from spark_cf.schema import IS_VAL, ITEM_IDX, RATING, USER_IDX
from spark_cf.training.blocks import BlockedRatings
from spark_cf.training.fit import fit, optimizer_settings
from spark_cf.training.loop import TrainResult
from spark_cf.training.objective import RATINGS
from spark_cf.training.optimizers import Evaluation, needs_curvature
from spark_cf.training.params import Layout

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-9
#: How far L-BFGS's factors stay from the reference's for 100 iterations on the small
#: generated sets of the parity tests (1e-8 to 1.1e-6 on structured data, the largest with
#: the curvature preconditioner; 3e-5 on random data: see the module docstring for why no
#: such bound holds in general).
LBFGS_TRAJECTORY_TOLERANCE = 1e-5
#: L-BFGS's trajectory check, which judges what is identifiable (module docstring): the
#: relative difference of the costs (at each iteration both runs made, and at their ends)
#: and the root mean square difference of the predictions on the rated pairs, in rating
#: units. Measured after 300 iterations: ml-latest-small (course model, reg 10) 1.6e-6 and
#: 3.3e-3; MovieTweetings (biased, reg 20) 1.2e-5 (1.5e-6 at the end) and 2.8e-3.
LBFGS_COST_TOLERANCE = 1e-4
LBFGS_PREDICTION_TOLERANCE = 1e-2
#: Optimisers whose independent trajectories stay within rounding, so that their factors
#: can be compared directly (module docstring).
FACTOR_IDENTIFIABLE = frozenset({"gd", "momentum", "nesterov", "adam"})


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
    max_abs_prediction: float = 0.0
    rms_prediction: float = 0.0
    rel_final_cost: float = 0.0
    final_val_rmse: tuple[float, float] = (float("nan"), float("nan"))
    factors_judged: bool = True
    prediction_tolerance: float = 0.0
    #: L-BFGS's preconditioner (the curvature's diagonal), when the run used it
    lockstep_rel_curvature: float = 0.0

    @property
    def lockstep_ok(self) -> bool:
        worst = max(self.lockstep_rel_cost, self.lockstep_rel_grad, self.lockstep_rel_curvature)
        return worst <= self.tolerance

    @property
    def trajectory_ok(self) -> bool:
        costs = max(self.max_rel_cost, self.rel_final_cost)
        if not self.factors_judged:
            return (
                costs <= self.trajectory_tolerance
                and self.rms_prediction <= self.prediction_tolerance
            )
        factors = max(self.max_abs_item_factors, self.max_abs_user_factors, self.max_abs_biases)
        return (
            self.iterations_spark == self.iterations_reference
            and max(factors, costs, self.max_abs_prediction) <= self.trajectory_tolerance
        )

    @property
    def ok(self) -> bool:
        return self.lockstep_ok and self.trajectory_ok

    def _trajectory_rule(self) -> str:
        if self.factors_judged:
            return f"tolerance {self.trajectory_tolerance:.0e}"
        return (
            f"rel. dJ tolerance {self.trajectory_tolerance:.0e}, rms d prediction tolerance "
            f"{self.prediction_tolerance:.0e}"
        )

    def lines(self) -> list[str]:
        judged = "" if self.factors_judged else "  (not judged: see spark_cf.reference.verify)"
        return [
            f"iterations          spark {self.iterations_spark}, reference "
            f"{self.iterations_reference}",
            f"max |dX|            {self.max_abs_item_factors:.3e}{judged}",
            f"max |dTheta|        {self.max_abs_user_factors:.3e}{judged}",
            f"max |d bias|        {self.max_abs_biases:.3e}{judged}",
            f"max |d prediction|  {self.max_abs_prediction:.3e}",
            f"rms d prediction    {self.rms_prediction:.3e}",
            f"max rel. dJ         {self.max_rel_cost:.3e}",
            f"final rel. dJ       {self.rel_final_cost:.3e}",
            f"final val. RMSE     spark {self.final_val_rmse[0]:.6f}, reference "
            f"{self.final_val_rmse[1]:.6f}",
            f"lockstep rel. dJ    {self.lockstep_rel_cost:.3e}",
            f"lockstep rel. dgrad {self.lockstep_rel_grad:.3e}",
            f"lockstep rel. dcurv {self.lockstep_rel_curvature:.3e}",
            f"lockstep (tolerance {self.tolerance:.0e}): "
            f"{'OK' if self.lockstep_ok else 'MISMATCH'}",
            f"trajectory ({self._trajectory_rule()}): {'OK' if self.trajectory_ok else 'MISMATCH'}",
        ]


class Lockstep:
    """Wraps the Spark objective: evaluates the reference at the same points and keeps the
    largest relative differences; returns the Spark evaluation."""

    def __init__(self, spark_objective, reference_objective) -> None:
        self.spark_objective = spark_objective
        self.reference_objective = reference_objective
        self.rel_cost = 0.0
        self.rel_grad = 0.0
        self.rel_curvature = 0.0
        self.evaluations = 0

    def __call__(self, w: np.ndarray) -> Evaluation:
        ours = self.spark_objective(w)
        theirs = self.reference_objective(w)
        self.evaluations += 1
        self.rel_cost = max(
            self.rel_cost, abs(ours.cost - theirs.cost) / max(abs(theirs.cost), 1e-300)
        )
        # relative to the terms summed: near a minimum the gradient is the difference of
        # its data part and reg * w, far smaller than either, and its last digits are the
        # rounding of those (L-BFGS with the curvature gets there within 100 iterations)
        reg = getattr(self.reference_objective, "reg", 0.0)
        scale = max(float(np.max(np.abs(theirs.grad))), reg * float(np.max(np.abs(w))), 1e-300)
        self.rel_grad = max(self.rel_grad, float(np.max(np.abs(ours.grad - theirs.grad))) / scale)
        if theirs.curvature is not None:
            if ours.curvature is None:
                raise ValueError("lockstep: the Spark objective did not compute the curvature")
            diff = np.max(np.abs(ours.curvature - theirs.curvature) / theirs.curvature)
            self.rel_curvature = max(self.rel_curvature, float(diff))
        return ours


def reference_for(
    data: TrainingData, cfg: Config, *, objective: str = RATINGS, alpha: float = 1.0
) -> tuple[TrainResult, Layout]:
    """Train the NumPy reference on the same ratings, on its own (its own normalisation;
    none for the ranking objective)."""
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
        objective=objective,
        alpha=alpha,
    )
    return result, layout


def lockstep_reference(
    data: TrainingData, cfg: Config, *, objective: str = RATINGS, alpha: float = 1.0
) -> ReferenceObjective:
    """The reference objective on the Spark path's normalised ratings (for :class:`Lockstep`);
    on the raw ones for the ranking objective, as :func:`~spark_cf.training.fit.fit` uses."""
    a = data.arrays()
    train = ~a[IS_VAL]
    items, users, y = a[ITEM_IDX], a[USER_IDX], a[RATING]
    offsets = data.normalization.offsets(items) if objective == RATINGS else 0.0
    layout = Layout(data.index.num_items, data.index.num_users, cfg.model.rank, cfg.model.biases)
    y_norm = y - offsets
    return ReferenceObjective(
        layout,
        items[train],
        users[train],
        y_norm[train],
        cfg.model.reg,
        (items[~train], users[~train], y_norm[~train]),
        objective=objective,
        alpha=alpha,
        curvature=needs_curvature(cfg.train.optimizer, optimizer_settings(cfg.train)),
    )


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def compare(
    model: CFModel,
    spark_result: TrainResult,
    reference: tuple[TrainResult, Layout],
    lockstep: Lockstep,
    tolerance: float = DEFAULT_TOLERANCE,
    trajectory_tolerance: float | None = None,
    *,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    factors_judged: bool = True,
    prediction_tolerance: float = LBFGS_PREDICTION_TOLERANCE,
) -> ParityReport:
    """Compare a Spark-trained model and its history with the reference's.

    ``pairs`` (item indices, user indices): where the predictions of the two are compared
    (the model's scoring rule against ``theta . x`` + biases + offsets of the reference,
    which uses the model's own normalisation offsets); None compares none.
    """
    ref_result, layout = reference
    w = ref_result.w
    ours = [h["cost"] for h in spark_result.history]
    theirs = [h["cost"] for h in ref_result.history]
    rel = max(_rel(a, b) for a, b in zip(ours, theirs))
    prediction_diff = prediction_rms = 0.0
    if pairs is not None and len(pairs[0]):
        items, users = pairs
        ref_model = CFModel(
            model.index,
            layout.X(w),
            layout.Theta(w),
            model.item_means,
            model.global_mean,
            layout.item_bias(w) if model.item_bias is not None else None,
            layout.user_bias(w) if model.user_bias is not None else None,
        )
        diff = model.predict_indices(users, items) - ref_model.predict_indices(users, items)
        prediction_diff = float(np.max(np.abs(diff)))
        prediction_rms = float(np.sqrt(np.mean(diff**2)))
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
        lockstep_rel_curvature=lockstep.rel_curvature,
        tolerance=tolerance,
        trajectory_tolerance=tolerance if trajectory_tolerance is None else trajectory_tolerance,
        max_abs_prediction=prediction_diff,
        rms_prediction=prediction_rms,
        rel_final_cost=_rel(ours[-1], theirs[-1]),
        final_val_rmse=(
            float(spark_result.history[-1].get("val_rmse", float("nan"))),
            float(ref_result.history[-1].get("val_rmse", float("nan"))),
        ),
        factors_judged=factors_judged,
        prediction_tolerance=prediction_tolerance,
    )


def verify(
    data: TrainingData,
    cfg: Config,
    tolerance: float = DEFAULT_TOLERANCE,
    trajectory_tolerance: float | None = None,
    *,
    blocks: BlockedRatings | None = None,
    shared=None,
    objective: str = RATINGS,
    alpha: float = 1.0,
) -> ParityReport:
    """Train on Spark (checked in lockstep) and with the reference alone, and compare.

    ``objective`` and ``alpha`` choose the cost (:func:`~spark_cf.training.fit.fit`'s, not
    in ``cfg``) for both. ``blocks`` reuses cached blocks; ``shared`` is a proxy of
    :class:`~spark_cf.training.shared.SharedEvaluations` to evaluate through (the parity
    matrix runs several trainings per Spark job that way).

    ``trajectory_tolerance`` defaults to ``tolerance``; for L-BFGS, whose factors are not
    judged, to ``max(tolerance, LBFGS_COST_TOLERANCE)`` on the costs, with
    ``LBFGS_PREDICTION_TOLERANCE`` on the predictions.
    """
    if cfg.model.reg == AUTO:
        raise ConfigError(
            'model.reg = "auto": the parity check trains one model; give model.reg a '
            "number (--set model.reg=10)"
        )
    factors_judged = cfg.train.optimizer in FACTOR_IDENTIFIABLE
    if trajectory_tolerance is None:
        trajectory_tolerance = tolerance
        if not factors_judged:
            trajectory_tolerance = max(tolerance, LBFGS_COST_TOLERANCE)
    chosen = {"objective": objective, "alpha": alpha}
    reference_objective = lockstep_reference(data, cfg, **chosen)
    wrapped: list[Lockstep] = []

    def wrap(objective):
        wrapped.append(Lockstep(shared or objective, reference_objective))
        return wrapped[0]

    model, result = fit(data, **fit_arguments(cfg), **chosen, wrap_objective=wrap, blocks=blocks)
    a = data.arrays()
    report = compare(
        model,
        result,
        reference_for(data, cfg, **chosen),
        wrapped[0],
        tolerance,
        trajectory_tolerance,
        pairs=(a[ITEM_IDX], a[USER_IDX]),
        factors_judged=factors_judged,
    )
    for line in report.lines():
        log.info("parity: %s", line)
    return report
