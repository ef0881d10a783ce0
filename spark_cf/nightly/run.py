"""The stages the jobs wire together; each takes the session, config parts and data.

Kept apart from the jobs so that tests run them without ``spark-submit``: the nightly run
(:func:`run_nightly`), and the bodies of ``jobs/train.py`` (:func:`run_train`),
``jobs/recommend.py`` (:func:`run_recommend`) and ``jobs/evaluate.py``
(:func:`run_evaluate`). A model's metadata is built in one place
(:func:`model_metadata`), and every published folder goes through
:func:`publication`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import functions as F

from spark_cf import storage
from spark_cf.config import AUTO, Config, fit_arguments
from spark_cf.data.ingest import IngestResult, ingest
from spark_cf.data.prepare import TrainingData, prepare
from spark_cf.errors import ConfigError
from spark_cf.model.persistence import load_model, save_model
from spark_cf.model.scoring import SCORING_RULE
from spark_cf.nightly import preflight
from spark_cf.outputs.evaluation import (
    evaluate_model,
    heldout_metrics,
    item_counts,
    popularity_baseline,
    unavailable,
)
from spark_cf.outputs.publish import Publication
from spark_cf.outputs.recommend import predict, rated_pairs, recommendations
from spark_cf.outputs.report import convergence_png, metrics_table
from spark_cf.schema import (
    CONVERGENCE,
    IS_VAL,
    ITEM,
    ITEM_IDX,
    METRICS,
    MODEL,
    PREDICTIONS,
    QUARANTINE,
    RANKING_MODEL,
    RATING,
    SUCCESS,
    TOP_N,
    USER,
    USER_IDX,
)
from spark_cf.session import recorded_config, settings_in_force
from spark_cf.training.checkpoints import from_train_config
from spark_cf.training.fit import fit
from spark_cf.training.loop import TrainResult

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
        if path.rsplit("run_date=", 1)[1] < date and storage.exists(spark, f"{path}/{SUCCESS}")
    ]
    if not runs:
        log.info("train.warm_start = latest: no earlier run under %s, random start", root)
        return cfg.replace(train={"warm_start": ""})
    log.info("train.warm_start = latest: starting from %s/model", runs[-1])
    preflight.check_model(spark, "train.warm_start", f"{runs[-1]}/{MODEL}", cfg.model.rank)
    return cfg.replace(train={"warm_start": f"{runs[-1]}/{MODEL}"})


def train_with_config(data: TrainingData, cfg: Config, **extra: Any):
    """:func:`~spark_cf.training.fit.fit` with the job's settings: ``[model]`` and
    ``[train]`` as arguments, the model at ``train.warm_start`` (a path; resolve
    ``"latest"`` first) as the initial model, and the checkpoints of ``[train]``."""
    if cfg.train.warm_start == "latest":
        raise ConfigError(
            "train.warm_start = 'latest' is resolved by the nightly job only; give the "
            "model folder of an earlier run, e.g. output/run_date=2026-11-24/model"
        )
    initial = extra.pop("initial_model", None)
    if initial is None and cfg.train.warm_start:
        initial = load_model(data.ratings.sparkSession, cfg.train.warm_start)
        log.info("warm start from %s", cfg.train.warm_start)
    checkpointer = from_train_config(cfg.train)
    return fit(
        data, **fit_arguments(cfg), initial_model=initial, checkpointer=checkpointer, **extra
    )


def _train(data: TrainingData, cfg: Config, timings: dict[str, float], name: str, **extra: Any):
    with stage(name, timings):
        return train_with_config(data, cfg, **extra)


def _train_models(
    data: TrainingData,
    cfg: Config,
    timings: dict[str, float],
    name: str,
    *,
    ratings: bool,
    ranking: bool,
    **extra: Any,
) -> tuple:
    """The stage ``name``: the ratings model (``ratings``; ``extra`` goes to its fit) and
    the top-N model (``ranking``) trained side by side, each in a driver thread of its
    own with its own Spark jobs (on small data a job is mostly waiting, so the two
    overlap); each model is what it would be trained alone. Returns ``(model, result,
    ranker, ranker_result)``, None for a model not trained; the first error is raised
    after both have ended."""
    with stage(name, timings), ThreadPoolExecutor(2, thread_name_prefix=name) as pool:
        rated = pool.submit(train_with_config, data, cfg, **extra) if ratings else None
        ranked = pool.submit(train_ranking, data, cfg) if ranking else None
        futures = [f for f in (rated, ranked) if f is not None]
        wait(futures)
        for f in futures:
            f.result()  # raises the fit's error
    model, result = rated.result() if rated is not None else (None, None)
    ranker, ranker_result = ranked.result() if ranked is not None else (None, None)
    return model, result, ranker, ranker_result


def train_ranking(data: TrainingData, cfg: Config, **extra: Any):
    """The top-N model (``[ranking]``): :func:`~spark_cf.training.fit.fit` with the
    ranking objective, ``[train]``'s optimiser and a cold start; its checkpoints (when
    ``[train]`` checkpoints) go to ``<train.checkpoint_dir>/ranking``."""
    train = cfg.train
    if train.checkpoint_dir:
        train = dataclasses.replace(
            train, checkpoint_dir=f"{train.checkpoint_dir.rstrip('/')}/ranking"
        )
    return fit(
        data, **fit_arguments(cfg, ranking=True), checkpointer=from_train_config(train), **extra
    )


def _history(result: TrainResult) -> dict[str, Any]:
    """A training run as ``metrics.json`` records it."""
    record = {
        "history": result.history,
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "evaluations": result.evaluations,
        "seconds": round(result.seconds, 3),
        "reg": result.extra.get("reg"),
    }
    if "reg_grid" in result.extra:  # model.reg = "auto": every value tried, and the choice
        record["reg_grid"] = result.extra["reg_grid"]
    return record


def _refit_summary(result: TrainResult) -> dict[str, Any]:
    return {
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "final_cost": result.final_cost,
    }


def clip_range(cfg: Config) -> tuple[float, float] | None:
    """The rating range predictions are clipped to (``predict.clip``), or None."""
    return (cfg.input.rating_min, cfg.input.rating_max) if cfg.predict.clip else None


def model_metadata(
    spark,
    cfg: Config,
    *,
    date: str,
    ingested: IngestResult,
    data: TrainingData,
    result: TrainResult,
    refit: bool = False,
    ranking: bool = False,
    reg_grid: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The metadata of a model to publish (``model/metadata.json``; :func:`save_model` adds
    rank, global mean, biases and the sizes): the same keys for every job that publishes
    a model.

    Parameters
    ----------
    spark
        The session (its settings in force are recorded).
    cfg
        The run's configuration.
    date
        The run's date.
    ingested
        What ingest read (its row counts).
    data
        The data the model was trained on (the refit's data after a refit).
    result
        The model's training result.
    refit
        Whether the model was refitted on all ratings after the evaluation.
    ranking
        Whether it is the top-N model of ``[ranking]`` (else ``[model]``'s).
    reg_grid
        With ``model.reg = "auto"``: each value's row (``TrainResult.extra["reg_grid"]``
        of the fit that chose it; None takes ``result``'s, which a refit has not).
    """
    in_force = settings_in_force(spark)
    section = cfg.ranking if ranking else cfg.model
    return {
        "config": recorded_config(cfg.to_dict(), in_force),
        "objective": "ranking" if ranking else "ratings",
        "alpha": cfg.ranking.alpha if ranking else None,
        "rank": section.rank,
        "reg": result.extra.get("reg", section.reg),
        "reg_auto": section.reg == AUTO,
        "reg_grid": reg_grid if reg_grid is not None else result.extra.get("reg_grid"),
        "optimizer": cfg.train.optimizer,
        "user_side": result.extra.get("user_side"),
        "iterations": result.iterations,
        "final_cost": result.final_cost,
        "stop_reason": result.stop_reason,
        "history": result.history,
        "input_path": cfg.input.path,
        "input_fingerprint": data.fingerprint,
        "rows": ingested.metrics(),
        "trained_on": data.num_train,
        "refit": refit,
        "rating_mean": data.rating_mean,
        "run_date": date,
        "software": software_versions(),
        "spark": in_force,
        "scoring_rule": SCORING_RULE,
    }


