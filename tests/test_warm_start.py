"""Warm starts carry a previous model's rows over by raw id; a caller can stop a run; the
loop checkpoints through whatever checkpointer it is given; the plain fit's arguments."""

from __future__ import annotations

import inspect

import numpy as np
import pyarrow as pa
import pytest

from spark_cf.config import Config, fit_arguments
from spark_cf.data.indexing import IdIndex
from spark_cf.errors import ModelError
from spark_cf.model.cf_model import CFModel
from spark_cf.reference.numpy_cf import ReferenceObjective
from spark_cf.training.checkpoints import Checkpointer, from_train_config
from spark_cf.training.fit import fit, warm_start_parameters
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


class InMemoryCheckpointer:
    """A checkpointer that keeps its states in a dict: the loop needs no files."""

    def __init__(self, every: int, resume: bool, states: dict | None = None) -> None:
        self.every, self.resume = every, resume
        self.states = states if states is not None else {}
        self.saved: list[int] = []

    def load(self, fingerprint):
        return self.states.get(fingerprint) if self.resume else None

    def due(self, iteration):
        return iteration % self.every == 0

    def save(self, fingerprint, state):
        self.saved.append(state["iteration"])
        self.states[fingerprint] = {
            **state,
            "w": state["w"].copy(),
            "history": [dict(h) for h in state["history"]],
        }


def test_the_loop_checkpoints_through_the_checkpointer_it_is_given_and_resumes_bit_identically():
    rng = np.random.default_rng(1)
    layout = Layout(num_items=6, num_users=5, rank=2)
    items, users = np.divmod(rng.permutation(30)[:20], 5)
    objective = ReferenceObjective(layout, items, users, rng.standard_normal(20), 0.5)
    w0 = initial_parameters(layout, init_scale=0.5, seed=2)

    def run(max_iter, checkpointer):
        optimizer = make_optimizer("adam", OptimizerSettings(learning_rate=0.05), layout.size)
        return minimize(
            objective,
            w0,
            optimizer,
            max_iter=max_iter,
            tol=0.0,
            checkpointer=checkpointer,
            fingerprint="f1",
        )

    full = run(12, None)
    first = InMemoryCheckpointer(every=4, resume=False)
    run(9, first)  # stopped after 9: the last state kept is iteration 8's
    assert first.saved == [4, 8]
    resumed = run(12, InMemoryCheckpointer(every=4, resume=True, states=first.states))
    assert resumed.resumed_from == 8
    np.testing.assert_array_equal(resumed.w, full.w)
    assert [h["cost"] for h in resumed.history] == [h["cost"] for h in full.history]


def test_jobs_build_a_file_checkpointer_from_the_train_section(tmp_path):
    cfg = Config().replace(
        train={"checkpoint_dir": str(tmp_path), "checkpoint_every": 5, "resume": True}
    )
    assert from_train_config(cfg.train) == Checkpointer(str(tmp_path), 5, True)
    assert from_train_config(Config().train) is None
    ck = Checkpointer(str(tmp_path), every=5)
    assert [i for i in range(1, 16) if ck.due(i)] == [5, 10, 15]
    assert ck.load("any") is None  # not resuming: nothing is read


def test_the_plain_fits_defaults_are_the_configs():
    """Every default of fit is the config's, but reg_param: the config's "auto" needs
    held-out ratings, so fit's default is the number LIBRARY_REG (as SparkCF's)."""
    from spark_cf.config import AUTO, LIBRARY_REG

    defaults = {
        name: p.default
        for name, p in inspect.signature(fit).parameters.items()
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
    }
    arguments = fit_arguments(Config())
    assert arguments.pop("reg_param") == Config().model.reg == AUTO
    assert defaults["reg_param"] == LIBRARY_REG == 10.0
    assert {k: defaults[k] for k in arguments} == arguments
