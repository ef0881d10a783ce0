"""The stages the jobs wire together; each takes the session, config parts and data.

Kept apart from the jobs so that tests run them without ``spark-submit``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import numpy as np
from pyspark.sql import functions as F

from spark_cf import storage
from spark_cf.config import Config, RecommendConfig, fit_arguments
from spark_cf.data.ingest import IngestResult, ingest
from spark_cf.data.prepare import TrainingData, prepare
from spark_cf.errors import ConfigError
from spark_cf.model.cf_model import CFModel
from spark_cf.model.persistence import load_model, save_model
from spark_cf.nightly import preflight
from spark_cf.outputs.evaluation import format_table, ranking_metrics, regression_metrics
from spark_cf.outputs.publish import Publication
from spark_cf.outputs.recommend import predict, top_n
from spark_cf.schema import IS_VAL, ITEM, ITEM_IDX, RANK, RATING, USER, USER_IDX
from spark_cf.session import recorded_config, settings_in_force
from spark_cf.training.checkpoints import from_train_config
from spark_cf.training.fit import fit

log = logging.getLogger(__name__)


@contextmanager
def stage(name: str, timings: dict[str, float]):
    """Log a stage's start and end and record its seconds in ``timings``."""
    log.info("stage %s: started", name)
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - started, 3)
        log.info("stage %s: %.1f s", name, timings[name])


def ingest_and_prepare(
    spark, cfg: Config, timings: dict[str, float]
) -> tuple[IngestResult, TrainingData]:
    """Read and validate the ratings, then index them and tag the held-out split."""
    with stage("ingest", timings):
        ingested = ingest(spark, cfg.input)
    with stage("prepare", timings):
        data = prepare(
            ingested.ratings,
            holdout_fraction=cfg.evaluate.holdout_fraction,
            split=cfg.evaluate.split,
            seed=cfg.model.seed,
            mean_normalization=cfg.model.mean_normalization,
            biases=cfg.model.biases,
        )
    return ingested, data


# ------------------------------------------------------------------------- the nightly run


@dataclass
class RunOutcome:
    """Where a run was published and what it measured."""

    path: str
    metrics: dict[str, Any]
    table: str = ""


def software_versions() -> dict[str, str]:
    import platform

    import numba
    import numpy
    import pyarrow
    import pyspark

    from spark_cf import __version__

    return {
        "spark_cf": __version__,
        "pyspark": pyspark.__version__,
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }


def run_date(cfg: Config) -> str:
    return cfg.output.run_date or datetime.now(timezone.utc).date().isoformat()


def resolve_warm_start(spark, cfg: Config, date: str | None = None) -> Config:
    """``train.warm_start = "latest"``: the model of the newest run published under
    ``output.root`` before this run's date (``date``, else :func:`run_date`; a cold start
    when there is none). The model it names is checked (parts, rank) before returning."""
    if cfg.train.warm_start != "latest":
        return cfg
    date = date or run_date(cfg)
    root = cfg.output.root.rstrip("/")
    runs = [
        path
        for path in storage.glob(spark, f"{root}/run_date=*")
        if path.rsplit("run_date=", 1)[1] < date and storage.exists(spark, f"{path}/_SUCCESS")
    ]
    if not runs:
        log.info("train.warm_start = latest: no earlier run under %s, random start", root)
        return cfg.replace(train={"warm_start": ""})
    log.info("train.warm_start = latest: starting from %s/model", runs[-1])
    preflight.check_model(spark, "train.warm_start", f"{runs[-1]}/model", cfg.model.rank)
    return cfg.replace(train={"warm_start": f"{runs[-1]}/model"})