def publication(spark, cfg: Config, path: str) -> Publication:
    """The one way a job publishes a folder at ``path``: ``with publication(...) as pub``,
    write into ``pub.staging``, then :func:`commit` (the lock times out after
    ``output.lock_timeout_hours``)."""
    return Publication(spark, path, timeout_s=cfg.output.lock_timeout_s)


def commit(spark, pub: Publication) -> None:
    """Write ``_SUCCESS`` last into the staging folder and swap it in."""
    storage.write_text(spark, f"{pub.staging}/{SUCCESS}", "")
    pub.commit()


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
    with publication(spark, cfg, final) as pub:
        return _run_nightly(spark, cfg, pub)


def _run_nightly(spark, cfg: Config, pub: Publication) -> RunOutcome:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    final, staged = pub.path, pub.staging
    date = final.rsplit("run_date=", 1)[1]  # the date of the lock, even past midnight
    cfg = resolve_warm_start(spark, cfg, date)  # before the ratings are read
    # interaction data has no ratings: the ranking model is the only one, nothing is
    # predicted and every held-out interaction is relevant
    has_ratings = cfg.input.feedback == "ratings"
    ingested, data = ingest_and_prepare(spark, cfg, timings)
    final_data = data
    try:
        model, result, ranker, ranker_result = _train_models(
            data, cfg, timings, "train", ratings=has_ratings, ranking=cfg.ranking.enabled
        )
        evaluation: dict[str, Any] = {}
        if data.num_val:
            with stage("evaluate", timings):
                evaluation = heldout_metrics(
                    spark,
                    data,
                    model,
                    ranker=ranker,
                    k=cfg.evaluate.k,
                    relevance_threshold=(
                        cfg.evaluate.relevance_threshold if has_ratings else -math.inf
                    ),
                    clip=clip_range(cfg),
                    block_size=cfg.recommend.block_size,
                )
        else:
            log.warning("evaluate.holdout_fraction = 0: no held-out ratings, no evaluation")
        history = _history(result) if result is not None else None
        ranking_history = _history(ranker_result) if ranker_result is not None else None
        refit = bool(cfg.evaluate.refit and data.num_val)
        if refit:
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
            # "auto": the refit takes the chosen reg, from the chosen model (warm)
            warm = {}
            if model is not None and cfg.model.reg == AUTO:
                refit_cfg = refit_cfg.replace(model={"reg": result.extra["reg"]})
                warm = {"initial_model": model}
            model, result, ranker, ranker_result = _train_models(
                final_data,
                refit_cfg,
                timings,
                "refit",
                ratings=model is not None,
                ranking=ranker is not None,
                **warm,
            )
            if model is not None:
                history["refit"] = _refit_summary(result)
            if ranker is not None:
                ranking_history["refit"] = _refit_summary(ranker_result)
        for m, r, ranking in ((model, result, False), (ranker, ranker_result, True)):
            if m is not None:
                m.metadata = model_metadata(
                    spark,
                    cfg,
                    date=date,
                    ingested=ingested,
                    data=final_data,
                    result=r,
                    refit=refit,
                    ranking=ranking,
                    reg_grid=None if ranking or history is None else history.get("reg_grid"),
                )
        if model is not None:
            with stage("predict", timings):
                if cfg.predict.pairs:
                    pairs = storage.read_parquet(spark, cfg.predict.pairs, ids=(USER, ITEM))
                else:
                    pairs = data.ratings.where(F.col(IS_VAL)).select(USER, ITEM)
                predictions = predict(
                    pairs,
                    model,
                    unknown_item=cfg.predict.unknown_item,
                    fallback=final_data.rating_mean,
                    clip=clip_range(cfg),
                )
                predictions = predictions.orderBy(USER, ITEM)
                storage.write_parquet(predictions, f"{staged}/{PREDICTIONS}")
        with stage("top_n", timings):
            # every rating the user gave (training and held-out) counts as rated
            rated = final_data.ratings.select(USER_IDX, ITEM_IDX)
            scorer = ranker if ranker is not None else model
            recs, unknown = recommendations(spark, scorer, rated, cfg.recommend)
            storage.write_parquet(recs, f"{staged}/{TOP_N}")
        with stage("publish", timings):
            if model is not None:
                save_model(spark, model, f"{staged}/{MODEL}")
            if ranker is not None:
                save_model(spark, ranker, f"{staged}/{RANKING_MODEL}")
            storage.write_parquet(ingested.quarantine, f"{staged}/{QUARANTINE}", partitions=1)
            tables = (PREDICTIONS, TOP_N) if model is not None else (TOP_N,)
            counts = storage.row_counts(spark, staged, tables)
            metrics = {
                "run_date": date,
                "ingest": ingested.metrics(),
                "training": history,
                "training_ranking": ranking_history,
                "top_n_model": RANKING_MODEL if ranker is not None else MODEL,
                "evaluation": evaluation,
                "evaluation_k": cfg.evaluate.k,
                "rows_written": counts,
                "unknown_recommend_users": unknown,
                "timings_s": timings,
            }
            metrics["timings_s"]["total"] = round(time.perf_counter() - started, 3)
            storage.write_json(spark, f"{staged}/{METRICS}", metrics)
            png = convergence_png((result or ranker_result).history)
            if png is not None:
                storage.write_bytes(spark, f"{staged}/{CONVERGENCE}", png)
            commit(spark, pub)
        log.info(
            "published %s (%s)", final, ", ".join(f"{name} {n} rows" for name, n in counts.items())
        )
        return RunOutcome(
            final, metrics, metrics_table(evaluation, cfg.evaluate.k) if evaluation else ""
        )
    finally:
        ingested.unpersist()
        data.ratings.unpersist()
        if final_data is not data:
            final_data.ratings.unpersist()


