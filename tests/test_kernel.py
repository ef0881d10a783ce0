"""The compiled per-block kernel (spark_cf.training.kernel) against the NumPy reference
(spark_cf.reference.numpy_cf), on random blocks, without Spark: no JVM, no session.

The kernel sums each block's ratings in one compiled loop; the reference sums all ratings
at once with ``bincount``. On a block at an offset inside larger parameter arrays, and on a
whole grid of blocks added up by hand, both must give the same cost and gradients."""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pytest

from spark_cf.reference.numpy_cf import biased_cost_and_gradients, cost_and_gradients
from spark_cf.training.kernel import (
    Block,
    BlockPayload,
    block_gradients,
    block_gradients_flat,
    cached_gradients,
    forget,
)
from spark_cf.training.params import Layout, initial_parameters

RTOL = 1e-12


def random_ratings(rng, num_users: int, num_items: int, density: float, held: float):
    """Distinct random (user, item) pairs with ratings and a held-out flag."""
    mask = rng.random((num_users, num_items)) < density
    users, items = np.nonzero(mask)
    y = rng.normal(0.0, 1.5, size=len(users))
    is_val = rng.random(len(users)) < held
    return users.astype(np.int64), items.astype(np.int64), y, is_val


def payload_of(users, items, y, is_val, *, user_range, item_range, key="", block_id=0):
    """The payload of the ratings that fall in ``user_range`` x ``item_range`` (global
    indices), with local indices and sorted by (item, user) as the Spark side caches it.
    A new data key by default: the kernel keeps prepared blocks by key and block id."""
    (u0, u1), (i0, i1) = user_range, item_range
    sel = (users >= u0) & (users < u1) & (items >= i0) & (items < i1)
    lu, li = users[sel] - u0, items[sel] - i0
    order = np.lexsort((lu, li))
    return BlockPayload(
        key=key or uuid.uuid4().hex,
        block_id=block_id,
        user_start=u0,
        num_users=u1 - u0,
        item_start=i0,
        num_items=i1 - i0,
        users=lu[order].astype(np.int32),
        items=li[order].astype(np.int32),
        y=y[sel][order],
        is_val=is_val[sel][order],
    )


