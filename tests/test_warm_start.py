"""Warm starts carry a previous model's rows over by raw id; a caller can stop a run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from spark_cf.data.indexing import IdIndex
from spark_cf.errors import ModelError
from spark_cf.model.cf_model import CFModel
from spark_cf.reference.numpy_cf import ReferenceObjective
from spark_cf.training.fit import warm_start_parameters
from spark_cf.training.loop import minimize
from spark_cf.training.optimizers import OptimizerSettings, make_optimizer
from spark_cf.training.params import Layout, initial_parameters


def previous_model(rank: int = 2, biases: bool = True) -> CFModel:
    index = IdIndex(pa.array([10, 20, 30], pa.int64()), pa.array(["a", "b"]))
    rng = np.random.default_rng(3)
    return CFModel(
        index=index,
        item_factors=rng.standard_normal((2, rank)),
        user_factors=rng.standard_normal((3, rank)),
        item_means=np.zeros(2),
        global_mean=3.0,
        item_bias=rng.standard_normal(2) if biases else None,
        user_bias=rng.standard_normal(3) if biases else None,
    )


def test_rows_are_matched_by_raw_id_and_new_ones_keep_their_random_start():
    old = previous_model()
    index = IdIndex(pa.array([20, 30, 40], pa.int64()), pa.array(["b", "c"]))
    layout = Layout(num_items=2, num_users=3, rank=2, biases=True)
    w0 = initial_parameters(layout, init_scale=0.1, seed=1)
    w = warm_start_parameters(old, layout, index, w0)
    np.testing.assert_array_equal(layout.Theta(w)[:2], old.user_factors[[1, 2]])
    np.testing.assert_array_equal(layout.Theta(w)[2], layout.Theta(w0)[2])  # user 40 is new
    np.testing.assert_array_equal(layout.X(w)[0], old.item_factors[1])  # "b"
    np.testing.assert_array_equal(layout.X(w)[1], layout.X(w0)[1])  # "c" is new
    np.testing.assert_array_equal(layout.user_bias(w), [old.user_bias[1], old.user_bias[2], 0])
    np.testing.assert_array_equal(layout.item_bias(w), [old.item_bias[1], 0])
    assert not np.shares_memory(w, w0)


def test_a_model_without_biases_leaves_the_biases_at_zero():
    old = previous_model(biases=False)
    layout = Layout(num_items=2, num_users=3, rank=2, biases=True)
    w = warm_start_parameters(
        old, layout, old.index, initial_parameters(layout, init_scale=0.1, seed=1)
    )
    np.testing.assert_array_equal(layout.Theta(w), old.user_factors)
    assert not layout.user_bias(w).any() and not layout.item_bias(w).any()


def test_another_rank_is_refused_naming_both():
    layout = Layout(num_items=2, num_users=3, rank=3)
    w0 = initial_parameters(layout, init_scale=0.1, seed=1)
    with pytest.raises(ModelError, match=r"has rank 2, this fit.s model.rank \(rank\) = 3"):
        warm_start_parameters(previous_model(rank=2), layout, previous_model().index, w0)


def test_stop_when_ends_the_run_at_the_first_record_it_accepts():
    rng = np.random.default_rng(0)
    layout = Layout(num_items=6, num_users=5, rank=2)
    items, users = np.divmod(rng.permutation(30)[:20], 5)
    objective = ReferenceObjective(layout, items, users, rng.standard_normal(20), 0.5)
    seen = []

    def stop_when(record):
        seen.append(record["iteration"])
        return record["cost"] < 0.9 * first_cost

    w0 = initial_parameters(layout, init_scale=0.5, seed=2)
    first_cost = objective(w0).cost
    optimizer = make_optimizer("gd", OptimizerSettings(learning_rate=0.05), layout.size)
    result = minimize(objective, w0, optimizer, max_iter=500, tol=0.0, stop_when=stop_when)
    assert result.stop_reason == "stop_when"
    assert seen == list(range(1, result.iterations + 1))
    costs = [h["cost"] for h in result.history]
    assert costs[-1] < 0.9 * first_cost <= costs[-2]
