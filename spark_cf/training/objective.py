"""Which cost training minimises: the course's cost on ratings, or the ranking cost.

``ratings`` (the default) is the course's cost over the rated pairs only
(:mod:`spark_cf.training.loop`). ``ranking`` is the implicit-feedback cost of Hu, Koren
and Volinsky (2008), the one MLlib ALS minimises with ``implicitPrefs`` (here on the
summed cost, like ours)::

    J = 1/2 sum_{all (u, i)} c_ui (p_ui - s_ui)^2 + reg/2 |w|^2

with ``s_ui = theta_u . x_i`` (no normalisation), and for a rated training pair ``p = 1``,
``c = 1 + alpha r`` (``r`` the raw rating or count as given); ``p = 0``, ``c = 1`` for every
other pair, held-out ones included. ``|w|^2`` is the sum of the squares of every parameter.

With biases (``biases = True``) the score is ``s_ui = theta_u . x_i + b_i + b_u``, the
biases regularised with ``reg`` like the features. The item bias expresses popularity
directly (how much an item is preferred over all users); the user bias how much a user
prefers items in general, which does not change that user's order.

The sum over all pairs is never formed. It is split as::

    J = 1/2 sum_all s^2  +  1/2 sum_rated [c (1 - s)^2 - s^2]  +  reg term

The first part is the Gramian identity ``sum_all s^2 = sum(G_X o G_Theta)`` with the
Gramians ``G_X = X^T X``, ``G_Theta = Theta^T Theta`` (:func:`all_pairs_term`; k x k, or
with biases (k + 2) x (k + 2) of the augmented ``[X, b_item, 1]`` and ``[Theta, 1, b_user]``,
whose products are the biased scores); the second visits only the rated pairs, block by
block (:mod:`spark_cf.training.kernel`).

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
    weight ``alpha`` (``c = 1 + alpha r``). Validated on construction. Both objectives
    take biases or not (the model's ``biases``; see the module docstring).

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


#: the course's cost, the default
RATINGS_COST = CostSpec()


def all_pairs_term(
    X: np.ndarray,
    Theta: np.ndarray,
    item_bias: np.ndarray | None = None,
    user_bias: np.ndarray | None = None,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``1/2 sum_{all (u, i)} s_ui^2`` and its gradients, from the Gramians.

    ``s_ui = theta_u . x_i`` (``+ b_i + b_u`` when the biases are given). One formula for
    both: with biases the matrices are augmented, ``X~ = [X, b_item, 1]`` (num_items x
    (k + 2)) and ``Theta~ = [Theta, 1, b_user]``, so that ``s = x~_i . theta~_u``; without,
    ``X~ = X`` and ``Theta~ = Theta``. Then ``sum_all s^2 = sum(G_X~ o G_Theta~)`` with
    ``G_X~ = X~^T X~`` and ``G_Theta~ = Theta~^T Theta~``, and the gradients are
    ``X~ G_Theta~`` (items: dX its first k columns, d b_item column k) and
    ``Theta~ G_X~`` (users: dTheta its first k columns, d b_user column k + 1). Plain NumPy
    in a fixed order, so deterministic. It is one small aggregate per evaluation,
    computed where X and Theta are (today the driver); when Theta is partitioned onto the
    executors (a later issue), ``G_Theta~`` is summed there instead.

    Returns
    -------
    (cost, dX, dTheta, d_item_bias, d_user_bias)
        The bias gradients are None when the biases are not given.
    """
    biased = item_bias is not None and user_bias is not None
    k = X.shape[1]
    Xa, Ta = augmented_items(X, item_bias), augmented_users(Theta, user_bias)
    # einsum's own loops, not BLAS: a multithreaded BLAS sums in an order that depends on
    # its thread count (the driver of spark-submit on a cluster and of a local run differ),
    # and the model must be the same bits whatever the cores (about 2 ms for 16k x 12)
    G_X = gramian(Xa)
    G_T = gramian(Ta)
    dXa = np.einsum("ik,kl->il", Xa, G_T, optimize=False)
    dTa = np.einsum("ik,kl->il", Ta, G_X, optimize=False)
    cost = 0.5 * float(np.sum(G_X * G_T))
    if not biased:
        return cost, dXa, dTa, None, None
    return cost, dXa[:, :k], dTa[:, :k], dXa[:, k], dTa[:, k + 1]


def augmented_items(X: np.ndarray, item_bias: np.ndarray | None) -> np.ndarray:
    """``X~ = [X, b_item, 1]`` (``X`` itself without biases): see :func:`all_pairs_term`."""
    if item_bias is None:
        return X
    return np.column_stack([X, item_bias, np.ones(X.shape[0])])


def augmented_users(Theta: np.ndarray, user_bias: np.ndarray | None) -> np.ndarray:
    """``Theta~ = [Theta, 1, b_user]`` (``Theta`` itself without biases): with
    :func:`augmented_items`, ``x~_i . theta~_u`` is the biased score. Any range of the
    users gives its rows, so the executors build their blocks' part."""
    if user_bias is None:
        return Theta
    return np.column_stack([Theta, np.ones(Theta.shape[0]), user_bias])


def gramian(A: np.ndarray) -> np.ndarray:
    """``A^T A`` with einsum's own loops, not BLAS: the same bits whatever the BLAS
    threads (see :func:`all_pairs_term`)."""
    return np.einsum("ik,il->kl", A, A, optimize=False)


def all_pairs_curvature(
    X: np.ndarray, Theta: np.ndarray, biased: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The diagonal of the Gauss-Newton curvature of :func:`all_pairs_term`, per row.

    The curvature of ``1/2 sum_all s^2`` in item i's row ``x~_i`` is ``G_Theta~`` for every
    item (and ``G_X~`` in every user's row), so its diagonal is the same for all rows:
    ``sum_u theta_uf^2`` for feature f of an item (``num_users`` for its bias, the
    column of ones), and ``sum_i x_if^2`` for a user's (``num_items`` for its bias).

    Returns
    -------
    (item_row, user_row)
        Arrays of length k, or k + 1 with biases (the bias last).
    """
    # einsum's loops: the same bits whatever the BLAS threads (see all_pairs_term)
    item_row = np.einsum("uk,uk->k", Theta, Theta, optimize=False)
    user_row = np.einsum("ik,ik->k", X, X, optimize=False)
    if biased:
        item_row = np.append(item_row, float(Theta.shape[0]))
        user_row = np.append(user_row, float(X.shape[0]))
    return item_row, user_row


def add_rows_curvature(layout, curvature: np.ndarray, item_row: np.ndarray, user_row: np.ndarray):
    """Add ``item_row`` to every item's and ``user_row`` to every user's part of the flat
    ``curvature`` (laid out by ``layout``: features, then the bias when it has biases)."""
    k = layout.rank
    layout.X(curvature)[:] += item_row[:k]
    layout.Theta(curvature)[:] += user_row[:k]
    if layout.biases:
        layout.item_bias(curvature)[:] += item_row[k]
        layout.user_bias(curvature)[:] += user_row[k]