def train_with_config(data: TrainingData, cfg: Config, **extra: Any):
    """:func:`~spark_cf.training.fit.fit` with the job's settings: ``[model]`` and
    ``[train]`` as arguments, the model at ``train.warm_start`` (a path; resolve
    ``"latest"`` first) as the initial model, and the checkpoints of ``[train]``."""
    if cfg.train.warm_start == "latest":
        raise ConfigError(
            "train.warm_start = 'latest' is resolved by the nightly job only; give the "
            "model folder of an earlier run, e.g. output/run_date=2026-11-24/model"
        )
    initial = None
    if cfg.train.warm_start:
        initial = load_model(data.ratings.sparkSession, cfg.train.warm_start)
        log.info("warm start from %s", cfg.train.warm_start)
    checkpointer = from_train_config(cfg.train)
    return fit(
        data, **fit_arguments(cfg), initial_model=initial, checkpointer=checkpointer, **extra
    )


def _train(data: TrainingData, cfg: Config, timings: dict[str, float], name: str):
    with stage(name, timings):
        return train_with_config(data, cfg)


def _heldout_metrics(spark, data: TrainingData, model: CFModel, cfg: Config) -> dict[str, Any]:
    """RMSE/MAE and the @k metrics of the model and the two baselines on the held-out set."""
    held = data.ratings.where(F.col(IS_VAL)).select(USER, ITEM, RATING, USER_IDX, ITEM_IDX)
    truth = held.toArrow()
    users = truth.column(USER_IDX).to_numpy().astype(np.int64)
    items = truth.column(ITEM_IDX).to_numpy().astype(np.int64)
    y = truth.column(RATING).to_numpy()
    item_mean = baseline_item_mean(model, data)
    global_mean = data.rating_mean
    scores = {
        "model": model.predict_indices(users, items),
        "item_mean": item_mean.predict_indices(users, items),
        "global_mean": np.full(len(y), global_mean),
    }
    lo, hi = cfg.input.rating_min, cfg.input.rating_max
    out: dict[str, Any] = {}
    for name, pred in scores.items():
        pred = np.clip(pred, lo, hi) if cfg.predict.clip else pred
        out[name] = regression_metrics(y, pred)
    relevant = y >= cfg.evaluate.relevance_threshold
    rel_users, rel_items = users[relevant], items[relevant]
    k = cfg.evaluate.k
    train_rated = data.ratings.where(~F.col(IS_VAL)).select(USER_IDX, ITEM_IDX)
    targets = np.unique(rel_users)
    for name, m in (("model", model), ("item_mean", item_mean)):
        recs = top_n(
            spark, m, train_rated, n=k, users=targets, block_size=cfg.recommend.block_size
        ).toArrow()
        rec_users = m.index.user_positions(recs.column(USER).combine_chunks())
        rec_items = m.index.item_positions(recs.column(ITEM).combine_chunks())
        out[name].update(
            ranking_metrics(
                rec_users, rec_items, recs.column(RANK).to_numpy(), rel_users, rel_items, k
            )
        )
    for name in ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k"):
        out["global_mean"][name] = None  # a constant score ranks nothing
    return out


def baseline_item_mean(model: CFModel, data: TrainingData) -> CFModel:
    """The item-mean baseline: each item's training mean (the global mean for items with
    no training rating), as a model with zero factors."""
    a = (
        data.ratings.where(~F.col(IS_VAL))
        .groupBy(ITEM_IDX)
        .agg(F.sum(F.col(RATING).cast("decimal(38,18)")).alias("s"), F.count(F.lit(1)).alias("n"))
        .collect()
    )
    means = np.full(model.index.num_items, data.rating_mean)
    for row in a:
        means[row[ITEM_IDX]] = float(Decimal(row["s"]) / row["n"])
    zeros_u = np.zeros((model.index.num_users, 1))
    zeros_i = np.zeros((model.index.num_items, 1))
    return CFModel(model.index, zeros_i, zeros_u, means, 0.0)


