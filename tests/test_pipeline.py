"""The nightly pipeline on real Parquet files: published tables, their schemas and values
(checked against NumPy on the saved factors, read back with pyarrow), cold start, a
block-structured set with a known top-N, atomic publishing, identical reruns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from spark_cf.config import Config
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.errors import ModelError
from spark_cf.model.persistence import load_model
from spark_cf.nightly.run import run_nightly
from spark_cf.outputs import publish

pytestmark = pytest.mark.spark


def read(path: Path) -> pa.Table:
    return pq.read_table(str(path))


def factors(run: Path):
    """The saved model, read with pyarrow alone, as dicts raw id -> values."""
    users = read(run / "model" / "user_factors")
    items = read(run / "model" / "item_factors")
    theta = {
        u: np.array(f) for u, f in zip(users["user_id"].to_pylist(), users["features"].to_pylist())
    }
    x = {
        i: np.array(f) for i, f in zip(items["item_id"].to_pylist(), items["features"].to_pylist())
    }
    mean = dict(zip(items["item_id"].to_pylist(), items["mean"].to_pylist()))
    return theta, x, mean


@pytest.fixture(scope="module")
def ratings_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("nightly") / "ratings.parquet"
    write_parquet(
        SyntheticSpec(num_users=200, num_items=120, num_ratings=4000, true_rank=3, seed=5),
        str(path),
    )
    return str(path)


def config(ratings_path: str, root: Path, **sections) -> Config:
    base = {
        "input": {"path": ratings_path, "timestamp_col": "timestamp", "duplicates": "latest"},
        "model": {"rank": 4, "reg": 1.0},
        "train": {"optimizer": "lbfgs", "max_iter": 15, "num_user_blocks": 2},
        "evaluate": {"holdout_fraction": 0.2, "k": 5},
        "recommend": {"top_n": 5, "block_size": 64},
        "output": {"root": str(root), "run_date": "2026-01-02"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Config().replace(**base)


@pytest.fixture(scope="module")
def published(spark, ratings_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    outcome = run_nightly(spark, config(ratings_path, root))
    return Path(outcome.path), outcome


def test_run_layout_and_metrics(published, ratings_path):
    run, outcome = published
    assert run.name == "run_date=2026-01-02"
    for name in (
        "model/user_factors",
        "model/item_factors",
        "model/metadata.json",
        "predictions",
        "top_n",
        "quarantine",
        "metrics.json",
        "convergence.png",
        "_SUCCESS",
    ):
        assert (run / name).exists(), name
    assert not [p for p in run.parent.iterdir() if p.name.startswith("_staging")]
    metrics = json.loads((run / "metrics.json").read_text())
    raw = read(Path(ratings_path))
    ingest = metrics["ingest"]
    assert ingest["rows_read"] == raw.num_rows == ingest["rows_used"]
    history = metrics["training"]["history"]
    assert history[0]["iteration"] == 0 and len(history) == metrics["training"]["iterations"] + 1
    assert all(b["cost"] <= a["cost"] for a, b in zip(history, history[1:]))
    assert {
        "ingest",
        "prepare",
        "train",
        "evaluate",
        "predict",
        "top_n",
        "total",
    } <= set(metrics["timings_s"])
    ev = metrics["evaluation"]
    assert ev["model"]["rmse"] < ev["item_mean"]["rmse"] < ev["global_mean"]["rmse"]
    assert "rmse" in outcome.table and "ndcg@5" in outcome.table
    meta = json.loads((run / "model" / "metadata.json").read_text())
    assert meta["rank"] == 4 and meta["global_mean"] == 0.0
    assert meta["config"]["model"]["reg"] == 1.0 and meta["software"]["pyspark"]
    assert (run / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_schemas(published):
    run, _ = published
    users = read(run / "model" / "user_factors")
    assert users.schema.field("user_id").type == pa.int64()
    assert users.schema.field("features").type == pa.list_(pa.float64())
    items = read(run / "model" / "item_factors")
    assert set(items.column_names) == {"item_id", "features", "mean"}
    preds = read(run / "predictions")
    assert preds.column_names == ["user_id", "item_id", "prediction"]
    top = read(run / "top_n")
    assert top.column_names == ["user_id", "rank", "item_id", "score"]
    assert top.schema.field("rank").type == pa.int32()


def test_predictions_equal_factors_plus_means(published, ratings_path):
    run, _ = published
    theta, x, mean = factors(run)
    preds = read(run / "predictions")
    metrics = json.loads((run / "metrics.json").read_text())
    assert preds.num_rows == metrics["rows_written"]["predictions"] > 0
    for u, i, p in zip(*(preds[c].to_pylist() for c in ("user_id", "item_id", "prediction"))):
        expected = float(np.clip(theta[u] @ x[i] + mean[i], 0.5, 5.0))
        assert p == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_top_n_equals_independent_scores(published, ratings_path):
    run, _ = published
    theta, x, mean = factors(run)
    raw = read(Path(ratings_path))
    rated: dict[int, set] = {}
    for u, i in zip(raw["user_id"].to_pylist(), raw["item_id"].to_pylist()):
        rated.setdefault(u, set()).add(i)
    top = read(run / "top_n")
    items = sorted(x)
    by_user: dict[int, list] = {}
    for u, r, i, s in zip(*(top[c].to_pylist() for c in ("user_id", "rank", "item_id", "score"))):
        by_user.setdefault(u, []).append((r, i, s))
    # every user with an item left to recommend gets a list (one synthetic user rated all)
    assert set(by_user) == {u for u in theta if len(rated[u]) < len(items)}
    for u in sorted(by_user)[:60]:
        scores = [(-(theta[u] @ x[i] + mean[i]), i) for i in items if i not in rated[u]]
        want = sorted(scores)[:5]
        got = sorted(by_user[u])
        assert [r for r, _, _ in got] == [1, 2, 3, 4, 5]
        assert [i for _, i, _ in got] == [i for _, i in want]
        np.testing.assert_allclose([s for _, _, s in got], [-s for s, _ in want], rtol=1e-12)


def test_model_loads_back(spark, published):
    run, _ = published
    model = load_model(spark, str(run / "model"))
    theta, x, mean = factors(run)
    ids = model.index.user_ids.to_pylist()
    np.testing.assert_array_equal(model.user_factors, np.array([theta[u] for u in ids]))
    assert model.index.item_ids.to_pylist() == sorted(x)


def checkerboard(tmp_path: Path) -> str:
    """Users 0-19 love items 0-9 and dislike 10-19; users 20-39 the other way round. Each
    user rated all but two of their liked items, so those two are the right top-2."""
    rows = []
    for u in range(40):
        liked = range(10) if u < 20 else range(10, 20)
        held = {liked[u % 10], liked[(u + 1) % 10]}
        for i in range(20):
            if i in held:
                continue
            rows.append((u, i, 5.0 if i in liked else 1.0))
    users, items, ratings = zip(*rows)
    path = tmp_path / "board.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "item_id": pa.array(items, pa.int64()),
                "rating": pa.array(ratings),
            }
        ),
        path,
    )
    return str(path)


def test_checkerboard_top_two_are_the_unrated_liked_items(spark, tmp_path):
    cfg = config(
        checkerboard(tmp_path),
        tmp_path / "out",
        input={"timestamp_col": "", "duplicates": "error"},
        model={"rank": 2, "reg": 0.1, "mean_normalization": False},
        train={"max_iter": 200},
        evaluate={"holdout_fraction": 0.0},
        recommend={"top_n": 2},
    )
    run = Path(run_nightly(spark, cfg).path)
    top = read(run / "top_n")
    got: dict[int, set] = {}
    for u, i in zip(top["user_id"].to_pylist(), top["item_id"].to_pylist()):
        got.setdefault(u, set()).add(i)
    for u in range(40):
        liked = range(10) if u < 20 else range(10, 20)
        assert got[u] == {liked[u % 10], liked[(u + 1) % 10]}, u


def test_cold_start_and_unknown_item_policies(spark, ratings_path, tmp_path):
    raw = read(Path(ratings_path))
    known_user, known_item = raw["user_id"][0].as_py(), raw["item_id"][0].as_py()
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([known_user, 10**9, known_user], pa.int64()),
                "item_id": pa.array([known_item, known_item, 10**9], pa.int64()),
            }
        ),
        pairs,
    )
    results = {}
    for policy in ("nan", "drop", "global_mean"):
        cfg = config(
            ratings_path, tmp_path / policy, predict={"pairs": str(pairs), "unknown_item": policy}
        )
        run = Path(run_nightly(spark, cfg).path)
        results[policy] = read(run / "predictions").to_pylist()
        theta, x, mean = factors(run)
        meta = json.loads((run / "model" / "metadata.json").read_text())
    nan_rows = {(r["user_id"], r["item_id"]): r["prediction"] for r in results["nan"]}
    # a user the model never saw gets the item mean
    assert nan_rows[(10**9, known_item)] == pytest.approx(mean[known_item])
    assert nan_rows[(known_user, known_item)] == pytest.approx(
        np.clip(theta[known_user] @ x[known_item] + mean[known_item], 0.5, 5)
    )
    assert np.isnan(nan_rows[(known_user, 10**9)])
    assert len(results["drop"]) == 2 and all(r["item_id"] != 10**9 for r in results["drop"])
    gm = {(r["user_id"], r["item_id"]): r["prediction"] for r in results["global_mean"]}
    assert gm[(known_user, 10**9)] == pytest.approx(meta["rating_mean"])
    train_mean = meta["rating_mean"]
    assert 0.5 < train_mean < 5.0


def snapshot(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_failed_run_leaves_published_run_untouched(spark, ratings_path, tmp_path, monkeypatch):
    root = tmp_path / "out"
    run = Path(run_nightly(spark, config(ratings_path, root)).path)
    before = snapshot(run)
    steps: list[str] = []

    def fail_once_staged(step: str) -> None:
        steps.append(step)
        if step == "staged":  # every table of the new run written, nothing swapped yet
            raise RuntimeError("disk full")

    monkeypatch.setattr(publish, "fault_hook", fail_once_staged)
    with pytest.raises(RuntimeError, match="disk full"):
        run_nightly(spark, config(ratings_path, root, model={"rank": 3}))
    assert steps == ["locked", "recovered", "staged"]
    assert snapshot(run) == before
    assert sorted(os.listdir(root)) == ["run_date=2026-01-02"]  # no staging left behind


def test_rerun_of_a_date_gives_identical_tables(spark, ratings_path, tmp_path):
    root = tmp_path / "out"
    first = Path(run_nightly(spark, config(ratings_path, root)).path)
    tables = {
        name: read(first / name)
        for name in ("model/user_factors", "model/item_factors", "predictions", "top_n")
    }
    second = Path(run_nightly(spark, config(ratings_path, root)).path)
    assert second == first
    for name, table in tables.items():
        again = read(second / name)
        key = [(c, "ascending") for c in table.column_names if c in ("user_id", "item_id", "rank")]
        assert again.take(pc.sort_indices(again, key)).equals(
            table.take(pc.sort_indices(table, key))
        ), name


def test_warm_start_latest_starts_from_the_previous_runs_model(spark, ratings_path, tmp_path):
    root = tmp_path / "out"
    first_cfg = config(ratings_path, root, train={"warm_start": "latest"})
    first = run_nightly(spark, first_cfg)  # nothing published before: a random start
    first_meta = json.loads((Path(first.path) / "model" / "metadata.json").read_text())
    assert first_meta["config"]["train"]["warm_start"] == ""
    later = config(
        ratings_path, root, train={"warm_start": "latest"}, output={"run_date": "2026-01-03"}
    )
    second = run_nightly(spark, later)
    meta = json.loads((Path(second.path) / "model" / "metadata.json").read_text())
    assert meta["config"]["train"]["warm_start"].endswith("run_date=2026-01-02/model")
    # same data, split and normalisation: the second run starts where the first ended
    first_history = first.metrics["training"]["history"]
    second_history = second.metrics["training"]["history"]
    assert second_history[0]["cost"] == pytest.approx(first_history[-1]["cost"], rel=1e-9)
    assert second_history[0]["cost"] < first_history[0]["cost"] / 2
    # an earlier date never starts from a later run
    earlier = config(
        ratings_path, root, train={"warm_start": "latest"}, output={"run_date": "2026-01-01"}
    )
    third = run_nightly(spark, earlier)
    assert third.metrics["training"]["history"][0]["cost"] == first_history[0]["cost"]
    # "latest" naming a model of another rank is refused before the ratings are read (the
    # input here does not exist: reading it would fail otherwise)
    other_rank = config(
        ratings_path,
        root,
        model={"rank": 5},
        train={"warm_start": "latest"},
        input={"path": str(tmp_path / "not-read")},
        output={"run_date": "2026-01-04"},
    )
    with pytest.raises(ModelError, match=r"rank 4 but model.rank = 5"):
        run_nightly(spark, other_rank)
