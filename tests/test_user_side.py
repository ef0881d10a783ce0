"""Training with the user side on the executors (train.user_side = "executors",
spark_cf.training.partitioned) on local[2]: the same trajectory as the driver's path
(bit for bit for the elementwise optimisers, to rounding for L-BFGS), the same bits
whatever the input partitioning, checkpoints and resume, no user-sized vector on the
driver while training, and 1,000 iterations without a growing lineage."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark import SparkContext
from pyspark.rdd import RDD

from spark_cf.config import Config
from spark_cf.data.prepare import prepare
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.nightly.run import train_with_config
from spark_cf.reference.verify import LBFGS_TRAJECTORY_TOLERANCE
from spark_cf.training import partitioned
from spark_cf.training.fit import _block, fit
from spark_cf.training.objective import RATINGS_COST

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def ratings(spark, tmp_path_factory):
    path = tmp_path_factory.mktemp("user_side") / "ratings.parquet"
    write_parquet(
        SyntheticSpec(
            num_users=150, num_items=60, num_ratings=2400, true_rank=3, noise=0.5, seed=8
        ),
        str(path),
    )
    return spark.read.parquet(str(path)).select("user_id", "item_id", "rating")


@pytest.fixture(scope="module")
def biased_data(ratings):
    data = prepare(
        ratings, holdout_fraction=0.2, split="random", seed=3, mean_normalization=True, biases=True
    )
    yield data
    data.ratings.unpersist()


@pytest.fixture(scope="module")
def blocks(biased_data):
    """The blocks of ``biased_data`` on config()'s 3 x 2 grid, shared by the runs."""
    b = _block(biased_data, RATINGS_COST, 3, 2)
    yield b
    b.unpersist()


def config(**train) -> Config:
    settings = {
        "max_iter": 8,
        "tol": 0.0,
        "num_user_blocks": 3,
        "num_item_blocks": 2,
        "learning_rate": 0.002,
        **train,
    }
    return Config().replace(model={"rank": 3, "reg": 0.5, "biases": True}, train=settings)


def both_sides(data, cfg: Config, blocks):
    runs = {}
    for side in ("driver", "executors"):
        model, result = train_with_config(
            data, cfg.replace(train={"user_side": side}), blocks=blocks
        )
        assert result.extra["user_side"] == side
        runs[side] = (model, result)
    return runs["driver"], runs["executors"]


def factors(model) -> np.ndarray:
    return np.concatenate(
        [
            model.item_factors.ravel(),
            model.user_factors.ravel(),
            model.item_bias,
            model.user_bias,
        ]
    )


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_elementwise_optimisers_on_the_executors_give_the_driver_paths_bits(
    biased_data, blocks, optimizer
):
    """gd and adam here; momentum and nesterov are the same elementwise rules on slices
    (test_slices checks every rule slice by slice against the whole vector)."""
    lr = 0.01 if optimizer == "adam" else 0.002
    (dm, dr), (em, er) = both_sides(
        biased_data, config(optimizer=optimizer, learning_rate=lr), blocks
    )
    assert er.iterations == dr.iterations == 8
    # the gradients are summed in the same order on both paths, and the rules are
    # elementwise: the same parameters, bit for bit
    np.testing.assert_array_equal(factors(em), factors(dm))
    # the cost's w . w is summed slice by slice on the executors: equal to rounding
    np.testing.assert_allclose(
        [h["cost"] for h in er.history], [h["cost"] for h in dr.history], rtol=1e-12
    )
    assert [h["val_rmse"] for h in er.history] == [h["val_rmse"] for h in dr.history]


def test_vector_free_lbfgs_on_the_executors_follows_the_driver_paths_lbfgs(biased_data, blocks):
    """With the curvature preconditioner (the default); test_slices checks the compact
    direction against the two-loop recursion for all three preconditioners."""
    cfg = config(optimizer="lbfgs", max_iter=12, lbfgs_memory=4)
    (dm, dr), (em, er) = both_sides(biased_data, cfg, blocks)
    assert er.iterations == dr.iterations == 12
    assert er.evaluations == dr.evaluations
    # the compact form and the two-loop recursion are the same matrix; they differ by
    # rounding, which L-BFGS amplifies (the bound of the reference's lockstep check)
    scale = np.abs(factors(dm)).max()
    assert np.abs(factors(em) - factors(dm)).max() <= LBFGS_TRAJECTORY_TOLERANCE * scale
    np.testing.assert_allclose(
        [h["cost"] for h in er.history],
        [h["cost"] for h in dr.history],
        rtol=LBFGS_TRAJECTORY_TOLERANCE,
    )