def _metrics_table(evaluation: dict[str, dict[str, Any]], k: int) -> str:
    rows = {name: values for name, values in evaluation.items()}
    columns = ["rmse", "mae", "precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k"]
    renamed = {
        name: {c.replace("_at_k", f"@{k}"): v for c, v in values.items()}
        for name, values in rows.items()
    }
    return format_table(renamed, [c.replace("_at_k", f"@{k}") for c in columns])


def run_nightly(spark, cfg: Config) -> RunOutcome:
    """Ingest, train, evaluate, predict, recommend, and publish one run (see README).

    The run's lock is taken first (:class:`~spark_cf.errors.LockError` when another run
    publishes the same date), the leftovers of crashed runs under ``output.root`` are
    recovered, everything is written to a hidden staging folder, ``_SUCCESS`` last, and
    swapped in at the end (:mod:`spark_cf.outputs.publish`); a failure at any point leaves the
    published runs as they were.
    """
    preflight.check_nightly(spark, cfg)  # before the lock and before the ratings are read
    final = f"{cfg.output.root.rstrip('/')}/run_date={run_date(cfg)}"
    timeout_s = cfg.output.lock_timeout_s
    with Publication(spark, final, timeout_s=timeout_s) as pub:
        return _run_nightly(spark, cfg, pub)


def _run_nightly(spark, cfg: Config, pub: Publication) -> RunOutcome:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    final, staged = pub.path, pub.staging
    date = final.rsplit("run_date=", 1)[1]  # the date of the lock, even past midnight
    cfg = resolve_warm_start(spark, cfg, date)  # before the ratings are read
    ingested, data = ingest_and_prepare(spark, cfg, timings)
    final_data = data
    try:
        model, result = _train(data, cfg, timings, "train")
        evaluation: dict[str, Any] = {}
        if data.num_val:
            with stage("evaluate", timings):
                evaluation = _heldout_metrics(spark, data, model, cfg)
        else:
            log.warning("evaluate.holdout_fraction = 0: no held-out ratings, no evaluation")
        history = {
            "history": result.history,
            "iterations": result.iterations,
            "stop_reason": result.stop_reason,
            "evaluations": result.evaluations,
            "seconds": round(result.seconds, 3),
        }
        if cfg.evaluate.refit and data.num_val:
            final_data = prepare(
                ingested.ratings,
                holdout_fraction=0.0,
                split=cfg.evaluate.split,
                seed=cfg.model.seed,
                mean_normalization=cfg.model.mean_normalization,
                biases=cfg.model.biases,
            )
            # the refit checkpoints apart from the first fit (another fingerprint)
            refit_cfg = cfg
            if cfg.train.checkpoint_dir:
                refit_cfg = cfg.replace(
                    train={"checkpoint_dir": f"{cfg.train.checkpoint_dir.rstrip('/')}/refit"}
                )
            model, result = _train(final_data, refit_cfg, timings, "refit")
            history["refit"] = {
                "iterations": result.iterations,
                "stop_reason": result.stop_reason,
                "final_cost": result.final_cost,
            }
        in_force = settings_in_force(spark)
        model.metadata = {
            "config": recorded_config(cfg.to_dict(), in_force),
            "rank": cfg.model.rank,
            "reg": cfg.model.reg,
            "optimizer": cfg.train.optimizer,
            "iterations": result.iterations,
            "final_cost": result.final_cost,
            "stop_reason": result.stop_reason,
            "input_path": cfg.input.path,
            "input_fingerprint": data.fingerprint,
            "rows": ingested.metrics(),
            "trained_on": final_data.num_train,
            "refit": bool(cfg.evaluate.refit and data.num_val),
            "rating_mean": final_data.rating_mean,
            "run_date": date,
            "software": software_versions(),
            "spark": in_force,
            "scoring_rule": "prediction = features(user) . features(item) + mean(item) "
            "+ bias(item) + bias(user) + global_mean",
        }
        with stage("predict", timings):
            if cfg.predict.pairs:
                pairs = storage.read_parquet(spark, cfg.predict.pairs, ids=(USER, ITEM))
            else:
                pairs = data.ratings.where(F.col(IS_VAL)).select(USER, ITEM)
            clip = (cfg.input.rating_min, cfg.input.rating_max) if cfg.predict.clip else None
            predictions = predict(
                pairs,
                model,
                unknown_item=cfg.predict.unknown_item,
                fallback=final_data.rating_mean,
                clip=clip,
            )
            predictions = predictions.orderBy(USER, ITEM)
            storage.write_parquet(predictions, f"{staged}/predictions")
        with stage("top_n", timings):
            # every rating the user gave (training and held-out) counts as rated
            rated = final_data.ratings.select(USER_IDX, ITEM_IDX)
            recs, unknown = recommendations(spark, model, rated, cfg.recommend)
            storage.write_parquet(recs, f"{staged}/top_n")
        with stage("publish", timings):
            save_model(spark, model, f"{staged}/model")
            storage.write_parquet(ingested.quarantine, f"{staged}/quarantine", partitions=1)
            counts = storage.row_counts(spark, staged, ("predictions", "top_n"))
            metrics = {
                "run_date": date,
                "ingest": ingested.metrics(),
                "training": history,
                "evaluation": evaluation,
                "evaluation_k": cfg.evaluate.k,
                "rows_written": counts,
                "unknown_recommend_users": unknown,
                "timings_s": timings,
            }
            metrics["timings_s"]["total"] = round(time.perf_counter() - started, 3)
            storage.write_json(spark, f"{staged}/metrics.json", metrics)
            png = convergence_png(result.history)
            if png is not None:
                storage.write_bytes(spark, f"{staged}/convergence.png", png)
            storage.write_text(spark, f"{staged}/_SUCCESS", "")
            pub.commit()
        log.info(
            "published %s (%s)", final, ", ".join(f"{name} {n} rows" for name, n in counts.items())
        )
        return RunOutcome(
            final, metrics, _metrics_table(evaluation, cfg.evaluate.k) if evaluation else ""
        )
    finally:
        ingested.unpersist()
        data.ratings.unpersist()
        if final_data is not data:
            final_data.ratings.unpersist()


