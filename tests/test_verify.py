"""The parity report judges what is identifiable: factors only where trajectories stay
within rounding, predictions and costs always (no JVM needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from spark_cf.data.indexing import IdIndex
from spark_cf.model.cf_model import CFModel
from spark_cf.reference.verify import Lockstep, compare
from spark_cf.training.loop import TrainResult
from spark_cf.training.params import Layout

NUM_ITEMS, NUM_USERS, RANK = 30, 40, 4


def result(w: np.ndarray, costs: list[float]) -> TrainResult:
    history = [{"iteration": i, "cost": c} for i, c in enumerate(costs)]
    return TrainResult(w, history, len(costs) - 1, "max_iter", len(costs), 0.0)


@pytest.fixture
def setting():
    rng = np.random.default_rng(0)
    layout = Layout(NUM_ITEMS, NUM_USERS, RANK, biases=True)
    w = rng.normal(size=layout.size)
    index = IdIndex(pa.array(np.arange(NUM_USERS) + 1000), pa.array(np.arange(NUM_ITEMS) + 5000))
    means = rng.normal(3.0, 0.5, NUM_ITEMS)
    pairs = (rng.integers(0, NUM_ITEMS, 500), rng.integers(0, NUM_USERS, 500))
    lockstep = Lockstep(None, None)  # a lockstep that saw no difference
    return layout, w, index, means, pairs, lockstep


def model_from(layout, w, index, means, *, rotation=None) -> CFModel:
    """The model of ``w``; ``rotation`` turns X and Theta by the same orthogonal matrix,
    which leaves every prediction (and the cost) as it was."""
    x, theta = layout.X(w), layout.Theta(w)
    if rotation is not None:
        x, theta = x @ rotation, theta @ rotation
    return CFModel(index, x, theta, means, 3.2, layout.item_bias(w), layout.user_bias(w))


def rotation(rank: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(rank, rank)))
    return q


def test_rotated_factors_with_equal_predictions_pass_when_factors_are_not_judged(setting):
    layout, w, index, means, pairs, lockstep = setting
    rotated = model_from(layout, w, index, means, rotation=rotation(RANK))
    assert np.max(np.abs(rotated.item_factors - layout.X(w))) > 0.1  # far apart as factors
    costs = [10.0, 5.0, 4.0]
    report = compare(
        rotated,
        result(w, costs),
        (result(w, costs + [3.999999999]), layout),  # one more iteration, same end
        lockstep,
        trajectory_tolerance=1e-6,
        pairs=pairs,
        factors_judged=False,
        prediction_tolerance=1e-9,
    )
    assert report.max_abs_item_factors > 0.1
    assert report.max_abs_prediction < 1e-12
    assert report.trajectory_ok and report.ok
    assert any("not judged" in line for line in report.lines())


def test_rotated_factors_fail_where_factors_are_judged(setting):
    layout, w, index, means, pairs, lockstep = setting
    rotated = model_from(layout, w, index, means, rotation=rotation(RANK))
    costs = [10.0, 5.0, 4.0]
    report = compare(
        rotated,
        result(w, costs),
        (result(w, costs), layout),
        lockstep,
        trajectory_tolerance=1e-6,
        pairs=pairs,
        factors_judged=True,
    )
    assert not report.trajectory_ok
    assert "trajectory (tolerance 1e-06): MISMATCH" in report.lines()[-1]


def test_different_predictions_fail_even_when_factors_are_not_judged(setting):
    layout, w, index, means, pairs, lockstep = setting
    ours = model_from(layout, w, index, means)
    moved = w.copy()
    moved[layout.size - 1] += 0.1  # one user's bias: predictions of that user move
    costs = [10.0, 5.0, 4.0]
    report = compare(
        ours,
        result(w, costs),
        (result(moved, costs), layout),
        lockstep,
        trajectory_tolerance=1e-6,
        pairs=(np.arange(NUM_ITEMS), np.full(NUM_ITEMS, NUM_USERS - 1)),
        factors_judged=False,
    )
    assert report.max_abs_prediction == pytest.approx(0.1)
    assert report.rms_prediction == pytest.approx(0.1)  # every pair compared is that user's
    assert not report.trajectory_ok


def test_a_different_final_cost_fails_when_factors_are_not_judged(setting):
    layout, w, index, means, pairs, lockstep = setting
    ours = model_from(layout, w, index, means)
    report = compare(
        ours,
        result(w, [10.0, 5.0, 4.0]),
        (result(w, [10.0, 5.0, 4.0, 3.9]), layout),  # the reference went on to a lower cost
        lockstep,
        trajectory_tolerance=1e-6,
        pairs=pairs,
        factors_judged=False,
    )
    assert report.rel_final_cost == pytest.approx(0.1 / 3.9)
    assert not report.trajectory_ok


@pytest.mark.spark
def test_verify_with_the_default_optimiser_judges_predictions_not_factors(spark, tmp_path):
    from spark_cf.config import Config
    from spark_cf.data.synthetic import SyntheticSpec, write_parquet
    from spark_cf.nightly.run import ingest_and_prepare
    from spark_cf.reference.verify import LBFGS_PREDICTION_TOLERANCE, verify

    path = tmp_path / "ratings.parquet"
    write_parquet(SyntheticSpec(num_users=60, num_items=40, num_ratings=900, seed=8), str(path))
    cfg = Config().replace(input={"path": str(path)}, model={"reg": 10.0}, train={"max_iter": 30})
    assert cfg.train.optimizer == "lbfgs"  # the default
    assert cfg.train.lbfgs_precondition == "curvature"  # the default
    ingested, data = ingest_and_prepare(spark, cfg, {})
    report = verify(data, cfg)
    ingested.unpersist()
    assert not report.factors_judged
    assert report.ok, report.lines()
    assert report.rms_prediction <= LBFGS_PREDICTION_TOLERANCE
    assert max(report.lockstep_rel_cost, report.lockstep_rel_grad) <= 1e-9
    assert report.lockstep_rel_curvature <= 1e-9