def test_the_ranking_objective_on_the_executors_follows_the_driver_path(ratings):
    data = prepare(
        ratings, holdout_fraction=0.2, split="random", seed=3, mean_normalization=True, biases=True
    )
    runs = {}
    try:
        for side in ("driver", "executors"):
            runs[side] = fit(
                data,
                rank=3,
                reg_param=2.0,
                biases=True,
                objective="ranking",
                alpha=0.5,
                max_iter=10,
                tol=0.0,
                num_user_blocks=3,
                num_item_blocks=2,
                user_side=side,
            )
    finally:
        data.ratings.unpersist()
    (dm, dr), (em, er) = runs["driver"], runs["executors"]
    assert er.iterations == dr.iterations == 10
    scale = np.abs(factors(dm)).max()
    assert np.abs(factors(em) - factors(dm)).max() <= LBFGS_TRAJECTORY_TOLERANCE * scale


def test_the_reg_grid_on_the_executors_chooses_as_on_the_driver(biased_data, blocks):
    """model.reg = "auto" with the user side on the executors: each value trains with its
    own states (sharing the cached ratings by user block) and the choice and the model
    are the driver's grid's."""
    runs = {}
    for side in ("driver", "executors"):
        runs[side] = fit(
            biased_data,
            rank=3,
            biases=True,
            reg_param="auto",
            reg_grid=(0.5, 5.0),
            max_iter=6,
            tol=0.0,
            user_side=side,
            blocks=blocks,
        )
    (dm, dr), (em, er) = runs["driver"], runs["executors"]
    assert er.extra["reg"] == dr.extra["reg"]
    assert [r["iterations"] for r in er.extra["reg_grid"]] == [
        r["iterations"] for r in dr.extra["reg_grid"]
    ]
    scale = np.abs(factors(dm)).max()
    assert np.abs(factors(em) - factors(dm)).max() <= LBFGS_TRAJECTORY_TOLERANCE * scale
    assert len(blocks.derived) == 1  # one cached copy of the ratings by user block


def test_the_executors_path_gives_the_same_bits_whatever_the_input_partitioning(ratings):
    cfg = config(optimizer="lbfgs", max_iter=6, user_side="executors")
    models = []
    for parts in (1, 7):
        data = prepare(
            ratings.repartition(parts),
            holdout_fraction=0.2,
            split="random",
            seed=3,
            mean_normalization=True,
            biases=True,
        )
        try:
            models.append(train_with_config(data, cfg))
        finally:
            data.ratings.unpersist()
    (a, ra), (b, rb) = models
    np.testing.assert_array_equal(factors(a), factors(b))
    assert [h["cost"] for h in ra.history] == [h["cost"] for h in rb.history]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_checkpoint_and_resume_on_the_executors_equal_the_uninterrupted_run(
    biased_data, blocks, tmp_path, optimizer
):
    cfg = config(
        optimizer=optimizer,
        learning_rate=0.01,
        max_iter=8,
        user_side="executors",
        lbfgs_memory=3,
    )
    full_model, full = train_with_config(biased_data, cfg, blocks=blocks)
    ckpt = cfg.replace(train={"checkpoint_every": 3, "checkpoint_dir": str(tmp_path / "c")})

    class Killed(Exception):
        pass

    def kill_at_5(iteration, elapsed, cost):
        if iteration == 5:
            raise Killed

    with pytest.raises(Killed):
        train_with_config(biased_data, ckpt, callback=kill_at_5, blocks=blocks)
    model, result = train_with_config(
        biased_data, ckpt.replace(train={"resume": True}), blocks=blocks
    )
    assert result.resumed_from == 3
    np.testing.assert_array_equal(factors(model), factors(full_model))
    assert [h["cost"] for h in result.history] == [h["cost"] for h in full.history]


class Recorder:
    """Records the largest float array the driver receives from a Spark job (``collect``)
    and sends in a broadcast, outside the start and the final gather (patched in)."""

    def __init__(self) -> None:
        self.collected = 0
        self.broadcast = 0
        self.quiet = False

    @staticmethod
    def largest(obj, depth: int = 0) -> int:
        if isinstance(obj, np.ndarray):
            return obj.size
        if depth > 6:
            return 0
        if isinstance(obj, dict):
            return max((Recorder.largest(v, depth + 1) for v in obj.values()), default=0)
        if isinstance(obj, (list, tuple)):
            return max((Recorder.largest(v, depth + 1) for v in obj), default=0)
        if hasattr(obj, "__dict__"):
            return Recorder.largest(vars(obj), depth + 1)
        return 0

    def install(self, monkeypatch) -> None:
        collect, broadcast = RDD.collect, SparkContext.broadcast
        gather = partitioned.PartitionedObjective.gather
        recorder = self

        def recording_collect(rdd):
            out = collect(rdd)
            if not recorder.quiet:
                recorder.collected = max(recorder.collected, Recorder.largest(out))
            return out

        def recording_broadcast(sc, value):
            if not recorder.quiet:
                recorder.broadcast = max(recorder.broadcast, Recorder.largest(value))
            return broadcast(sc, value)

        def quiet_gather(engine, *args, **kwargs):
            recorder.quiet = True
            try:
                return gather(engine, *args, **kwargs)
            finally:
                recorder.quiet = False

        monkeypatch.setattr(RDD, "collect", recording_collect)
        monkeypatch.setattr(SparkContext, "broadcast", recording_broadcast)
        monkeypatch.setattr(partitioned.PartitionedObjective, "gather", quiet_gather)


