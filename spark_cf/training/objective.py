"""Which cost training minimises: the course's cost on ratings, or the ranking cost.

``ratings`` (the default) is the course's cost over the rated pairs only
(:mod:`spark_cf.training.loop`). ``ranking`` is the implicit-feedback cost of Hu, Koren
and Volinsky (2008), the one MLlib ALS minimises with ``implicitPrefs`` (here on the
summed cost, like ours)::

    J = 1/2 sum_{all (u, i)} c_ui (p_ui - s_ui)^2 + reg/2 (sum X^2 + sum Theta^2)

with ``s_ui = theta_u . x_i`` (no biases, no normalisation), and for a rated training pair
``p = 1``, ``c = 1 + alpha r`` (``r`` the raw rating or count as given); ``p = 0``, ``c = 1``
for every other pair, held-out ones included.

The sum over all pairs is never formed. It is split as::

    J = 1/2 sum_all s^2  +  1/2 sum_rated [c (1 - s)^2 - s^2]  +  reg term

The first part is the Gramian identity ``sum_all s^2 = sum(G_X o G_Theta)`` with the k x k
Gramians ``G_X = X^T X``, ``G_Theta = Theta^T Theta`` (:func:`all_pairs_term`); the second
visits only the rated pairs, block by block (:mod:`spark_cf.training.kernel`).

The held-out "RMSE" of a ranking model is ``sqrt(mean (1 - s)^2)`` over the held-out pairs:
how far their scores are from preference 1 (the training one likewise over the training
pairs). No Spark import here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATINGS = "ratings"
RANKING = "ranking"
OBJECTIVES = (RATINGS, RANKING)


@dataclass(frozen=True)
class CostSpec:
    """The objective (``ratings`` or ``ranking``) and, for ``ranking``, its confidence
    weight ``alpha`` (``c = 1 + alpha r``). Validated on construction.

    Raises
    ------
    ValueError
        ``objective`` is not one of :data:`OBJECTIVES`, or ``alpha`` is negative or not
        finite.
    """

    objective: str = RATINGS
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective = {self.objective!r}: expected one of {', '.join(OBJECTIVES)}"
            )
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha = {self.alpha!r}: expected a finite number >= 0")

    @property
    def ranking(self) -> bool:
        return self.objective == RANKING

    def check_biases(self, biases: bool) -> None:
        """Raise ValueError when ``biases`` is asked of the ranking objective (its score is
        ``theta_u . x_i`` alone)."""
        if self.ranking and biases:
            raise ValueError(
                "biases = True with objective = 'ranking': the ranking objective scores "
                "theta_u . x_i without biases; set biases = False"
            )


#: the course's cost, the default
RATINGS_COST = CostSpec()


def all_pairs_term(X: np.ndarray, Theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``1/2 sum_{all (u, i)} (theta_u . x_i)^2`` and its gradients, from the Gramians.

    ``sum_all s^2 = sum(G_X o G_Theta)`` with ``G_X = X^T X`` and ``G_Theta = Theta^T Theta``;
    the gradients are ``X G_Theta`` (items) and ``Theta G_X`` (users). Plain NumPy in a
    fixed order, so deterministic. It is one k x k aggregate per evaluation, computed where
    X and Theta are (today the driver); when Theta is partitioned onto the executors
    (a later issue), ``G_Theta`` is summed there instead.

    Returns
    -------
    (cost, dX, dTheta)
    """
    G_X = X.T @ X
    G_T = Theta.T @ Theta
    return 0.5 * float(np.sum(G_X * G_T)), X @ G_T, Theta @ G_X