def reference(layout: Layout, w, items, users, y):
    """Data cost (reg 0) and gradients of the reference over the given ratings."""
    X, Theta = layout.X(w), layout.Theta(w)
    if layout.biases:
        J, dX, dT, dbi, dbu = biased_cost_and_gradients(
            X, Theta, layout.item_bias(w), layout.user_bias(w), items, users, y, 0.0
        )
        return J, dX, dT, dbi, dbu
    J, dX, dT = cost_and_gradients(X, Theta, items, users, y, 0.0)
    return J, dX, dT, None, None


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_block_at_an_offset_equals_the_reference(biases, seed):
    rng = np.random.default_rng(seed)
    num_users, num_items, rank = 37, 23, int(rng.integers(1, 6))
    users, items, y, is_val = random_ratings(rng, num_users, num_items, 0.4, 0.2)
    layout = Layout(num_items, num_users, rank, biases)
    w = initial_parameters(layout, init_scale=0.7, seed=seed)
    if biases:
        layout.item_bias(w)[:] = rng.normal(size=num_items)
        layout.user_bias(w)[:] = rng.normal(size=num_users)
    user_range, item_range = (9, 30), (4, 19)  # a block strictly inside both index ranges
    p = payload_of(users, items, y, is_val, user_range=user_range, item_range=item_range)
    assert 0 < p.is_val.sum() < len(p.y)  # both training and held-out ratings

    try:
        got = block_gradients_flat(p, w, layout)
    finally:
        forget(p.key)

    (u0, u1), (i0, i1) = user_range, item_range
    inside = (users >= u0) & (users < u1) & (items >= i0) & (items < i1)
    train, val = inside & ~is_val, inside & is_val
    J, dX, dT, dbi, dbu = reference(layout, w, items[train], users[train], y[train])
    assert got.count == train.sum() and got.val_count == val.sum()
    assert got.sse == pytest.approx(2 * J, rel=RTOL)
    np.testing.assert_allclose(got.d_item_factors, dX[i0:i1], rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(got.d_user_factors, dT[u0:u1], rtol=RTOL, atol=1e-12)
    # the rows outside the block get nothing from its ratings
    assert not dX[:i0].any() and not dX[i1:].any()
    assert not dT[:u0].any() and not dT[u1:].any()
    if biases:
        np.testing.assert_allclose(got.d_item_bias, dbi[i0:i1], rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(got.d_user_bias, dbu[u0:u1], rtol=RTOL, atol=1e-12)
    else:
        assert got.d_item_bias is None and got.d_user_bias is None
    J_val = reference(layout, w, items[val], users[val], y[val])[0]
    assert got.val_sse == pytest.approx(2 * J_val, rel=RTOL)


@pytest.mark.parametrize("biases", [False, True])
def test_a_grid_of_blocks_adds_up_to_the_reference_over_all_ratings(biases):
    rng = np.random.default_rng(11)
    num_users, num_items, rank, reg = 50, 31, 4, 0.3
    users, items, y, is_val = random_ratings(rng, num_users, num_items, 0.3, 0.25)
    layout = Layout(num_items, num_users, rank, biases)
    w = initial_parameters(layout, init_scale=0.5, seed=4)
    if biases:
        layout.item_bias(w)[:] = rng.normal(size=num_items)
        layout.user_bias(w)[:] = rng.normal(size=num_users)
    u_cuts, i_cuts = [0, 13, 14, 50], [0, 10, 31]  # uneven, one user block of one user
    grad = np.zeros(layout.size)
    sse = 0.0
    for bu in range(3):
        for bi in range(2):
            p = payload_of(
                users,
                items,
                y,
                is_val,
                user_range=(u_cuts[bu], u_cuts[bu + 1]),
                item_range=(i_cuts[bi], i_cuts[bi + 1]),
                block_id=bu * 2 + bi,
            )
            r = block_gradients(
                Block(p),
                layout.X(w),
                layout.Theta(w),
                *((layout.item_bias(w), layout.user_bias(w)) if biases else ()),
            )
            us, ue, is_, ie = u_cuts[bu], u_cuts[bu + 1], i_cuts[bi], i_cuts[bi + 1]
            layout.X(grad)[is_:ie] += r.d_item_factors
            layout.Theta(grad)[us:ue] += r.d_user_factors
            if biases:
                layout.item_bias(grad)[is_:ie] += r.d_item_bias
                layout.user_bias(grad)[us:ue] += r.d_user_bias
            sse += r.sse
    cost = 0.5 * sse + 0.5 * reg * float(w @ w)
    grad += reg * w

    train = ~is_val
    X, Theta = layout.X(w), layout.Theta(w)
    if biases:
        J, dX, dT, dbi, dbu = biased_cost_and_gradients(
            X,
            Theta,
            layout.item_bias(w),
            layout.user_bias(w),
            items[train],
            users[train],
            y[train],
            reg,
        )
        want = layout.pack(dX, dT, dbi, dbu)
    else:
        J, dX, dT = cost_and_gradients(X, Theta, items[train], users[train], y[train], reg)
        want = layout.pack(dX, dT)
    assert cost == pytest.approx(J, rel=RTOL)
    np.testing.assert_allclose(grad, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("objective", ["ratings", "ranking"])
def test_the_blocks_curvature_plus_the_driver_terms_equals_the_references_diagonal(
    objective, biases
):
    """The kernel's per-block curvature (summed over an uneven grid), plus what the driver
    adds (the all-pairs Gramians' diagonals for the ranking objective, reg), equals the
    NumPy reference's Gauss-Newton diagonal (bincount / dense form)."""
    from spark_cf.reference.numpy_cf import curvature_diagonal
    from spark_cf.training.objective import CostSpec, add_rows_curvature, all_pairs_curvature

    rng = np.random.default_rng(21)
    num_users, num_items, rank, reg = 40, 27, 3, 0.4
    users, items, y, is_val = random_ratings(rng, num_users, num_items, 0.3, 0.2)
    cost = CostSpec(objective, 0.7)
    if cost.ranking:
        y = np.abs(y) + 0.5  # raw positive values
    layout = Layout(num_items, num_users, rank, biases)
    w = initial_parameters(layout, init_scale=0.8, seed=6)
    biases_of = (layout.item_bias(w), layout.user_bias(w)) if biases else ()
    got = np.zeros(layout.size)
    u_cuts, i_cuts = [0, 17, 40], [0, 5, 27]
    for bu in range(2):
        for bi in range(2):
            p = payload_of(
                users,
                items,
                y,
                is_val,
                user_range=(u_cuts[bu], u_cuts[bu + 1]),
                item_range=(i_cuts[bi], i_cuts[bi + 1]),
            )
            r = block_gradients(
                Block(p), layout.X(w), layout.Theta(w), *biases_of, cost=cost, curvature=True
            )
            us, ue, is_, ie = u_cuts[bu], u_cuts[bu + 1], i_cuts[bi], i_cuts[bi + 1]
            layout.X(got)[is_:ie] += r.c_item_factors
            layout.Theta(got)[us:ue] += r.c_user_factors
            if biases:
                layout.item_bias(got)[is_:ie] += r.c_item_bias
                layout.user_bias(got)[us:ue] += r.c_user_bias
            else:
                assert r.c_item_bias is None and r.c_user_bias is None
    if cost.ranking:
        add_rows_curvature(layout, got, *all_pairs_curvature(layout.X(w), layout.Theta(w), biases))
    got += reg
    train = ~is_val
    want = curvature_diagonal(layout, w, items[train], users[train], y[train], reg, cost)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # without curvature=True the block computes none
    plain = block_gradients(Block(p), layout.X(w), layout.Theta(w), *biases_of, cost=cost)
    assert plain.c_item_factors is None and plain.c_user_factors is None


def test_an_empty_block_adds_nothing():
    layout = Layout(5, 4, 2)
    w = initial_parameters(layout, init_scale=1.0, seed=0)
    empty = np.empty(0, dtype=np.int32)
    p = BlockPayload("", 0, 1, 2, 1, 3, empty, empty, np.empty(0), np.empty(0, dtype=bool))
    r = block_gradients(Block(p), layout.X(w), layout.Theta(w))
    assert (r.sse, r.count, r.val_sse, r.val_count) == (0.0, 0, 0.0, 0)
    assert r.d_item_factors.shape == (3, 2) and not r.d_item_factors.any()
    assert r.d_user_factors.shape == (2, 2) and not r.d_user_factors.any()


def test_a_worker_serves_a_prepared_block_from_its_cache_with_the_same_bits():
    rng = np.random.default_rng(5)
    users, items, y, is_val = random_ratings(rng, 20, 15, 0.5, 0.2)
    layout = Layout(15, 20, 3, biases=True)
    points = [initial_parameters(layout, init_scale=0.4, seed=s) for s in (1, 2)]
    key = "test-kernel-cache"
    p = payload_of(users, items, y, is_val, user_range=(0, 20), item_range=(0, 15), key=key)
    try:
        assert cached_gradients(key, 0, points, layout) is None  # never prepared here
        first = [block_gradients_flat(p, w, layout) for w in points]
        again = cached_gradients(key, 0, points, layout)
        assert again is not None
        for a, b in zip(first, again):
            assert a.sse == b.sse and a.val_sse == b.val_sse
            np.testing.assert_array_equal(a.d_item_factors, b.d_item_factors)
            np.testing.assert_array_equal(a.d_user_bias, b.d_user_bias)
        assert first[0].sse != first[1].sse  # the two points really differ
    finally:
        forget(key)
    assert cached_gradients(key, 0, points, layout) is None


def test_the_kernel_and_the_reference_import_no_spark():
    """The kernel runs in Python workers and the reference on a laptop: neither may pull
    in pyspark (and with it a JVM)."""
    code = (
        "import sys\n"
        "import spark_cf.training.kernel, spark_cf.reference.numpy_cf\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'py4j')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