def test_the_driver_receives_no_user_sized_vector_while_training(spark, tmp_path, monkeypatch):
    """Many users, few items: on the executors' path nothing the driver collects or
    broadcasts while training is larger than the item side (twice, with the curvature);
    the same recorder on the driver's path sees the user-sized vectors."""
    path = tmp_path / "ratings.parquet"
    write_parquet(
        SyntheticSpec(num_users=3000, num_items=40, num_ratings=9000, true_rank=3, seed=2),
        str(path),
    )
    df = spark.read.parquet(str(path)).select("user_id", "item_id", "rating")
    data = prepare(
        df, holdout_fraction=0.1, split="random", seed=1, mean_normalization=True, biases=True
    )
    rank = 4
    seen = {}
    blocks = _block(data, RATINGS_COST, 3, 1)  # its setup collects per-user counts, once
    try:
        for side in ("driver", "executors"):
            recorder = Recorder()
            with monkeypatch.context() as patch:
                recorder.install(patch)
                model, result = fit(
                    data,
                    rank=rank,
                    biases=True,
                    max_iter=6,
                    blocks=blocks,
                    user_side=side,
                )
            seen[side] = (recorder.collected, recorder.broadcast)
            assert result.iterations == 6
    finally:
        blocks.unpersist()
        data.ratings.unpersist()
    users, items = data.index.num_users, data.index.num_items
    user_side = users * (rank + 1)
    item_side = items * (rank + 1)
    assert user_side > 20 * item_side
    collected, broadcast = seen["executors"]
    assert 0 < collected <= 2 * item_side  # the gradient's and curvature's item part
    assert 0 < broadcast <= items * rank
    # the recorder does see user-sized vectors when they travel (the driver's path)
    assert seen["driver"][0] >= users * rank // 3 and seen["driver"][1] >= user_side


def long_run(spark, iterations: int, probes: tuple[int, int]) -> tuple[object, list[int]]:
    """gd on a tiny set with the user side on the executors; the number of lines of the
    current states' lineage (as Spark prints it) at the two ``probes`` iterations."""
    df = spark.createDataFrame(
        [(1, 1, 4.0), (1, 2, 3.0), (2, 1, 5.0), (3, 2, 2.0)],
        "user_id long, item_id long, rating double",
    )
    data = prepare(
        df, holdout_fraction=0.0, split="random", seed=0, mean_normalization=True, biases=False
    )
    lineages: list[int] = []
    engines: list = []

    def record(iteration, elapsed, cost):
        if iteration in probes:
            lineages.append(engines[-1].state.toDebugString().count(b"\n"))

    original = partitioned.PartitionedObjective.__init__

    def keep(self, *args, **kwargs):
        original(self, *args, **kwargs)
        engines.append(self)

    partitioned.PartitionedObjective.__init__ = keep
    try:
        _, result = fit(
            data,
            rank=2,
            reg_param=0.1,
            optimizer="gd",
            learning_rate=0.05,
            max_iter=iterations,
            tol=0.0,
            num_user_blocks=1,
            num_item_blocks=1,
            user_side="executors",
            callback=record,
        )
    finally:
        partitioned.PartitionedObjective.__init__ = original
        data.ratings.unpersist()
    assert result.iterations == iterations
    costs = np.array([h["cost"] for h in result.history])
    assert np.all(np.diff(costs) <= 1e-12)
    return result, lineages


def test_the_states_lineage_is_cut_and_does_not_grow(spark):
    """The cached states are a chain of RDDs, one per evaluation; the chain is cut every
    LINEAGE_CHECKPOINT_EVERY evaluations, so the lineage Spark prints at iteration 59
    (60 evaluations: just cut) is shorter than at iteration 15 and bounded. (A lineage
    that grew would end in a StackOverflowError while a task is serialised; the
    1,000-iteration run below checks that end to end.)"""
    _, lineages = long_run(spark, 60, (15, 59))
    assert len(lineages) == 2 and lineages[1] < lineages[0], lineages


@pytest.mark.extended
def test_a_thousand_iterations_on_the_executors_do_not_grow_the_lineage(spark):
    """1,000 iterations with the user side on the executors (about 3 minutes on 2 cores,
    so make test-all runs it; test_the_states_lineage_is_cut_and_does_not_grow keeps its
    coverage in make test: the lineage is cut and bounded)."""
    _, lineages = long_run(spark, 1000, (15, 999))
    assert len(lineages) == 2 and lineages[1] <= lineages[0], lineages
