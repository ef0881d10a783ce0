"""The single-node NumPy reference: the same objective, written independently of the kernel.

The Spark path computes its gradients block by block with sorted segment sums
(:mod:`spark_cf.training.kernel`); this module sums them over all ratings at once with weighted
``numpy.bincount``, so each checks the other. No Spark import here.

The objective, gradients and update rules are documented in :mod:`spark_cf.training.loop`.
The ranking objective (:mod:`spark_cf.training.objective`) is written here in its dense
form over all (item, user) pairs (:func:`ranking_cost_and_gradients`), not with the
kernel's split into rated pairs and Gramians: small data only.
"""

from __future__ import annotations

import numpy as np

from spark_cf.model.normalization import Normalization
from spark_cf.model.scoring import item_offsets, score_pairs
from spark_cf.training.loop import Checkpointing, TrainResult, fingerprint_of, minimize
from spark_cf.training.objective import RATINGS, CostSpec
from spark_cf.training.optimizers import Evaluation, OptimizerSettings, make_optimizer
from spark_cf.training.params import Layout, initial_parameters, row_preconditioner


def _segment_sums(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """``out[r] = sum of weights[n] over n with index[n] == r``; weights may be 2-D."""
    if weights.ndim == 1:
        return np.bincount(index, weights=weights, minlength=size)
    out = np.empty((size, weights.shape[1]))
    for col in range(weights.shape[1]):
        out[:, col] = np.bincount(index, weights=weights[:, col], minlength=size)
    return out


def cost_and_gradients(
    X: np.ndarray,
    Theta: np.ndarray,
    item_idx: np.ndarray,
    user_idx: np.ndarray,
    y: np.ndarray,
    reg: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """The course's regularised cost and its gradients for ratings given as arrays.

    Parameters
    ----------
    X : (num_items, rank) item features.
    Theta : (num_users, rank) user parameters.
    item_idx, user_idx : dense 0-based indices of the rated pairs.
    y : the ratings (already normalised: no mean normalisation is done here).
    reg : the regularisation weight lambda.

    Returns
    -------
    (J, dX, dTheta)
    """
    item_idx = np.asarray(item_idx, dtype=np.int64)
    user_idx = np.asarray(user_idx, dtype=np.int64)
    err = np.sum(X[item_idx] * Theta[user_idx], axis=1) - np.asarray(y, dtype=np.float64)
    J = 0.5 * float(err @ err) + 0.5 * reg * (float(np.sum(X * X)) + float(np.sum(Theta * Theta)))
    dX = _segment_sums(item_idx, err[:, None] * Theta[user_idx], X.shape[0]) + reg * X
    dTheta = _segment_sums(user_idx, err[:, None] * X[item_idx], Theta.shape[0]) + reg * Theta
    return J, dX, dTheta


def biased_cost_and_gradients(
    X: np.ndarray,
    Theta: np.ndarray,
    item_bias: np.ndarray,
    user_bias: np.ndarray,
    item_idx: np.ndarray,
    user_idx: np.ndarray,
    y: np.ndarray,
    reg: float,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The biased variant: prediction ``theta_j . x_i + b_i + b_u`` on centred ratings.

    Returns ``(J, dX, dTheta, d_item_bias, d_user_bias)``; every parameter carries
    ``reg/2`` times its square in ``J``.
    """
    item_idx = np.asarray(item_idx, dtype=np.int64)
    user_idx = np.asarray(user_idx, dtype=np.int64)
    pred = np.sum(X[item_idx] * Theta[user_idx], axis=1) + item_bias[item_idx] + user_bias[user_idx]
    err = pred - np.asarray(y, dtype=np.float64)
    squares = sum(float(np.sum(a * a)) for a in (X, Theta, item_bias, user_bias))
    J = 0.5 * float(err @ err) + 0.5 * reg * squares
    dX = _segment_sums(item_idx, err[:, None] * Theta[user_idx], X.shape[0]) + reg * X
    dTheta = _segment_sums(user_idx, err[:, None] * X[item_idx], Theta.shape[0]) + reg * Theta
    dbi = _segment_sums(item_idx, err, X.shape[0]) + reg * item_bias
    dbu = _segment_sums(user_idx, err, Theta.shape[0]) + reg * user_bias
    return J, dX, dTheta, dbi, dbu


def ranking_cost_and_gradients(
    X: np.ndarray,
    Theta: np.ndarray,
    item_idx: np.ndarray,
    user_idx: np.ndarray,
    r: np.ndarray,
    reg: float,
    alpha: float,
    item_bias: np.ndarray | None = None,
    user_bias: np.ndarray | None = None,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The ranking (implicit-feedback) cost and its gradients, dense over all pairs.

    ``P`` (preferences) and ``C`` (confidences) are ``num_items x num_users``: ``P = 1``,
    ``C = 1 + alpha r`` on the given (training) pairs, ``P = 0``, ``C = 1`` elsewhere;
    with the scores ``S = X Theta^T`` (``+ b_item[:, None] + b_user[None, :]`` when the
    biases are given) and ``E = C o (P - S)``::

        J = 1/2 sum C o (P - S)^2 + reg/2 (sum X^2 + sum Theta^2 [+ sum b_item^2 + sum b_user^2])
        dX = -E Theta + reg X,   dTheta = -E^T X + reg Theta
        d b_item = -(row sums of E) + reg b_item,   d b_user = -(column sums of E) + reg b_user

    Parameters
    ----------
    X, Theta : item features, user parameters.
    item_idx, user_idx : the rated training pairs (each pair once).
    r : their raw values (ratings or counts).
    reg, alpha : the regularisation weight and the confidence weight.
    item_bias, user_bias : the biases, or None (both) for the model without.

    Returns
    -------
    (J, dX, dTheta, d_item_bias, d_user_bias)
        The bias gradients are None without biases.
    """
    item_idx = np.asarray(item_idx, dtype=np.int64)
    user_idx = np.asarray(user_idx, dtype=np.int64)
    biased = item_bias is not None and user_bias is not None
    P = np.zeros((X.shape[0], Theta.shape[0]))
    C = np.ones_like(P)
    P[item_idx, user_idx] = 1.0
    C[item_idx, user_idx] = 1.0 + alpha * np.asarray(r, dtype=np.float64)
    S = X @ Theta.T
    params = [X, Theta]
    if biased:
        S = S + item_bias[:, None] + user_bias[None, :]
        params += [item_bias, user_bias]
    D = P - S
    E = C * D
    J = 0.5 * float(np.sum(E * D)) + 0.5 * reg * sum(float(np.sum(a * a)) for a in params)
    dX, dTheta = -E @ Theta + reg * X, -E.T @ X + reg * Theta
    if not biased:
        return J, dX, dTheta, None, None
    return J, dX, dTheta, -E.sum(axis=1) + reg * item_bias, -E.sum(axis=0) + reg * user_bias


def curvature_diagonal(
    layout: Layout,
    w: np.ndarray,
    item_idx: np.ndarray,
    user_idx: np.ndarray,
    r: np.ndarray,
    reg: float,
    cost: CostSpec,
) -> np.ndarray:
    """The diagonal of the Gauss-Newton curvature at ``w``, laid out like ``w``.

    The ratings objective: item i's feature f gets ``sum_{u rated i} theta_uf^2 + reg``,
    user u's ``sum_{i rated by u} x_if^2 + reg``, each bias its number of ratings
    ``+ reg``. The ranking one, dense over all pairs with the confidences ``C``
    (``1 + alpha r`` on the rated pairs, 1 elsewhere): ``C Theta^2``, ``C^T X^2`` and
    the row and column sums of ``C`` for the biases, ``+ reg``.
    """
    X, Theta = layout.X(w), layout.Theta(w)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    user_idx = np.asarray(user_idx, dtype=np.int64)
    if cost.ranking:
        C = np.ones((layout.num_items, layout.num_users))
        C[item_idx, user_idx] += cost.alpha * np.asarray(r, dtype=np.float64)
        cX, cT = C @ (Theta * Theta), C.T @ (X * X)
        cbi, cbu = C.sum(axis=1), C.sum(axis=0)
    else:
        cX = _segment_sums(item_idx, Theta[user_idx] ** 2, layout.num_items)
        cT = _segment_sums(user_idx, X[item_idx] ** 2, layout.num_users)
        cbi = np.bincount(item_idx, minlength=layout.num_items).astype(np.float64)
        cbu = np.bincount(user_idx, minlength=layout.num_users).astype(np.float64)
    if not layout.biases:
        cbi = cbu = None
    return layout.pack(cX, cT, cbi, cbu) + reg


def predict(
    layout: Layout,
    w: np.ndarray,
    item_idx: np.ndarray,
    user_idx: np.ndarray,
    normalization: Normalization | None = None,
) -> np.ndarray:
    """Predictions ``theta_j . x_i + b_j + b_i (+ mean_i + global_mean)`` for index arrays.

    The model's one scoring rule (:func:`spark_cf.model.scoring.score_pairs`, a shared
    model definition) on the parameters ``w``; ``normalization`` adds its offsets back
    (None: scores on the normalised scale, as the objective sees them).
    """
    means = normalization.item_means if normalization is not None else np.zeros(layout.num_items)
    centre = normalization.global_mean if normalization is not None else 0.0
    item_bias = layout.item_bias(w) if layout.biases else None
    user_bias = layout.user_bias(w) if layout.biases else None
    offsets = item_offsets(means, centre, item_bias)
    return score_pairs(layout.Theta(w), user_bias, layout.X(w), offsets, user_idx, item_idx)


def fit_normalization(
    item_idx: np.ndarray, y: np.ndarray, num_items: int, *, mean_normalization: bool, biases: bool
) -> Normalization:
    """Item means (course's model) or the global mean (biased model) of the training ratings.

    An item with no training rating (only held-out ones) gets the mean of all training
    ratings: with the course's 0 it would be predicted near 0 stars. With
    ``mean_normalization = false`` nothing is subtracted.

    Deliberately not :func:`spark_cf.data.prepare.exact_item_means`: float64 ``bincount``
    sums on one node, written apart from the Spark path's exact decimal sums, so that the
    reference's trajectory checks the production normalisation too (they agree to about
    1e-15, not to the bit).
    """
    zeros = np.zeros(num_items)
    if not mean_normalization or len(y) == 0:
        return Normalization(zeros, 0.0)
    if biases:
        return Normalization(zeros, float(np.mean(y)))
    counts = np.bincount(item_idx, minlength=num_items)
    sums = np.bincount(item_idx, weights=y, minlength=num_items)
    means = np.divide(sums, counts, out=np.full(num_items, float(np.mean(y))), where=counts > 0)
    return Normalization(means, 0.0)


class ReferenceObjective:
    """``f(w) -> Evaluation`` over all ratings at once, in NumPy (see :func:`cost_and_gradients`).

    ``y`` are the *normalised* training ratings; the optional validation arrays are scored
    for the history (their ratings normalised the same way) but never enter the gradient.
    With ``objective="ranking"`` (:func:`ranking_cost_and_gradients`) ``y`` are the raw
    values, and the history's squared errors are ``(1 - s)^2`` over the training and the
    held-out pairs.
    """

    def __init__(
        self,
        layout: Layout,
        item_idx: np.ndarray,
        user_idx: np.ndarray,
        y: np.ndarray,
        reg: float,
        validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        *,
        objective: str = RATINGS,
        alpha: float = 1.0,
        curvature: bool = False,
    ) -> None:
        self.cost = CostSpec(objective, alpha)
        #: whether each evaluation also returns the curvature's diagonal
        self.curvature = curvature
        self.layout = layout
        self.item_idx = np.asarray(item_idx, dtype=np.int64)
        self.user_idx = np.asarray(user_idx, dtype=np.int64)
        self.y = np.asarray(y, dtype=np.float64)
        self.reg = float(reg)
        self.validation = validation

    def __call__(self, w: np.ndarray) -> Evaluation:
        L = self.layout
        X, Theta = L.X(w), L.Theta(w)
        if self.cost.ranking:
            biases = (L.item_bias(w), L.user_bias(w)) if L.biases else ()
            J, dX, dT, dbi, dbu = ranking_cost_and_gradients(
                X, Theta, self.item_idx, self.user_idx, self.y, self.reg, self.cost.alpha, *biases
            )
            grad = L.pack(dX, dT, dbi, dbu)
        elif L.biases:
            J, dX, dT, dbi, dbu = biased_cost_and_gradients(
                X,
                Theta,
                L.item_bias(w),
                L.user_bias(w),
                self.item_idx,
                self.user_idx,
                self.y,
                self.reg,
            )
            grad = L.pack(dX, dT, dbi, dbu)
        else:
            J, dX, dT = cost_and_gradients(X, Theta, self.item_idx, self.user_idx, self.y, self.reg)
            grad = L.pack(dX, dT)
        err = predict(L, w, self.item_idx, self.user_idx) - self._target(self.y)
        val_sse, val_count = 0.0, 0
        if self.validation is not None and len(self.validation[2]):
            vi, vu, vy = self.validation
            verr = predict(L, w, vi, vu) - self._target(vy)
            val_sse, val_count = float(verr @ verr), len(vy)
        curv = None
        if self.curvature:
            curv = curvature_diagonal(
                L, w, self.item_idx, self.user_idx, self.y, self.reg, self.cost
            )
        return Evaluation(J, grad, float(err @ err), len(self.y), val_sse, val_count, curv)

    def _target(self, y: np.ndarray) -> np.ndarray:
        """What the history's errors are measured against: the ratings, or for the ranking
        objective the preference 1 of every rated pair."""
        return np.ones(len(y)) if self.cost.ranking else y


def train_reference(
    item_idx: np.ndarray,
    user_idx: np.ndarray,
    y: np.ndarray,
    num_items: int,
    num_users: int,
    *,
    rank: int,
    reg: float,
    optimizer: str = "gd",
    settings: OptimizerSettings | None = None,
    max_iter: int = 100,
    tol: float = 0.0,
    init_scale: float = 0.1,
    seed: int = 42,
    biases: bool = False,
    mean_normalization: bool = True,
    divergence_patience: int = 3,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    checkpoint: Checkpointing | None = None,
    objective: str = RATINGS,
    alpha: float = 1.0,
) -> tuple[TrainResult, Layout, Normalization]:
    """Fit the model on raw ratings given as index arrays, single node.

    Normalises ``y`` (item means, or the global mean with biases), starts from
    :func:`~spark_cf.training.params.initial_parameters`, and runs
    :func:`~spark_cf.training.loop.minimize`.
    ``validation`` holds raw ``(item_idx, user_idx, y)`` to score in the history.
    ``objective="ranking"`` (with ``alpha``) trains the ranking objective on the raw
    values instead: no normalisation (zero means and global mean), with or without
    ``biases``.
    """
    cost = CostSpec(objective, alpha)
    layout = Layout(num_items, num_users, rank, biases)
    norm = fit_normalization(
        item_idx,
        y,
        num_items,
        mean_normalization=mean_normalization and not cost.ranking,
        biases=biases,
    )
    y_norm = np.asarray(y, dtype=np.float64) - norm.offsets(item_idx)
    val = None
    if validation is not None:
        vi, vu, vy = validation
        val = (vi, vu, np.asarray(vy, dtype=np.float64) - norm.offsets(vi))
    w0 = initial_parameters(layout, init_scale=init_scale, seed=seed)
    counts = (
        np.bincount(item_idx, minlength=num_items),
        np.bincount(user_idx, minlength=num_users),
    )
    opt = make_optimizer(
        optimizer,
        settings or OptimizerSettings(),
        layout.size,
        row_preconditioner(layout, *counts),
    )
    f = ReferenceObjective(
        layout,
        item_idx,
        user_idx,
        y_norm,
        reg,
        val,
        objective=cost.objective,
        alpha=cost.alpha,
        curvature=opt.needs_curvature,
    )
    fingerprint = fingerprint_of(
        {
            "n": len(y),
            "sum": float(np.sum(y)),
            "rank": rank,
            "reg": reg,
            "optimizer": optimizer,
            "seed": seed,
            "biases": biases,
            "objective": cost.objective,
            "alpha": cost.alpha,
            "path": "reference",
        }
    )
    result = minimize(
        f,
        w0,
        opt,
        max_iter=max_iter,
        tol=tol,
        divergence_patience=divergence_patience,
        checkpointer=checkpoint,
        fingerprint=fingerprint,
    )
    return result, layout, norm


def numerical_gradient(f, w: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar ``f`` at ``w`` (the course's gradient check)."""
    w = np.array(w, dtype=np.float64, copy=True)
    grad = np.empty_like(w)
    for n in range(w.size):
        keep = w[n]
        w[n] = keep + eps
        plus = f(w)
        w[n] = keep - eps
        minus = f(w)
        w[n] = keep
        grad[n] = (plus - minus) / (2 * eps)
    return grad