# ------------------------------------------------------------------------- the other jobs


def run_train(spark, cfg: Config, model_out: str | None = None):
    """``jobs/train.py``: ingest, train on the training split and publish the model at
    ``model_out`` (default ``<output.root>/model``), with the metadata and the publication
    of the nightly run's model: the ratings model of ``[model]``, or for interaction data
    (``input.feedback = "interactions"``) the ranking model of ``[ranking]``.

    Returns ``(path, model, result)``.
    """
    target = model_out or f"{cfg.output.root.rstrip('/')}/{MODEL}"
    preflight.check_parent_writable(spark, "--model-out" if model_out else "output.root", target)
    preflight.check_training(spark, cfg.model, cfg.train)
    with publication(spark, cfg, target) as pub:
        date = run_date(cfg)
        timings: dict[str, float] = {}
        ingested, data = ingest_and_prepare(spark, cfg, timings)
        try:
            interactions = cfg.input.feedback == "interactions"
            if interactions:  # no ratings: the ranking model ([ranking])
                with stage("train_ranking", timings):
                    model, result = train_ranking(data, cfg)
            else:
                model, result = _train(data, cfg, timings, "train")
            model.metadata = model_metadata(
                spark,
                cfg,
                date=date,
                ingested=ingested,
                data=data,
                result=result,
                ranking=interactions,
            )
            with stage("publish", timings):
                save_model(spark, model, pub.staging)
                commit(spark, pub)
        finally:
            ingested.unpersist()
            data.ratings.unpersist()
    return target, model, result


