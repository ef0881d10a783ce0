"""The optimisers on slices (spark_cf.training.slices), in NumPy: the vector-free L-BFGS
direction against the two-loop recursion, the slice sums against plain NumPy, and the
elementwise rules applied slice by slice against the whole vector."""

from __future__ import annotations

import numpy as np
import pytest

from spark_cf.training import slices
from spark_cf.training.optimizers import (
    ELEMENTWISE_RULES,
    LBFGS,
    Evaluation,
    OptimizerSettings,
)


def _two_loop(S, Y, g, c, precondition, D):
    """The driver's L-BFGS direction with these pairs (oldest first) in its ring."""
    m = len(S) + 1
    opt = LBFGS(OptimizerSettings(lbfgs_memory=m, lbfgs_precondition=precondition), len(g), D)
    for s, y in zip(S, Y):
        slot = opt.head
        opt.s[slot], opt.y[slot], opt.rho[slot] = s, y, 1.0 / float(s @ y)
        opt.head = (opt.head + 1) % m
        opt.stored += 1
    return opt.direction(g, c)


def _pairs(rng, n, k):
    """Pairs with s.y > 0, as L-BFGS keeps them: y = A s for a positive diagonal A."""
    A = rng.uniform(0.5, 3.0, n)
    S = [rng.standard_normal(n) for _ in range(k)]
    return S, [A * s + 0.01 * rng.standard_normal(n) for s in S]


@pytest.mark.parametrize("precondition", ["curvature", "counts", "none"])
@pytest.mark.parametrize("pairs", [0, 1, 4])
def test_the_compact_direction_from_slice_sums_equals_the_two_loop_recursion(precondition, pairs):
    rng = np.random.default_rng(pairs)
    n = 37
    S, Y = _pairs(rng, n, pairs)
    g = rng.standard_normal(n)
    c = rng.uniform(0.5, 4.0, n)
    c[3] = 0.0  # a row with no curvature is left unscaled
    D = rng.uniform(0.1, 1.0, n)
    expected = _two_loop(S, Y, g, c, precondition, D)

    # the same vectors cut into three slices of uneven sizes, as on the executors
    cuts = [0, 5, 21, n]
    parts = []
    for a, b in zip(cuts, cuts[1:]):
        v = {"w": np.zeros(b - a), "g": g[a:b], "gt": g[a:b], "c": c[a:b], "ct": c[a:b]}
        v["D"] = D[a:b]
        for i, (s, y) in enumerate(zip(S, Y)):
            v[f"s{i}"], v[f"y{i}"] = s[a:b], y[a:b]
        parts.append(v)
    plan = slices.CompactLBFGS(pairs + 1, precondition)
    plan.head, plan.stored = pairs, pairs
    u_names, w_names = plan.names(pair=False, resume=True)
    move = slices.Move("stay", lbfgs=True, u_names=u_names, w_names=w_names)
    total = None
    for v in parts:
        total = slices.add_sums(total, slices.slice_sums(v, move, precondition, v["w"]))
    plan.learn_pairs(total["U"], u_names)
    direction, slope, alpha = plan.plan(total["U"], u_names, total["W"], w_names, {})
    got = np.concatenate([slices.direction_vector(v, direction, precondition) for v in parts])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert slope == pytest.approx(float(g @ expected), rel=1e-10)
    assert slope < 0
    first_unscaled = pairs == 0 and precondition != "curvature"
    expected_alpha = min(1.0, 1.0 / np.linalg.norm(g)) if first_unscaled else 1.0
    assert alpha == pytest.approx(expected_alpha, rel=1e-12)


def test_slice_sums_are_the_dot_products_of_the_whole_vectors():
    rng = np.random.default_rng(7)
    n = 50
    v = {name: rng.standard_normal(n) for name in ("w", "g", "wt", "gt", "s0", "y0", "s1", "y1")}
    v["ct"] = rng.uniform(0.5, 2.0, n)
    move = slices.Move(
        "lbfgs",
        lbfgs=True,
        u_names=("s0", "s1", "snew", "ynew", "g"),
        w_names=("y0", "y1", "ynew", "g"),
    )
    sums = slices.slice_sums(v, move, "curvature", v["wt"])
    U = np.stack([v["s0"], v["s1"], v["wt"] - v["w"], v["gt"] - v["g"], v["gt"]])
    Y = np.stack([v["y0"], v["y1"], v["gt"] - v["g"], v["gt"]])
    np.testing.assert_allclose(sums["U"], U @ U.T, rtol=1e-12)
    np.testing.assert_allclose(sums["W"], (Y / v["ct"]) @ Y.T, rtol=1e-12)
    assert sums["ww"] == pytest.approx(float(v["wt"] @ v["wt"]), rel=1e-12)
    assert sums["gg"] == pytest.approx(float(v["gt"] @ v["gt"]), rel=1e-12)
    assert sums["finite"] is True
    v["gt"][4] = np.nan
    assert slices.slice_sums(v, move, "curvature", v["wt"])["finite"] is False


@pytest.mark.parametrize("rule", sorted(ELEMENTWISE_RULES))
def test_an_elementwise_rule_on_slices_gives_the_whole_vectors_bits(rule):
    rng = np.random.default_rng(1)
    n = 40
    settings = OptimizerSettings(learning_rate=0.03)
    whole = {"w": rng.standard_normal(n), "g": rng.standard_normal(n)}
    for name in ELEMENTWISE_RULES[rule][1]:
        whole[name] = rng.standard_normal(n) ** 2
    parts = [{k: a[lo:hi].copy() for k, a in whole.items()} for lo, hi in ((0, 13), (13, n))]
    move = slices.Move("rule", rule=rule, settings=settings, t=3)
    expected = slices.apply_move(dict(whole), move, "none")
    got = np.concatenate([slices.apply_move(p, move, "none") for p in parts])
    np.testing.assert_array_equal(got, expected)


def test_an_evaluation_without_the_gradient_vector_reports_its_norm_and_finiteness():
    ev = Evaluation(2.0, np.zeros(0), grad_norm_sq=9.0, finite=True)
    assert ev.grad_norm == 3.0 and ev.is_finite()
    assert not Evaluation(2.0, np.zeros(0), grad_norm_sq=9.0, finite=False).is_finite()
    assert not Evaluation(float("nan"), np.zeros(0), grad_norm_sq=9.0, finite=True).is_finite()
