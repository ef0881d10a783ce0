"""The nightly pipeline on real Parquet files: published tables, their schemas and values
(checked against NumPy on the saved factors, read back with pyarrow), cold start, a
block-structured set with a known top-N, atomic publishing, identical reruns."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
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
ROOT = Path(__file__).resolve().parents[1]


def read(path: Path) -> pa.Table:
    return pq.read_table(str(path))


def factors(run: Path, model: str = "model"):
    """The saved model folder ``model``, read with pyarrow alone, as dicts raw id -> values."""
    users = read(run / model / "user_factors")
    items = read(run / model / "item_factors")
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
        "ranking": {"rank": 4, "max_iter": 10},
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
    popularity = ev["popularity"]
    assert popularity["rmse"] is None and popularity["mae"] is None
    for name in ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k"):
        assert 0 <= popularity[name] <= 1, name
    assert "rmse" in outcome.table and "ndcg@5" in outcome.table
    assert "popularity" in outcome.table and "ranking_model" in outcome.table
    ranked = ev["ranking_model"]
    assert ranked["rmse"] is None and ranked["users"] == popularity["users"] > 0
    assert metrics["top_n_model"] == "ranking_model"
    assert (
        metrics["training_ranking"]["iterations"] >= 1
        and metrics["training_ranking"]["seconds"] > 0
        and "train_ranking" not in metrics["timings_s"]  # one stage trains both models
    )
    ranking_meta = json.loads((run / "ranking_model" / "metadata.json").read_text())
    assert ranking_meta["objective"] == "ranking" and ranking_meta["rank"] == 4
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
    assert set(items.column_names) == {"item_id", "features", "mean", "count"}
    assert items.schema.field("count").type == pa.int64()
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


def test_top_n_equals_independent_scores_of_the_ranking_model(published, ratings_path):
    run, _ = published
    assert json.loads((run / "metrics.json").read_text())["top_n_model"] == "ranking_model"
    theta, x, mean = factors(run, "ranking_model")
    assert not any(mean.values()), "the ranking model has no normalisation"
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


NEW = 10**9  # a user id and an item id the ratings do not have


def write_pairs(path: Path, pairs: list[tuple[int, int]]) -> str:
    users, items = zip(*pairs)
    pq.write_table(
        pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64())}),
        path,
    )
    return str(path)


@pytest.mark.parametrize("policy", ["nan", "drop"])
def test_unknown_users_get_the_item_mean_and_unknown_items_follow_the_policy(
    spark, ratings_path, tmp_path, policy
):
    raw = read(Path(ratings_path))
    known_user, known_item = raw["user_id"][0].as_py(), raw["item_id"][0].as_py()
    pairs = write_pairs(
        tmp_path / "pairs.parquet",
        [(known_user, known_item), (NEW, known_item), (known_user, NEW), (NEW, NEW)],
    )
    # no held-out ratings (so the item means are over all ratings) and a short training:
    # the rules are checked against this run's own factors
    cfg = config(
        ratings_path,
        tmp_path / "out",
        predict={"pairs": pairs, "unknown_item": policy},
        evaluate={"holdout_fraction": 0.0},
        train={"max_iter": 2},
        recommend={"users": [known_user]},
    )
    run = Path(run_nightly(spark, cfg).path)
    theta, x, mean = factors(run)
    rows = {
        (r["user_id"], r["item_id"]): r["prediction"] for r in read(run / "predictions").to_pylist()
    }
    # the item mean, computed here from the ratings, is what a user never seen gets
    item_ratings = pc.filter(raw["rating"], pc.equal(raw["item_id"], known_item)).to_numpy()
    assert rows[(NEW, known_item)] == pytest.approx(float(np.mean(item_ratings)), rel=1e-12)
    assert mean[known_item] == pytest.approx(float(np.mean(item_ratings)), rel=1e-12)
    assert rows[(known_user, known_item)] == pytest.approx(
        float(np.clip(theta[known_user] @ x[known_item] + mean[known_item], 0.5, 5.0)), rel=1e-12
    )
    if policy == "nan":
        assert set(rows) == {
            (known_user, known_item),
            (NEW, known_item),
            (known_user, NEW),
            (NEW, NEW),
        }
        assert np.isnan(rows[(known_user, NEW)]) and np.isnan(rows[(NEW, NEW)])
    else:
        assert set(rows) == {(known_user, known_item), (NEW, known_item)}


# --------------------------------------------------------- the variants the default run leaves out


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def variant(spark, ratings_path, tmp_path_factory):
    """One nightly run of what the default run leaves out: the biased model, refit on all
    ratings, the block grid chosen automatically, top-N for a list of users that names one
    the model does not know, rated items not excluded, and given pairs with unknown users
    and items scored with the global-mean fallback, and the top-N lists scored by that
    ratings model (``ranking.enabled = false``). Also returns the grid log lines."""
    raw = read(Path(ratings_path))
    users = sorted(set(raw["user_id"].to_pylist()))
    items = sorted(set(raw["item_id"].to_pylist()))
    folder = tmp_path_factory.mktemp("variant")
    rated = list(zip(raw["user_id"].to_pylist(), raw["item_id"].to_pylist()))
    pairs = write_pairs(
        folder / "pairs.parquet", rated + [(NEW, items[0]), (users[0], NEW), (NEW, NEW)]
    )
    wanted = [*users[:20], NEW]
    cfg = config(
        ratings_path,
        folder / "out",
        model={"biases": True},
        train={"num_user_blocks": 0, "num_item_blocks": 0},
        evaluate={"refit": True},
        ranking={"enabled": False},
        recommend={"users": wanted, "exclude_rated": False},
        predict={"pairs": pairs, "unknown_item": "global_mean"},
    )
    logger = logging.getLogger("spark_cf.training.blocks")
    handler, level = ListHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        outcome = run_nightly(spark, cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return Path(outcome.path), outcome, handler.messages


def biased_factors(run: Path):
    """The saved biased model, read with pyarrow alone: dicts raw id -> features or bias,
    and the global mean from the metadata."""
    users = read(run / "model" / "user_factors").to_pydict()
    items = read(run / "model" / "item_factors").to_pydict()
    theta = {u: np.array(f) for u, f in zip(users["user_id"], users["features"])}
    x = {i: np.array(f) for i, f in zip(items["item_id"], items["features"])}
    b_u = dict(zip(users["user_id"], users["bias"]))
    b_i = dict(zip(items["item_id"], items["bias"]))
    assert set(items["mean"]) == {0.0}  # the biased model centres on the global mean only
    g = json.loads((run / "model" / "metadata.json").read_text())["global_mean"]
    return theta, x, b_u, b_i, g


def test_refit_trains_the_published_model_on_every_rating(variant, ratings_path):
    run, outcome, _ = variant
    raw = read(Path(ratings_path))
    y = raw["rating"].to_numpy()
    meta = json.loads((run / "model" / "metadata.json").read_text())
    assert meta["refit"] is True and meta["trained_on"] == raw.num_rows
    # the centre is the mean of all ratings, not of the 80% the first fit trained on
    assert meta["global_mean"] == pytest.approx(float(np.mean(y)), rel=1e-12)
    assert meta["rating_mean"] == pytest.approx(float(np.mean(y)), rel=1e-12)
    # and the recorded final cost is J of the saved parameters over all ratings
    theta, x, b_u, b_i, g = biased_factors(run)
    users, items = raw["user_id"].to_pylist(), raw["item_id"].to_pylist()
    pred = np.array([theta[u] @ x[i] + b_i[i] + b_u[u] + g for u, i in zip(users, items)])
    squares = sum(float(v @ v) for v in (*theta.values(), *x.values()))
    squares += sum(b * b for b in (*b_u.values(), *b_i.values()))
    J = 0.5 * float(np.sum((pred - y) ** 2)) + 0.5 * 1.0 * squares  # model.reg = 1.0
    assert meta["final_cost"] == pytest.approx(J, rel=1e-9)
    refit = outcome.metrics["training"]["refit"]
    assert refit["final_cost"] == meta["final_cost"] and refit["iterations"] >= 1
    # the first fit, evaluated on the held-out ratings, ended elsewhere
    assert outcome.metrics["training"]["history"][-1]["cost"] != meta["final_cost"]
    assert outcome.metrics["evaluation"]["model"]["count"] > 0


def test_the_automatic_block_grid_follows_the_cores_and_the_data_size(spark, variant, ratings_path):
    _, _, messages = variant
    cached = [m for m in messages if m.startswith("cached ")]
    n = read(Path(ratings_path)).num_rows
    cores = spark.sparkContext.defaultParallelism
    # the documented rule: a user block per core, or one per million ratings, at most 16
    user_blocks = min(16, max(cores, -(-n // 1_000_000)))
    expected = f"cached {n} ratings in {user_blocks} blocks ({user_blocks}x1)"
    assert len(cached) == 2, messages  # the first fit and the refit
    assert all(m.startswith(expected) for m in cached), cached


def test_biased_model_loads_back_with_its_biases(spark, variant):
    run, _, _ = variant
    theta, x, b_u, b_i, g = biased_factors(run)
    model = load_model(spark, str(run / "model"))
    assert model.biases and model.global_mean == g
    users, items = model.index.user_ids.to_pylist(), model.index.item_ids.to_pylist()
    assert users == sorted(theta) and items == sorted(x)
    np.testing.assert_array_equal(model.user_factors, np.array([theta[u] for u in users]))
    np.testing.assert_array_equal(model.item_factors, np.array([x[i] for i in items]))
    np.testing.assert_array_equal(model.user_bias, np.array([b_u[u] for u in users]))
    np.testing.assert_array_equal(model.item_bias, np.array([b_i[i] for i in items]))


def test_biased_predictions_cold_start_and_global_mean_fallback(variant, ratings_path):
    run, _, _ = variant
    theta, x, b_u, b_i, g = biased_factors(run)
    raw = read(Path(ratings_path))
    all_mean = float(np.mean(raw["rating"].to_numpy()))
    rows = read(run / "predictions").to_pylist()
    assert len(rows) == raw.num_rows + 3
    got = {(r["user_id"], r["item_id"]): r["prediction"] for r in rows}
    first_user, first_item = min(theta), min(x)
    for u, i in zip(raw["user_id"].to_pylist(), raw["item_id"].to_pylist()):
        expected = float(np.clip(theta[u] @ x[i] + b_i[i] + b_u[u] + g, 0.5, 5.0))
        assert got[(u, i)] == pytest.approx(expected, rel=1e-12, abs=1e-12), (u, i)
    # a user never seen: the item's bias on the global mean
    assert got[(NEW, first_item)] == pytest.approx(np.clip(b_i[first_item] + g, 0.5, 5.0))
    # an item never seen: the mean of the ratings the published model trained on
    assert got[(first_user, NEW)] == pytest.approx(all_mean, rel=1e-12)
    assert got[(NEW, NEW)] == pytest.approx(all_mean, rel=1e-12)


def test_top_n_for_listed_users_with_rated_items_kept(variant, ratings_path):
    run, outcome, _ = variant
    assert outcome.metrics["top_n_model"] == "model" and not (run / "ranking_model").exists()
    theta, x, b_u, b_i, g = biased_factors(run)
    raw = read(Path(ratings_path))
    rated: dict[int, set] = {}
    for u, i in zip(raw["user_id"].to_pylist(), raw["item_id"].to_pylist()):
        rated.setdefault(u, set()).add(i)
    wanted = sorted(theta)[:20]
    top = read(run / "top_n").to_pylist()
    by_user: dict[int, list] = {}
    for r in top:
        by_user.setdefault(r["user_id"], []).append((r["rank"], r["item_id"], r["score"]))
    assert sorted(by_user) == wanted  # the unknown id gets no list, and is reported
    assert outcome.metrics["unknown_recommend_users"] == [NEW]
    kept_rated = 0
    for u in wanted:
        scores = sorted((-(theta[u] @ x[i] + b_i[i] + b_u[u] + g), i) for i in x)[:5]
        got = sorted(by_user[u])
        assert [r for r, _, _ in got] == [1, 2, 3, 4, 5]
        assert [i for _, i, _ in got] == [i for _, i in scores], u
        np.testing.assert_allclose([s for _, _, s in got], [-s for s, _ in scores], rtol=1e-12)
        kept_rated += len({i for _, i, _ in got} & rated[u])
    assert kept_rated > 0  # rated items do appear: nothing was excluded


def independent_ranking(recs: dict, relevant: dict, k: int) -> dict[str, float]:
    """precision, recall, nDCG and MAP @k as README and spark_cf.outputs.evaluation define
    them, written out here for ``recs`` (user -> ranked items) and ``relevant`` (user ->
    set of items), averaged over the users with relevant items."""
    out = {"precision_at_k": 0.0, "recall_at_k": 0.0, "ndcg_at_k": 0.0, "map_at_k": 0.0}
    for u, rel in relevant.items():
        ranked = recs.get(u, [])[:k]
        hits = [r for r, i in enumerate(ranked, start=1) if i in rel]
        out["precision_at_k"] += len(hits) / k
        out["recall_at_k"] += len(hits) / len(rel)
        ideal = sum(1 / np.log2(r + 1) for r in range(1, min(len(rel), k) + 1))
        out["ndcg_at_k"] += sum(1 / np.log2(r + 1) for r in hits) / ideal
        out["map_at_k"] += sum(n / r for n, r in enumerate(hits, start=1)) / min(len(rel), k)
    return {name: value / len(relevant) for name, value in out.items()}


@pytest.mark.extended
def test_evaluate_job_scores_newer_ratings_with_the_published_biased_model(
    variant, ratings_path, tmp_path
):
    """(extended: about 35 s in a subprocess; test_job_bodies.py's
    test_evaluate_reproduces_the_nightly_heldout_evaluation keeps run_evaluate's coverage.)

    jobs/evaluate.py as users run it, on the saved biased model: RMSE, MAE and the @k
    metrics of newer ratings (some of an unknown user, one of an unknown item), each
    computed here from the Parquet tables."""
    run, _, _ = variant
    theta, x, b_u, b_i, g = biased_factors(run)
    raw = read(Path(ratings_path))
    rated: dict[int, set] = {}
    for u, i in zip(raw["user_id"].to_pylist(), raw["item_id"].to_pylist()):
        rated.setdefault(u, set()).add(i)

    def score(u, i):
        user_part = theta[u] @ x[i] + b_u[u] if u in theta else 0.0
        return user_part + b_i[i] + g

    # per user two of its best unrated items (so the top-k has hits) and two others
    rng = np.random.default_rng(3)
    newer = []
    for u in sorted(theta)[:40]:
        unrated = sorted(set(x) - rated[u], key=lambda i: (-score(u, i), i))
        picked = [*unrated[:8:4], *rng.choice(unrated[8:], size=2, replace=False).tolist()]
        newer += [(u, int(i), float(rng.integers(2, 11)) / 2) for i in picked]
    first_item = min(x)
    newer += [(NEW, first_item, 4.5), (NEW, max(x), 2.0), (min(theta), NEW, 4.0)]
    users, items, ratings = zip(*newer)
    newer_path = tmp_path / "newer.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "item_id": pa.array(items, pa.int64()),
                "rating": pa.array(ratings),
            }
        ),
        newer_path,
    )
    k = 5
    conf = tmp_path / "job.toml"
    conf.write_text(f'[input]\npath = "{newer_path}"\n[evaluate]\nk = {k}\n')
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "evaluate.py"),
            "--config",
            str(conf),
            "--model",
            str(run / "model"),
            "--exclude-from",
            ratings_path,
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())["model"]
    # an unknown item has no prediction (NaN) and is left out of RMSE and MAE
    scored = [(score(u, i), r) for u, i, r in newer if i in x]
    pred = np.clip([p for p, _ in scored], 0.5, 5.0)
    err = pred - np.array([r for _, r in scored])
    assert got["count"] == len(newer) - 1
    assert got["rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))), rel=1e-9)
    assert got["mae"] == pytest.approx(float(np.mean(np.abs(err))), rel=1e-9)
    relevant: dict[int, set] = {}
    for u, i, r in newer:
        if r >= 4.0:
            relevant.setdefault(u, set()).add(i)
    recs = {
        u: [i for _, i in sorted((-score(u, i), i) for i in x if i not in rated[u])][:k]
        for u in relevant
        if u in theta
    }
    want = independent_ranking(recs, relevant, k)
    assert want["precision_at_k"] > 0  # some hits, so the comparison means something
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9), name


def snapshot(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_failed_run_leaves_published_run_untouched(spark, published, ratings_path, monkeypatch):
    run, _ = published
    root = run.parent
    before = snapshot(run)
    listing = sorted(os.listdir(root))
    steps: list[str] = []

    def fail_once_staged(step: str) -> None:
        steps.append(step)
        if step == "staged":  # every table of the new run written, nothing swapped yet
            raise RuntimeError("disk full")

    monkeypatch.setattr(publish, "fault_hook", fail_once_staged)
    other = config(ratings_path, root, model={"rank": 3}, train={"max_iter": 2})
    with pytest.raises(RuntimeError, match="disk full"):
        run_nightly(spark, other)
    assert steps == ["locked", "recovered", "staged"]
    assert snapshot(run) == before
    assert sorted(os.listdir(root)) == listing  # no staging left behind


def test_rerun_of_a_date_gives_identical_tables(spark, published, ratings_path):
    first, _ = published
    tables = {
        name: read(first / name)
        for name in ("model/user_factors", "model/item_factors", "predictions", "top_n")
    }
    second = Path(run_nightly(spark, config(ratings_path, first.parent)).path)
    assert second == first
    for name, table in tables.items():
        again = read(second / name)
        key = [(c, "ascending") for c in table.column_names if c in ("user_id", "item_id", "rank")]
        assert again.take(pc.sort_indices(again, key)).equals(
            table.take(pc.sort_indices(table, key))
        ), name


def test_warm_start_latest_starts_from_the_previous_runs_model(
    spark, published, ratings_path, tmp_path
):
    first, outcome = published  # run_date=2026-01-02, from a random start
    root = first.parent
    first_history = outcome.metrics["training"]["history"]
    # same data, split and normalisation: the next day's run starts where the first ended
    # (one iteration is enough to see where it started)
    later = config(
        ratings_path,
        root,
        train={"warm_start": "latest", "max_iter": 1},
        output={"run_date": "2026-01-03"},
    )
    second = run_nightly(spark, later)
    meta = json.loads((Path(second.path) / "model" / "metadata.json").read_text())
    assert meta["config"]["train"]["warm_start"].endswith(f"{first.name}/model")
    second_history = second.metrics["training"]["history"]
    assert second_history[0]["cost"] == pytest.approx(first_history[-1]["cost"], rel=1e-9)
    assert second_history[0]["cost"] < first_history[0]["cost"] / 2
    # an earlier date never starts from a later run: nothing before it, a random start
    earlier = config(
        ratings_path,
        root,
        train={"warm_start": "latest", "max_iter": 1},
        output={"run_date": "2026-01-01"},
    )
    third = run_nightly(spark, earlier)
    third_meta = json.loads((Path(third.path) / "model" / "metadata.json").read_text())
    assert third_meta["config"]["train"]["warm_start"] == ""
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


def test_interactions_without_ratings_publish_the_ranking_models_top_n_only(
    spark, ratings_path, tmp_path
):
    # plays: the rated pairs without their ratings, a third of them played twice
    raw = read(Path(ratings_path))
    users, items = raw["user_id"].to_numpy(), raw["item_id"].to_numpy()
    again = np.arange(len(users)) % 3 == 0
    plays = pa.table(
        {
            "user": np.concatenate([users, users[again]]),
            "song": np.concatenate([items, items[again]]),
        }
    )
    path = tmp_path / "plays.parquet"
    pq.write_table(plays, path)
    cfg = config(
        str(path),
        tmp_path / "out",
        input={
            "feedback": "interactions",
            "user_col": "user",
            "item_col": "song",
            "rating_col": "",
            "timestamp_col": "",
            "duplicates": "sum",
        },
    )
    outcome = run_nightly(spark, cfg)
    run = Path(outcome.path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert (run / "ranking_model" / "metadata.json").exists() and (run / "top_n").exists()
    assert not (run / "model").exists() and not (run / "predictions").exists()
    assert metrics["top_n_model"] == "ranking_model" and metrics["training"] is None
    assert metrics["ingest"]["rows_read"] == plays.num_rows
    assert metrics["ingest"]["duplicates_merged"] == int(again.sum())
    # only what ranks is evaluated, and every held-out play is relevant
    assert set(metrics["evaluation"]) == {"ranking_model", "popularity"}
    assert metrics["evaluation"]["ranking_model"]["users"] > 0
    assert (
        metrics["evaluation"]["popularity"]["users"]
        == (metrics["evaluation"]["ranking_model"]["users"])
    )
    meta = json.loads((run / "ranking_model" / "metadata.json").read_text())
    assert meta["objective"] == "ranking" and meta["alpha"] == cfg.ranking.alpha
    # the lists are the ranking model's theta . x, the user's plays left out
    theta, x, mean = factors(run, "ranking_model")
    played: dict[int, set] = {}
    for u, i in zip(users.tolist(), items.tolist()):
        played.setdefault(u, set()).add(i)
    top = read(run / "top_n").to_pylist()
    for u in sorted(theta)[:20]:
        want = sorted((-(theta[u] @ x[i]), i) for i in x if i not in played[u])[:5]
        got = sorted((r["rank"], r["item_id"], r["score"]) for r in top if r["user_id"] == u)
        assert [i for _, i, _ in got] == [i for _, i in want], u
        np.testing.assert_allclose([s for _, _, s in got], [-s for s, _ in want], rtol=1e-12)
