"""The NumPy reference: the course's published values, a dense independent form, the
finite-difference gradient check, and the optimisers on the reference path. No JVM."""

from __future__ import annotations

import numpy as np
import pytest

from spark_cf.reference.numpy_cf import (
    biased_cost_and_gradients,
    cost_and_gradients,
    fit_normalization,
    numerical_gradient,
    train_reference,
)
from spark_cf.training.optimizers import OptimizerSettings
from spark_cf.training.params import Layout, initial_parameters

# The course's small example: 4 movies x 3 users, 2 features.
Y = np.array([[16, 2, 3], [5, 11, 10], [9, 7, 6], [4, 14, 15]], dtype=float)
R = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 1], [1, 1, 0]])
PARAMS = np.arange(1, 15) / 10.0
GRAD_REG0 = [
    -16.188,
    -23.544,
    -5.159,
    -14.972,
    -21.438,
    -30.462,
    -6.566,
    -19.544,
    -3.423,
    -7.028,
    -3.414,
    -12.259,
    -16.060,
    -9.742,
]
GRAD_REG6 = [
    -15.588,
    -22.344,
    -3.359,
    -12.572,
    -18.438,
    -26.862,
    -2.366,
    -14.744,
    1.977,
    -1.028,
    3.186,
    -5.059,
    -8.260,
    -1.342,
]


def course_parameters() -> tuple[np.ndarray, np.ndarray]:
    """X (4x2) then Theta (3x2), unrolled column-major as in the course."""
    X = PARAMS[:8].reshape(4, 2, order="F")
    Theta = PARAMS[8:].reshape(3, 2, order="F")
    return X, Theta


def observed(R: np.ndarray, Y: np.ndarray):
    items, users = np.nonzero(R)
    return items, users, Y[items, users]


def unrolled(dX: np.ndarray, dTheta: np.ndarray) -> np.ndarray:
    return np.concatenate([dX.ravel(order="F"), dTheta.ravel(order="F")])


@pytest.mark.parametrize(
    ("reg", "cost", "grad"), [(0.0, 311.63, GRAD_REG0), (6.0, 342.08, GRAD_REG6)]
)
def test_course_values(reg, cost, grad):
    X, Theta = course_parameters()
    J, dX, dTheta = cost_and_gradients(X, Theta, *observed(R, Y), reg)
    assert J == pytest.approx(cost, abs=0.005)
    np.testing.assert_allclose(unrolled(dX, dTheta), grad, atol=0.0005)


def test_course_movie_rated_by_nobody():
    X, Theta = course_parameters()
    R3 = R.copy()
    R3[2, :] = 0
    J, _, _ = cost_and_gradients(X, Theta, *observed(R3, Y), 6.0)
    assert J == pytest.approx(331.08, abs=0.005)


def dense_masked(X, Theta, R, Y, reg):
    """The same objective in the dense masked form E = R * (X Theta^T - Y)."""
    E = R * (X @ Theta.T - Y)
    J = 0.5 * np.sum(E**2) + reg / 2 * (np.sum(X**2) + np.sum(Theta**2))
    return J, E @ Theta + reg * X, E.T @ X + reg * Theta


def random_problem(seed: int, items=7, users=5, rank=3, density=0.5):
    rng = np.random.default_rng(seed)
    R = (rng.random((items, users)) < density).astype(float)
    Y = rng.integers(1, 6, size=(items, users)).astype(float)
    X = rng.standard_normal((items, rank))
    Theta = rng.standard_normal((users, rank))
    return X, Theta, R, Y


@pytest.mark.parametrize("seed", range(5))
def test_matches_dense_masked_form(seed):
    X, Theta, R, Y = random_problem(seed)
    J, dX, dT = cost_and_gradients(X, Theta, *observed(R, Y), 1.5)
    J2, dX2, dT2 = dense_masked(X, Theta, R, Y, 1.5)
    assert J == pytest.approx(J2, rel=1e-13)
    np.testing.assert_allclose(dX, dX2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dT, dT2, rtol=1e-12, atol=1e-12)


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a + b))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("reg", [0.0, 1.5])
def test_gradient_check(seed, reg):
    X, Theta, R, Y = random_problem(seed)
    items, users, y = observed(R, Y)
    layout = Layout(X.shape[0], Theta.shape[0], X.shape[1])
    w = layout.pack(X, Theta)

    def J(v):
        return cost_and_gradients(layout.X(v), layout.Theta(v), items, users, y, reg)[0]

    _, dX, dT = cost_and_gradients(X, Theta, items, users, y, reg)
    assert relative_difference(numerical_gradient(J, w), layout.pack(dX, dT)) < 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_gradient_check_biased(seed):
    X, Theta, R, Y = random_problem(seed)
    items, users, y = observed(R, Y)
    layout = Layout(X.shape[0], Theta.shape[0], X.shape[1], biases=True)
    rng = np.random.default_rng(100 + seed)
    w = layout.pack(X, Theta, rng.standard_normal(X.shape[0]), rng.standard_normal(Theta.shape[0]))

    def parts(v):
        return biased_cost_and_gradients(
            layout.X(v),
            layout.Theta(v),
            layout.item_bias(v),
            layout.user_bias(v),
            items,
            users,
            y,
            0.7,
        )

    _, dX, dT, dbi, dbu = parts(w)
    numeric = numerical_gradient(lambda v: parts(v)[0], w)
    assert relative_difference(numeric, layout.pack(dX, dT, dbi, dbu)) < 1e-9