def run_recommend(spark, cfg: Config, model_path: str, output: str) -> tuple[int, list]:
    """``jobs/recommend.py``: the top-N table of ``[recommend]`` from the model at
    ``model_path``, published at ``output``; with ``recommend.exclude_rated`` the ratings
    at ``input.path`` say what each user already rated.

    Returns the number of rows written and the requested raw user ids the model does not
    know.
    """
    preflight.check_parent_writable(spark, "--output", output)
    model = load_model(spark, model_path)
    ingested = None
    rated = None
    if cfg.recommend.exclude_rated:
        ingested = ingest(spark, cfg.input)
        rated = rated_pairs(ingested.ratings, model.index)
    try:
        recs, unknown = recommendations(spark, model, rated, cfg.recommend)
        storage.write_table(recs, output)
    finally:
        if ingested is not None:
            ingested.unpersist()
    return storage.read_parquet(spark, output).count(), unknown


def run_evaluate(
    spark, cfg: Config, model_path: str, *, exclude_from: str | None = None
) -> dict[str, dict[str, Any]]:
    """``jobs/evaluate.py``: the model at ``model_path`` and the most-popular baseline on
    the ratings at ``input.path`` (:func:`spark_cf.outputs.evaluation.evaluate_model`, as
    the nightly evaluates).

    ``exclude_from``: a ratings Parquet (``[input]``'s column names) whose pairs are left
    out of the top-k lists (the model's training ratings). The baseline ranks the items by
    the model's training rating counts (``item_counts``, saved with the model); a model
    saved without them takes the counts of ``exclude_from``'s ratings, and without that
    the baseline is unavailable (its metrics None, with a ``note``).

    Returns ``{"model": metrics, "popularity": metrics}``.
    """
    model = load_model(spark, model_path)
    ingested = ingest(spark, cfg.input)
    try:
        truth = ingested.ratings.select(USER, ITEM, RATING).toArrow()
        exclude = None
        if exclude_from:
            seen = (
                storage.read_parquet(spark, exclude_from)
                .select(cfg.input.user_col, cfg.input.item_col)
                .toDF(USER, ITEM)
            )
            exclude = rated_pairs(seen, model.index)
        counts = model.item_counts
        if counts is None and exclude is not None:
            log.info(
                "the model has no item counts (saved before they were): the most-popular "
                "baseline ranks by the ratings of %s",
                exclude_from,
            )
            counts = item_counts(exclude, model.index.num_items)
        evaluated = {"model": model}
        if counts is not None:
            evaluated["popularity"] = popularity_baseline(model.index, counts)
        metrics = {
            name: evaluate_model(
                spark,
                m,
                truth,
                exclude,
                k=cfg.evaluate.k,
                relevance_threshold=cfg.evaluate.relevance_threshold,
                clip=clip_range(cfg),
                block_size=cfg.recommend.block_size,
                ranks_only=name == "popularity",
            )
            for name, m in evaluated.items()
        }
        if counts is None:
            reason = (
                "unavailable: the model was saved without item counts and no "
                "--exclude-from ratings were given"
            )
            log.warning("most-popular baseline %s", reason)
            metrics["popularity"] = unavailable(reason)
    finally:
        ingested.unpersist()
    return metrics
