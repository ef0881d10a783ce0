"""model.reg = "auto": a grid of regularisations trained side by side in the same Spark
jobs, the one with the lowest held-out RMSE kept (spark_cf.training.fit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from spark_cf.config import Config
from spark_cf.data.prepare import prepare
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.errors import ConfigError
from spark_cf.nightly.run import run_nightly
from spark_cf.training.checkpoints import Checkpointer
from spark_cf.training.fit import GRID_PATIENCE, HeldOutRising, fit

pytestmark = pytest.mark.spark

GRID = (0.3, 3.0, 30.0)
ARGS = {"rank": 3, "biases": True, "max_iter": 40, "num_user_blocks": 2, "num_item_blocks": 1}


@pytest.fixture(scope="module")
def ratings_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("auto") / "ratings.parquet"
    write_parquet(
        SyntheticSpec(num_users=150, num_items=80, num_ratings=3000, true_rank=3, seed=12),
        str(path),
    )
    return str(path)


@pytest.fixture(scope="module")
def data(spark, ratings_path):
    d = prepare(
        spark.read.parquet(ratings_path),
        holdout_fraction=0.2,
        split="random",
        seed=3,
        mean_normalization=True,
        biases=True,
    )
    yield d
    d.ratings.unpersist()


@pytest.fixture(scope="module")
def auto(data):
    return fit(data, reg_param="auto", reg_grid=GRID, **ARGS)


def test_the_held_out_stop_fires_after_patience_iterations_without_a_new_best():
    rule = HeldOutRising(3)
    rmses = [1.0, 0.9, 0.95, 0.89, 0.9, 0.9, 0.91, 0.5]
    verdicts = [rule({"val_rmse": v}) for v in rmses]
    # the best is 0.89 at index 3; three records without a better one follow
    assert verdicts == [None] * 6 + ["held_out_not_improving", None]
    assert HeldOutRising(1)({"val_rmse": float("nan")}) is None


def test_auto_keeps_the_grid_value_with_the_lowest_held_out_rmse_bit_for_bit_as_alone(data, auto):
    """Each value of the grid, trained alone with the same stop rule, ends where its row
    of the grid says; the returned model is the alone fit of the value with the lowest
    held-out RMSE, bit for bit; the grid took fewer Spark jobs than the fits alone."""
    model, result = auto
    alone = {
        reg: fit(data, reg_param=reg, stop_when=HeldOutRising(GRID_PATIENCE), **ARGS)
        for reg in GRID
    }
    rows = {row["reg"]: row for row in result.extra["reg_grid"]}
    assert sorted(rows) == list(GRID)
    finals = {reg: res.history[-1]["val_rmse"] for reg, (_, res) in alone.items()}
    for reg, (_, res) in alone.items():
        assert rows[reg]["val_rmse"] == finals[reg]
        assert rows[reg]["iterations"] == res.iterations
        assert rows[reg]["stop_reason"] == res.stop_reason
    assert len(set(finals.values())) == len(GRID)  # the choice matters
    best = min(GRID, key=finals.get)
    assert result.extra["reg"] == best and result.extra["reg_auto"] is True
    chosen = alone[best][0]
    np.testing.assert_array_equal(model.item_factors, chosen.item_factors)
    np.testing.assert_array_equal(model.user_factors, chosen.user_factors)
    np.testing.assert_array_equal(model.item_bias, chosen.item_bias)
    np.testing.assert_array_equal(model.user_bias, chosen.user_bias)
    assert result.extra["evaluation_jobs"] < sum(res.evaluations for _, res in alone.values())
    assert result.extra["evaluation_jobs"] == max(res.evaluations for _, res in alone.values())


def test_auto_resumed_from_its_checkpoints_equals_the_uninterrupted_grid(data, auto, tmp_path):
    model, result = auto
    folder = str(tmp_path / "ckpt")
    first, _ = fit(
        data,
        reg_param="auto",
        reg_grid=GRID,
        checkpointer=Checkpointer(folder, every=2),
        **{**ARGS, "max_iter": 5},
    )
    assert sorted(p.name for p in Path(folder).iterdir()) == [f"reg={r:g}" for r in GRID]
    resumed, again = fit(
        data,
        reg_param="auto",
        reg_grid=GRID,
        checkpointer=Checkpointer(folder, every=2, resume=True),
        **ARGS,
    )
    assert again.extra["reg"] == result.extra["reg"]
    assert again.extra["reg_grid"] == result.extra["reg_grid"]
    np.testing.assert_array_equal(resumed.item_factors, model.item_factors)
    np.testing.assert_array_equal(resumed.user_factors, model.user_factors)


def test_auto_without_held_out_ratings_is_refused_naming_the_setting(spark, ratings_path):
    whole = prepare(
        spark.read.parquet(ratings_path),
        holdout_fraction=0.0,
        split="random",
        seed=3,
        mean_normalization=True,
        biases=True,
    )
    with pytest.raises(ValueError, match="evaluate.holdout_fraction"):
        fit(whole, reg_param="auto", **ARGS)
    whole.ratings.unpersist()
    with pytest.raises(ValueError, match="reg_grid"):
        fit(whole, reg_param="auto", reg_grid=(), **ARGS)
    with pytest.raises(ConfigError, match="model.reg.*evaluate.holdout_fraction"):
        Config().replace(model={"reg": "auto"}, evaluate={"holdout_fraction": 0.0})
    with pytest.raises(ConfigError, match='model.reg must be a number or "auto"'):
        Config().replace(model={"reg": "best"})


def test_the_nightly_job_records_the_grid_and_refits_with_the_chosen_reg(
    spark, ratings_path, tmp_path
):
    cfg = Config().replace(
        input={"path": ratings_path, "timestamp_col": "timestamp", "duplicates": "latest"},
        model={"rank": 3, "reg": "auto", "reg_grid": list(GRID), "biases": True},
        train={"max_iter": 30, "num_user_blocks": 2},
        ranking={"enabled": False},
        evaluate={"holdout_fraction": 0.2, "refit": True},
        recommend={"top_n": 3},
        output={"root": str(tmp_path), "run_date": "2026-01-03"},
    )
    outcome = run_nightly(spark, cfg)
    run = Path(outcome.path)
    metrics = json.loads((run / "metrics.json").read_text())
    training = metrics["training"]
    rows = training["reg_grid"]
    assert [r["reg"] for r in rows] == list(GRID)
    chosen = min(rows, key=lambda r: r["val_rmse"])["reg"]
    assert training["reg"] == chosen
    meta = json.loads((run / "model" / "metadata.json").read_text())
    assert meta["reg"] == chosen and meta["reg_auto"] is True and meta["refit"] is True
    # the refit minimised J with the chosen reg over every rating: its recorded final cost
    # is that J of the saved parameters (computed here from the tables)
    users = pq.read_table(run / "model" / "user_factors").to_pydict()
    items = pq.read_table(run / "model" / "item_factors").to_pydict()
    theta = {u: np.array(f) for u, f in zip(users["user_id"], users["features"])}
    x = {i: np.array(f) for i, f in zip(items["item_id"], items["features"])}
    b_u = dict(zip(users["user_id"], users["bias"]))
    b_i = dict(zip(items["item_id"], items["bias"]))
    raw = pq.read_table(ratings_path).to_pydict()
    y = np.array(raw["rating"])
    pred = np.array(
        [
            theta[u] @ x[i] + b_i[i] + b_u[u] + meta["global_mean"]
            for u, i in zip(raw["user_id"], raw["item_id"])
        ]
    )
    squares = sum(float(v @ v) for v in (*theta.values(), *x.values()))
    squares += sum(b * b for b in (*b_u.values(), *b_i.values()))
    J = 0.5 * float(np.sum((pred - y) ** 2)) + 0.5 * chosen * squares
    assert meta["final_cost"] == pytest.approx(J, rel=1e-9)
    assert training["refit"]["iterations"] >= 1


def test_a_diverging_value_is_recorded_and_the_others_still_choose(data):
    """gd diverges above about 2 / (most ratings of a row + reg): a large reg lowers the
    bound, so at this learning rate reg 400 diverges and reg 0.5 does not. The grid
    records the divergence and keeps reg 0.5; a grid where every value diverges fails."""
    from spark_cf.errors import DivergenceError

    gd = {**ARGS, "optimizer": "gd", "learning_rate": 0.01, "max_iter": 30}
    _, result = fit(data, reg_param="auto", reg_grid=(0.5, 400.0), **gd)
    rows = {r["reg"]: r for r in result.extra["reg_grid"]}
    assert rows[400.0]["stop_reason"] == "diverged" and rows[400.0]["val_rmse"] is None
    assert result.extra["reg"] == 0.5 and rows[0.5]["val_rmse"] > 0
    with pytest.raises(DivergenceError):
        fit(data, reg_param="auto", reg_grid=(400.0,), **gd)