def test_initialisation_is_seeded_and_small():
    layout = Layout(50, 40, 4)
    a = initial_parameters(layout, init_scale=0.01, seed=3)
    b = initial_parameters(layout, init_scale=0.01, seed=3)
    c = initial_parameters(layout, init_scale=0.01, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.005 < np.std(a) < 0.015
    # the features differ from one another: the symmetry is broken
    assert np.linalg.matrix_rank(layout.X(a)) == 4


def test_item_mean_normalisation():
    items = np.array([0, 0, 1, 1, 1, 3])
    y = np.array([4.0, 2.0, 1.0, 2.0, 3.0, 5.0])
    norm = fit_normalization(items, y, 4, mean_normalization=True, biases=False)
    # item 2 has no rating: it gets the mean of all ratings
    np.testing.assert_allclose(norm.item_means, [3.0, 2.0, 17 / 6, 5.0])
    assert norm.global_mean == 0.0
    biased = fit_normalization(items, y, 4, mean_normalization=True, biases=True)
    assert biased.global_mean == pytest.approx(17 / 6)
    np.testing.assert_array_equal(biased.item_means, 0.0)
    off = fit_normalization(items, y, 4, mean_normalization=False, biases=False)
    assert off.global_mean == 0.0 and not off.item_means.any()


def low_rank_ratings(seed=0, users=60, items=40, rank=3, density=0.4):
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((items, rank)) @ rng.standard_normal((users, rank)).T
    mask = rng.random((items, users)) < density
    i, u = np.nonzero(mask)
    return i, u, 3.0 + truth[i, u], items, users


@pytest.mark.parametrize(
    ("optimizer", "lr"),
    [("gd", 0.005), ("momentum", 0.002), ("nesterov", 0.002), ("adam", 0.05), ("lbfgs", 1.0)],
)
def test_every_optimizer_decreases_the_cost(optimizer, lr):
    i, u, y, items, users = low_rank_ratings()
    result, layout, norm = train_reference(
        i,
        u,
        y,
        items,
        users,
        rank=3,
        reg=0.1,
        optimizer=optimizer,
        settings=OptimizerSettings(learning_rate=lr),
        max_iter=150,
        tol=0.0,
    )
    costs = [h["cost"] for h in result.history]
    assert result.iterations == 150 or result.stop_reason == "no_progress"
    assert costs[-1] < 0.05 * costs[0]
    if optimizer in ("gd", "lbfgs"):
        assert all(b <= a * (1 + 1e-12) for a, b in zip(costs, costs[1:]))
    # the training RMSE in the history is the RMSE of the returned parameters' predictions
    X, Theta = layout.X(result.w), layout.Theta(result.w)
    pred = np.sum(X[i] * Theta[u], axis=1) + norm.offsets(i)
    assert result.history[-1]["train_rmse"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)))


def test_gd_tolerance_stops_early():
    i, u, y, items, users = low_rank_ratings()
    result, _, _ = train_reference(
        i,
        u,
        y,
        items,
        users,
        rank=3,
        reg=0.1,
        optimizer="gd",
        settings=OptimizerSettings(learning_rate=0.005),
        max_iter=5000,
        tol=1e-4,
    )
    assert result.stop_reason == "converged"
    costs = [h["cost"] for h in result.history]
    assert (costs[-2] - costs[-1]) / costs[-2] < 1e-4
    assert all((a - b) / a >= 1e-4 for a, b in zip(costs[:-2], costs[1:-1]))


def test_resume_after_a_run_that_stopped_at_a_checkpoint(tmp_path):
    from spark_cf.training.checkpoints import Checkpointer

    i, u, y, items, users = low_rank_ratings()
    kw = dict(
        rank=3,
        reg=0.1,
        optimizer="gd",
        settings=OptimizerSettings(learning_rate=0.005),
        max_iter=5000,
        tol=1e-4,
    )
    done, _, _ = train_reference(
        i, u, y, items, users, **kw, checkpoint=Checkpointer(str(tmp_path), every=1)
    )
    assert done.stop_reason == "converged"
    again, _, _ = train_reference(
        i,
        u,
        y,
        items,
        users,
        **kw,
        checkpoint=Checkpointer(str(tmp_path), every=1, resume=True),
    )
    assert again.resumed_from == done.iterations == again.iterations
    assert again.stop_reason == "converged"
    np.testing.assert_array_equal(again.w, done.w)


