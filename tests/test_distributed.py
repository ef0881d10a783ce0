"""Training on Spark: blocks, parity with the NumPy reference (the whole matrix, on local[1]
and local[2]), the gradient check on the Spark path, divergence, checkpoints, long runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spark_cf.config import Config
from spark_cf.data.prepare import prepare
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.errors import CheckpointError, DivergenceError
from spark_cf.nightly.run import train_with_config
from spark_cf.reference.numpy_cf import (
    biased_cost_and_gradients,
    cost_and_gradients,
    numerical_gradient,
)
from spark_cf.reference.verify import LBFGS_TRAJECTORY_TOLERANCE
from spark_cf.schema import IS_VAL, ITEM_IDX, USER_IDX
from spark_cf.training.blocks import MISS_STREAK, BlockedRatings, range_starts
from spark_cf.training.params import Layout, initial_parameters

sys.path.insert(0, str(Path(__file__).parent))
import parity_matrix  # noqa: E402

pytestmark = pytest.mark.spark
TOL = 1e-9


@pytest.fixture(scope="module")
def ratings_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("parity") / "ratings.parquet"
    write_parquet(
        SyntheticSpec(
            num_users=120, num_items=80, num_ratings=2000, true_rank=3, noise=0.5, seed=3
        ),
        str(path),
    )
    return str(path)


@pytest.fixture(scope="module")
def ratings(spark, ratings_path):
    return spark.read.parquet(ratings_path).select("user_id", "item_id", "rating")


def check_matrix(rows: list[dict], grids: list[tuple[int, int]]) -> None:
    combos = {(r["optimizer"], r["biases"], tuple(r["grid"])) for r in rows}
    assert combos == {
        (o, b, g) for o in parity_matrix.OPTIMIZERS for b in parity_matrix.VARIANTS for g in grids
    }
    for r in rows:
        name = f"{r['optimizer']} biases={r['biases']} grid={r['grid']}"
        assert r["iterations_spark"] == parity_matrix.ITERATIONS, name
        # Every point the Spark run evaluated agrees with the reference there.
        assert r["lockstep_rel_cost"] <= TOL, name
        assert r["lockstep_rel_grad"] <= TOL, name
        # The independent trajectories agree after 100 iterations (L-BFGS amplifies the
        # rounding differences of the two summation orders: see spark_cf.reference.verify).
        bound = TOL if r["optimizer"] != "lbfgs" else LBFGS_TRAJECTORY_TOLERANCE
        assert r["iterations_reference"] == r["iterations_spark"], name
        assert r["max_rel_cost"] <= bound, name
        assert (
            max(r["max_abs_item_factors"], r["max_abs_user_factors"], r["max_abs_biases"]) <= bound
        ), name


def test_parity_matrix_local2(ratings):
    """Every optimiser and model variant on one block and on an uneven 2 x 3 grid."""
    grids = parity_matrix.QUICK_GRIDS
    check_matrix(parity_matrix.run_matrix(ratings, grids), grids)


@pytest.mark.slow
@pytest.mark.extended
def test_parity_matrix_local2_on_a_four_by_four_grid(ratings):
    """More blocks of the same kind as the 2 x 3 grid of test_parity_matrix_local2, which
    keeps the coverage in make test."""
    check_matrix(parity_matrix.run_matrix(ratings, [(4, 4)]), [(4, 4)])


@pytest.mark.slow
@pytest.mark.extended
def test_parity_matrix_local1(ratings_path, tmp_path):
    """The whole matrix on one core. make test keeps: the matrix on local[2]
    (test_parity_matrix_local2), the same model whatever the input partitioning
    (test_same_result_whatever_the_input_partitioning) and the same tables bit for bit on
    two one-core executors as on local[2] (test_cluster.py)."""
    out = tmp_path / "local1.json"
    proc = subprocess.run(
        [sys.executable, str(Path(parity_matrix.__file__)), "local[1]", ratings_path, str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_matrix(json.loads(out.read_text()), parity_matrix.GRIDS)


def test_blocks_hold_every_rating_once_in_compact_arrays(ratings):
    data = prepare(
        ratings,
        holdout_fraction=0.25,
        split="random",
        seed=1,
        mean_normalization=True,
        biases=False,
    )
    a = data.arrays()
    blocks = BlockedRatings(
        data.ratings,
        num_users=data.index.num_users,
        num_items=data.index.num_items,
        normalization=data.normalization,
        user_blocks=3,
        item_blocks=2,
    )
    try:
        payloads = blocks.rdd.collect()
    finally:
        blocks.unpersist()
    assert sorted(p.block_id for p in payloads) == list(range(6))
    u_starts = range_starts(data.index.num_users, 3)
    i_starts = range_starts(data.index.num_items, 2)
    seen = []
    for p in payloads:
        b_u, b_i = divmod(p.block_id, 2)
        assert (p.user_start, p.item_start) == (u_starts[b_u], i_starts[b_i])
        assert p.users.dtype == np.int32 and p.items.dtype == np.int32
        assert p.y.dtype == np.float64 and p.is_val.dtype == bool
        assert (p.users < p.num_users).all() and (p.items < p.num_items).all()
        assert np.all(np.diff(p.items) >= 0)  # sorted by item
        seen.append(np.stack([p.users + p.user_start, p.items + p.item_start], axis=1))
    got = np.concatenate(seen)
    got = got[np.lexsort((got[:, 1], got[:, 0]))]
    want = np.stack([a[USER_IDX], a[ITEM_IDX]], axis=1)
    np.testing.assert_array_equal(got, want)
    held = sum(int(p.is_val.sum()) for p in payloads)
    assert held == int(a[IS_VAL].sum()) == data.num_val


def test_gradient_check_on_the_spark_path(spark):
    rng = np.random.default_rng(8)
    rows = [
        (int(u), int(i), float(rng.integers(1, 11)) / 2)
        for u in range(6)
        for i in range(5)
        if rng.random() < 0.6
    ]
    df = spark.createDataFrame(rows, "user_id long, item_id long, rating double")
    data = prepare(
        df, holdout_fraction=0.0, split="random", seed=0, mean_normalization=True, biases=False
    )
    blocks = BlockedRatings(
        data.ratings,
        num_users=6,
        num_items=5,
        normalization=data.normalization,
        user_blocks=2,
        item_blocks=2,
    )
    try:
        layout = Layout(5, 6, 2)
        f = blocks.objective(layout, 0.7)
        w = initial_parameters(layout, init_scale=1.0, seed=2)
        numeric = numerical_gradient(lambda v: f(v).cost, w, eps=1e-4)
        analytic = f(w).grad
    finally:
        blocks.unpersist()
    assert np.linalg.norm(numeric - analytic) / np.linalg.norm(numeric + analytic) < 1e-9
    # and it is the reference's gradient, computed independently
    a = data.arrays()
    y = a["rating"] - data.normalization.offsets(a[ITEM_IDX])
    _, dX, dT = cost_and_gradients(layout.X(w), layout.Theta(w), a[ITEM_IDX], a[USER_IDX], y, 0.7)
    np.testing.assert_allclose(analytic, layout.pack(dX, dT), rtol=1e-12, atol=1e-12)


def small_config(**train) -> Config:
    settings = {
        "optimizer": "gd",
        "learning_rate": 0.002,
        "max_iter": 30,
        "tol": 0.0,
        "num_user_blocks": 2,
        "num_item_blocks": 2,
    }
    settings.update(train)
    return Config().replace(model={"rank": 3, "reg": 0.5}, train=settings)


@pytest.fixture(scope="module")
def small_data(ratings):
    data = prepare(
        ratings, holdout_fraction=0.2, split="random", seed=3, mean_normalization=True, biases=False
    )
    yield data
    data.ratings.unpersist()


def test_divergence_stops_with_a_clear_error(small_data):
    cfg = small_config(learning_rate=0.5)
    with pytest.raises(DivergenceError, match="lower train.learning_rate"):
        train_with_config(small_data, cfg)
    cfg = small_config(optimizer="adam", learning_rate=1e6)
    with pytest.raises(DivergenceError, match="lower train.learning_rate"):
        train_with_config(small_data, cfg)


@pytest.mark.parametrize("optimizer", ["gd", "lbfgs", "adam"])
def test_checkpoint_and_resume_equal_the_uninterrupted_run(small_data, tmp_path, optimizer):
    full_cfg = small_config(
        optimizer=optimizer, learning_rate=0.002 if optimizer != "adam" else 0.01
    )
    full_model, full = train_with_config(small_data, full_cfg)

    ckpt = str(tmp_path / "ckpt")
    cfg = full_cfg.replace(train={"checkpoint_every": 10, "checkpoint_dir": ckpt})

    class Killed(Exception):
        pass

    def kill_at_25(iteration, elapsed, cost):
        if iteration == 25:
            raise Killed

    with pytest.raises(Killed):
        train_with_config(small_data, cfg, callback=kill_at_25)
    resumed_cfg = cfg.replace(train={"resume": True})
    model, result = train_with_config(small_data, resumed_cfg)
    assert result.resumed_from == 20
    np.testing.assert_array_equal(model.item_factors, full_model.item_factors)
    np.testing.assert_array_equal(model.user_factors, full_model.user_factors)
    assert [h["cost"] for h in result.history] == [h["cost"] for h in full.history]

    other = resumed_cfg.replace(model={"reg": 0.6})
    with pytest.raises(CheckpointError, match="another config or input"):
        train_with_config(small_data, other)


LINEAGE_GROUP = "spark-cf-lineage-test"
LINEAGE_ITERATIONS = 200


class LineageProbe:
    """Wraps the Spark objective of a training run (``fit(wrap_objective=...)``) and records,
    at every evaluation, the RDDs it runs its jobs over and their lineage as Spark prints
    it. The jobs themselves are read from the status tracker after the run."""

    def __init__(self) -> None:
        self.lineages: list[tuple[bytes, bytes]] = []
        self.rdd_objects: list[tuple[int, int]] = []

    def wrap(self, objective):
        def evaluate(w):
            ev = objective(w)
            blocks = objective.blocks
            self.lineages.append((blocks.rdd.toDebugString(), blocks.ids_rdd.toDebugString()))
            self.rdd_objects.append((id(blocks.rdd), id(blocks.ids_rdd)))
            return ev

        return evaluate


def group_jobs(sc, group: str) -> list[int]:
    """The jobs of ``group`` once the status tracker has seen them all (it learns of jobs
    from the listener bus, a little after they end)."""
    tracker = sc.statusTracker()
    seen: list[int] = []
    for _ in range(50):
        time.sleep(0.2)
        jobs = sorted(tracker.getJobIdsForGroup(group))
        if jobs == seen:
            break
        seen = jobs
    return seen


def test_iterations_do_not_grow_the_lineage(spark):
    """Every evaluation runs the same jobs over the same cached RDDs: the lineage Spark
    prints for them is the same string at the last iteration as at the first, every
    evaluation runs one or two jobs, and no job has more stages than the first ones. (A
    growing lineage shows from the second iteration on, so 200 iterations are plenty.)"""
    df = spark.createDataFrame(
        [(1, 1, 4.0), (1, 2, 3.0), (2, 1, 5.0), (3, 2, 2.0)],
        "user_id long, item_id long, rating double",
    )
    data = prepare(
        df, holdout_fraction=0.0, split="random", seed=0, mean_normalization=True, biases=False
    )
    cfg = Config().replace(
        model={"rank": 2, "reg": 0.1},
        train={
            "optimizer": "gd",
            "learning_rate": 0.05,
            "max_iter": LINEAGE_ITERATIONS,
            "tol": 0.0,
            "num_user_blocks": 1,
            "num_item_blocks": 1,
        },
    )
    sc = spark.sparkContext
    probe = LineageProbe()
    sc.setJobGroup(LINEAGE_GROUP, "lineage test")
    try:
        model, result = train_with_config(data, cfg, wrap_objective=probe.wrap)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        data.ratings.unpersist()
    n = LINEAGE_ITERATIONS
    assert result.iterations == n and len(result.history) == n + 1
    costs = np.array([h["cost"] for h in result.history])
    assert np.all(np.diff(costs) <= 1e-12)
    assert len(probe.lineages) == result.evaluations == n + 1
    # the same RDD objects, with the same lineage, from the first evaluation to the last
    assert len(set(probe.rdd_objects)) == 1
    first, last = probe.lineages[0], probe.lineages[-1]
    assert last == first, f"lineage changed:\n{first}\n---\n{last}"
    assert len(set(probe.lineages)) == 1
    # one job per evaluation (two when a block had to come from Spark's cache), plus the
    # few that cache the blocks and drop them; and the jobs of the last iterations have no
    # more stages (skipped ones included) than the first jobs
    tracker = sc.statusTracker()
    stages = [len(tracker.getJobInfo(j).stageIds) for j in group_jobs(sc, LINEAGE_GROUP)]
    assert result.evaluations <= len(stages) <= 2 * result.evaluations + 4, len(stages)
    assert max(stages[-n // 2 :]) <= max(stages[:5]), stages[-10:]


def test_same_result_whatever_the_input_partitioning(ratings):
    cfg = small_config(max_iter=10)
    results = []
    for parts in (1, 5):
        data = prepare(
            ratings.repartition(parts),
            holdout_fraction=0.2,
            split="random",
            seed=3,
            mean_normalization=True,
            biases=False,
        )
        model, _ = train_with_config(data, cfg)
        results.append(model)
        data.ratings.unpersist()
    np.testing.assert_array_equal(results[0].item_factors, results[1].item_factors)
    np.testing.assert_array_equal(results[0].user_factors, results[1].user_factors)
    np.testing.assert_array_equal(results[0].item_means, results[1].item_means)


def test_blocks_from_the_worker_cache_or_from_spark_give_the_same_bits(ratings):
    data = prepare(
        ratings, holdout_fraction=0.2, split="random", seed=3, mean_normalization=True, biases=True
    )
    blocks = BlockedRatings(
        data.ratings,
        num_users=data.index.num_users,
        num_items=data.index.num_items,
        normalization=data.normalization,
        user_blocks=3,
        item_blocks=2,
    )
    layout = Layout(data.index.num_items, data.index.num_users, 3, biases=True)
    objective = blocks.objective(layout, 1.0)
    w = initial_parameters(layout, init_scale=0.3, seed=5)
    first = objective(w)  # no worker has a block yet: they come from Spark's cache
    assert objective.payload_jobs == 1
    # Which Python worker takes a task is the scheduler's choice (a busy machine may fork
    # a fresh worker), so give the caches up to MISS_STREAK - 1 evaluations: at least one
    # of them must find every block in its worker's cache.
    tries = MISS_STREAK - 1
    for _ in range(tries):
        cached = objective(w)
    assert objective.payload_jobs < 1 + tries  # the workers kept the blocks
    # a key no worker knows: every block misses its worker cache and comes from Spark's
    key = blocks.key
    blocks.key = "unknown"
    before = objective.payload_jobs
    again = objective(w)
    assert objective.payload_jobs == before + 1
    blocks.key = key
    for ev in (cached, again):
        assert ev.cost == first.cost and ev.val_sse == first.val_sse
        np.testing.assert_array_equal(ev.grad, first.grad)
    # and the reference agrees
    a = data.arrays()
    train = ~a[IS_VAL]
    y = a["rating"] - data.normalization.offsets(a[ITEM_IDX])
    ref = biased_cost_and_gradients(
        layout.X(w),
        layout.Theta(w),
        layout.item_bias(w),
        layout.user_bias(w),
        a[ITEM_IDX][train],
        a[USER_IDX][train],
        y[train],
        1.0,
    )[0]
    assert first.cost == pytest.approx(ref, rel=TOL)
    blocks.unpersist()
    data.ratings.unpersist()


def test_preconditioned_lbfgs_on_spark_follows_the_reference(small_data):
    from spark_cf.reference.verify import reference_for

    cfg = small_config(optimizer="lbfgs", lbfgs_precondition="counts", max_iter=25)
    model, result = train_with_config(small_data, cfg)
    reference, layout = reference_for(small_data, cfg)
    plain_cfg = small_config(optimizer="lbfgs", lbfgs_precondition="none", max_iter=25)
    _, plain = train_with_config(small_data, plain_cfg)
    # the preconditioner changes the path: the plain run lands elsewhere
    assert abs(plain.final_cost - result.final_cost) > 1e-6 * result.final_cost
    assert result.iterations == reference.iterations
    np.testing.assert_allclose(
        [h["cost"] for h in result.history],
        [h["cost"] for h in reference.history],
        rtol=LBFGS_TRAJECTORY_TOLERANCE,
    )
    np.testing.assert_allclose(
        model.item_factors, layout.X(reference.w), atol=LBFGS_TRAJECTORY_TOLERANCE
    )