def recommendations(spark, model: CFModel, rated, rec: RecommendConfig):
    """The top-N table for ``[recommend]`` (ordered by user and rank), and the requested
    raw user ids the model does not know. ``rated``: (user_idx, item_idx) pairs, excluded
    when ``rec.exclude_rated``."""
    wanted, unknown = recommend_targets(model, rec.users)
    recs = top_n(
        spark,
        model,
        rated if rec.exclude_rated else None,
        n=rec.top_n,
        users=wanted,
        block_size=rec.block_size,
    )
    return recs.orderBy(USER, RANK), unknown


def recommend_targets(model: CFModel, users: tuple) -> tuple[np.ndarray | None, list]:
    """Indices of the configured users (None = all) and the raw ids the model does not know."""
    if not users:
        return None, []
    import pyarrow as pa

    raw = pa.array(list(users), type=model.index.user_ids.type)
    positions = model.index.user_positions(raw)
    unknown = [u for u, p in zip(users, positions) if p < 0]
    if unknown:
        log.warning(
            "%d users in recommend.users are not in the model (no ratings): %s",
            len(unknown),
            unknown[:10],
        )
    return positions[positions >= 0], unknown


def convergence_png(history: list[dict[str, float]]) -> bytes | None:
    """J against iteration on a log scale, as PNG bytes; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning(
            "matplotlib is not installed: no convergence.png (pip install "
            "'spark-cf[plot]' to get it)"
        )
        return None
    import io as _io

    it = [h["iteration"] for h in history]
    cost = [h["cost"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.semilogy(it, cost, marker=".")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost J (log scale)")
    ax.set_title("convergence")
    ax.grid(True, which="both", alpha=0.3)
    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