def test_row_preconditioner_is_one_over_the_rows_ratings_plus_one():
    from spark_cf.training.params import row_preconditioner

    layout = Layout(num_items=3, num_users=2, rank=2, biases=True)
    D = row_preconditioner(layout, np.array([0, 1, 4]), np.array([3, 0]))
    np.testing.assert_array_equal(layout.X(D), [[1, 1], [0.5, 0.5], [0.2, 0.2]])
    np.testing.assert_array_equal(layout.Theta(D), [[0.25, 0.25], [1, 1]])
    np.testing.assert_array_equal(layout.item_bias(D), [1, 0.5, 0.2])
    np.testing.assert_array_equal(layout.user_bias(D), [0.25, 1])


def test_preconditioned_lbfgs_starts_along_minus_d_times_the_gradient():
    from spark_cf.training.optimizers import LBFGS, Evaluation
    from spark_cf.training.params import row_preconditioner

    layout = Layout(num_items=3, num_users=2, rank=2)
    D = row_preconditioner(layout, np.array([0, 1, 4]), np.array([3, 0]))
    g = np.arange(1.0, layout.size + 1)
    seen = []

    def f(w):
        seen.append(w.copy())
        return Evaluation(0.0, np.zeros_like(w))  # accepts the first trial step

    for precondition, direction in (("counts", -D * g), ("none", -g)):
        seen.clear()
        opt = LBFGS(OptimizerSettings(lbfgs_precondition=precondition), layout.size, D)
        w0 = np.zeros(layout.size)
        opt.step(w0, Evaluation(1.0, g), f)
        step = seen[0] - w0
        np.testing.assert_allclose(
            step / np.linalg.norm(step), direction / np.linalg.norm(direction)
        )


def test_curvature_lbfgs_first_step_is_the_full_gauss_newton_diagonal_step():
    """With lbfgs_precondition = "curvature" the first trial point is exactly
    w - g / curvature (no gamma, no 1 / |g| scaling); a zero curvature leaves its entry
    unscaled."""
    from spark_cf.training.optimizers import LBFGS, Evaluation

    size = 6
    g = np.array([1.0, -2.0, 3.0, 0.5, -1.0, 2.0])
    curvature = np.array([2.0, 4.0, 0.5, 1.0, 0.0, 8.0])
    seen = []

    def f(w):
        seen.append(w.copy())
        return Evaluation(0.0, np.zeros_like(w), curvature=curvature)

    opt = LBFGS(OptimizerSettings(lbfgs_precondition="curvature"), size)
    assert opt.needs_curvature
    w0 = np.ones(size)
    opt.step(w0, Evaluation(1.0, g, curvature=curvature), f)
    np.testing.assert_array_equal(seen[0], w0 - np.array([0.5, -0.5, 6.0, 0.5, -1.0, 0.25]))
    with pytest.raises(ValueError, match="curvature"):
        opt.step(w0, Evaluation(1.0, g), f)


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("objective", ["ratings", "ranking"])
def test_curvature_diagonal_is_the_diagonal_of_the_gauss_newton_matrix(objective, biases):
    """The reference's curvature diagonal against J's Gauss-Newton matrix J_r^T W J_r
    formed from finite differences of the residuals (written here, dense)."""
    from spark_cf.reference.numpy_cf import curvature_diagonal
    from spark_cf.training.objective import CostSpec

    rng = np.random.default_rng(5)
    layout = Layout(num_items=4, num_users=5, rank=2, biases=biases)
    pairs = np.array([(i, u) for i in range(4) for u in range(5) if rng.random() < 0.6])
    items, users = pairs[:, 0], pairs[:, 1]
    r = rng.uniform(1, 5, len(items))
    w = rng.standard_normal(layout.size)
    reg, alpha = 0.7, 0.3

    def scores(w):
        S = layout.X(w) @ layout.Theta(w).T
        if biases:
            S = S + layout.item_bias(w)[:, None] + layout.user_bias(w)[None, :]
        return S

    if objective == "ranking":  # every pair, weight c
        weights = np.ones((4, 5))
        weights[items, users] += alpha * r
        sel = np.ones((4, 5), dtype=bool)
    else:  # the rated pairs, weight 1
        weights = np.ones((4, 5))
        sel = np.zeros((4, 5), dtype=bool)
        sel[items, users] = True
    eps = 1e-6
    jac = np.empty((int(sel.sum()), layout.size))
    for p in range(layout.size):
        e = np.zeros(layout.size)
        e[p] = eps
        jac[:, p] = (scores(w + e)[sel] - scores(w - e)[sel]) / (2 * eps)
    gauss_newton = jac.T @ (weights[sel][:, None] * jac) + reg * np.eye(layout.size)
    got = curvature_diagonal(layout, w, items, users, r, reg, CostSpec(objective, alpha))
    np.testing.assert_allclose(got, np.diag(gauss_newton), rtol=1e-7)
