"""Evaluation of a model on ratings it did not train on: the metrics (NumPy) and the one
evaluation the nightly job (held-out ratings, with two baselines) and ``jobs/evaluate.py``
(a published model on another ratings set) both run, :func:`evaluate_model`.

- RMSE and MAE of the predictions of held-out ratings;
- precision@k, recall@k, nDCG@k and MAP@k of each user's top-k recommendations (items
  rated in training excluded) against the user's *relevant* held-out items (held-out
  rating >= the relevance threshold), averaged over the users with at least one relevant
  held-out item. A user's relevant items may include items the model never saw: they
  count as misses, as they would in production.

Definitions, for a user with relevant set R and recommendation list L (ranks 1..k):
``precision = |L & R| / k``, ``recall = |L & R| / |R|``,
``nDCG = sum_{hits at rank r} 1/log2(r + 1) / sum_{r=1}^{min(|R|, k)} 1/log2(r + 1)``,
``AP = sum_{hits at rank r} (hits up to r) / r / min(|R|, k)``.

Baselines beside the model on the held-out ratings: the item mean (each item's exact
training mean, :func:`item_mean_baseline`), the most popular items (each user's top-k of
the items by training rating count, :func:`popularity_baseline`: a top-N list that does
not beat it does not personalise; it ranks only, so its RMSE and MAE are None) and the
global mean (the mean training rating; a constant score ranks nothing, so its @k metrics
are None).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_cf.data.indexing import IdIndex
from spark_cf.data.prepare import TrainingData, exact_item_means
from spark_cf.model.cf_model import CFModel
from spark_cf.outputs.recommend import top_n
from spark_cf.schema import IS_VAL, ITEM, ITEM_IDX, RANK, RATING, USER, USER_IDX

#: The @k metrics (None for a baseline that cannot rank).
RANKING_METRICS = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k")


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE and MAE over the pairs whose prediction is finite; ``count`` says how many."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    ok = np.isfinite(y_pred)
    err = y_pred[ok] - y_true[ok]
    if err.size == 0:
        return {"rmse": math.nan, "mae": math.nan, "count": 0}
    return {
        "rmse": float(np.sqrt(np.mean(err * err))),
        "mae": float(np.mean(np.abs(err))),
        "count": int(err.size),
    }


def ranking_metrics(
    rec_users: np.ndarray,
    rec_items: np.ndarray,
    rec_ranks: np.ndarray,
    rel_users: np.ndarray,
    rel_items: np.ndarray,
    k: int,
) -> dict[str, float]:
    """Mean precision@k, recall@k, nDCG@k and MAP@k over users with relevant items.

    ``rec_*`` are the recommendations (rank 1 is best; ranks above k are ignored);
    ``rel_*`` the relevant held-out (user, item) pairs. Ids may be any comparable values.
    """
    rec_users = np.asarray(rec_users)
    rec_items = np.asarray(rec_items)
    rec_ranks = np.asarray(rec_ranks, dtype=np.int64)
    keep = rec_ranks <= k
    rec_users, rec_items, rec_ranks = rec_users[keep], rec_items[keep], rec_ranks[keep]
    relevant: dict[object, set] = {}
    for u, i in zip(np.asarray(rel_users).tolist(), np.asarray(rel_items).tolist()):
        relevant.setdefault(u, set()).add(i)
    if not relevant:
        nan = math.nan
        return {
            "precision_at_k": nan,
            "recall_at_k": nan,
            "ndcg_at_k": nan,
            "map_at_k": nan,
            "users": 0,
            "k": k,
        }
    hit_ranks: dict[object, list[int]] = {u: [] for u in relevant}
    for u, i, r in zip(rec_users.tolist(), rec_items.tolist(), rec_ranks.tolist()):
        mine = relevant.get(u)
        if mine is not None and i in mine:
            hit_ranks[u].append(r)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision = recall = ndcg = average_precision = 0.0
    for u, items in relevant.items():
        ranks = sorted(hit_ranks[u])
        hits = len(ranks)
        n_rel = len(items)
        precision += hits / k
        recall += hits / n_rel
        dcg = sum(discounts[r - 1] for r in ranks)
        ndcg += dcg / float(np.sum(discounts[: min(n_rel, k)]))
        average_precision += sum((n + 1) / r for n, r in enumerate(ranks)) / min(n_rel, k)
    n = len(relevant)
    return {
        "precision_at_k": precision / n,
        "recall_at_k": recall / n,
        "ndcg_at_k": ndcg / n,
        "map_at_k": average_precision / n,
        "users": n,
        "k": k,
    }


def evaluate_model(
    spark: SparkSession,
    model: CFModel,
    truth: pa.Table,
    exclude: DataFrame | None,
    *,
    k: int,
    relevance_threshold: float,
    clip: tuple[float, float] | None,
    block_size: int = 4096,
    ranks_only: bool = False,
) -> dict[str, Any]:
    """RMSE/MAE and the @k metrics of ``model`` on the ratings of ``truth``.

    Parameters
    ----------
    spark
        The session (the top-k lists are computed on Spark).
    model
        The model to evaluate.
    truth
        The ratings to score, collected: ``user_id``, ``item_id``, ``rating`` (raw ids).
        A user the model does not know is predicted by the cold-start rule; an item it
        does not know gets NaN (not counted in RMSE/MAE); a relevant rating of either is a
        miss for the @k metrics.
    exclude
        (user_idx, item_idx) pairs left out of the top-k lists (the training ratings), or
        None.
    k
        The length of the lists.
    relevance_threshold
        A rating at least this is relevant.
    clip
        (low, high) bounds of the predictions, or None.
    block_size
        Users per top-N task.
    ranks_only
        True for a model whose scores are not ratings (:func:`popularity_baseline`): its
        ``rmse`` and ``mae`` are None.

    Returns
    -------
    :func:`regression_metrics` and :func:`ranking_metrics` in one dict.
    """
    raw_users = truth.column(USER).combine_chunks()
    raw_items = truth.column(ITEM).combine_chunks()
    users = model.index.user_positions(raw_users)
    items = model.index.item_positions(raw_items)
    y = truth.column(RATING).to_numpy()
    pred = model.predict_indices(users, items)
    out: dict[str, Any] = regression_metrics(y, np.clip(pred, *clip) if clip else pred)
    if ranks_only:
        out.update(rmse=None, mae=None)
    relevant = y >= relevance_threshold
    targets = np.unique(users[relevant & (users >= 0)])
    recs = top_n(spark, model, exclude, n=k, users=targets, block_size=block_size).toArrow()
    out.update(
        ranking_metrics(
            recs.column(USER).to_numpy(zero_copy_only=False),
            recs.column(ITEM).to_numpy(zero_copy_only=False),
            recs.column(RANK).to_numpy(),
            raw_users.to_numpy(zero_copy_only=False)[relevant],
            raw_items.to_numpy(zero_copy_only=False)[relevant],
            k,
        )
    )
    return out


def item_mean_baseline(data: TrainingData) -> CFModel:
    """The item-mean baseline: each item's exact training mean
    (:func:`spark_cf.data.prepare.exact_item_means`; the mean of all training ratings for
    an item with none) as a model with zero factors."""
    index = data.index
    means = exact_item_means(data.ratings.where(~F.col(IS_VAL)), index.num_items)
    zeros_u = np.zeros((index.num_users, 1))
    zeros_i = np.zeros((index.num_items, 1))
    return CFModel(index, zeros_i, zeros_u, means, 0.0)


def item_counts(pairs: DataFrame, num_items: int) -> np.ndarray:
    """Rows per item of ``pairs`` (a DataFrame with ``item_idx``; pass the training
    ratings): (num_items,) int64, 0 for an item with none."""
    counts = np.zeros(num_items, dtype=np.int64)
    for row in pairs.groupBy(ITEM_IDX).count().collect():
        counts[row[ITEM_IDX]] = row["count"]
    return counts


def popularity_baseline(index: IdIndex, counts: np.ndarray) -> CFModel:
    """The most-popular baseline: the items ranked by their training rating count.

    A model with zero factors whose item offsets are the counts, so that the one scoring
    rule scores every user's items by count and :func:`~spark_cf.outputs.recommend.top_n`
    ranks them, most rated first, a tie to the smaller item index (the smaller raw id).
    Its scores are counts, not ratings: evaluate it with ``ranks_only``.

    Parameters
    ----------
    index
        The model's raw-id index.
    counts
        (num_items,) training ratings per item (:func:`item_counts`, or a model's
        ``item_counts``).

    Returns
    -------
    The baseline as a :class:`~spark_cf.model.cf_model.CFModel`.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (index.num_items,):
        raise ValueError(f"{counts.shape[0]} item counts for {index.num_items} items")
    zeros_u = np.zeros((index.num_users, 1))
    zeros_i = np.zeros((index.num_items, 1))
    return CFModel(index, zeros_i, zeros_u, counts.astype(np.float64), 0.0, item_counts=counts)


def unavailable(reason: str) -> dict[str, Any]:
    """The metrics of a baseline that could not be evaluated: every metric None, and
    ``note`` saying why (:func:`spark_cf.outputs.report.metrics_table` prints it)."""
    out: dict[str, Any] = dict.fromkeys(("rmse", "mae", *RANKING_METRICS))
    out["note"] = reason
    return out


def heldout_metrics(
    spark: SparkSession,
    data: TrainingData,
    model: CFModel | None,
    *,
    k: int,
    relevance_threshold: float,
    clip: tuple[float, float] | None,
    block_size: int = 4096,
    ranker: CFModel | None = None,
) -> dict[str, dict[str, Any]]:
    """The models and the baselines on the held-out ratings of ``data``: ``model``,
    ``ranking_model``, ``popularity``, ``item_mean`` and ``global_mean``.

    Each of the ratings model ``model``, the top-N model ``ranker`` (ranks only: its scores
    are preferences, not ratings), the most-popular baseline (the counts of the training
    split; ranks only) and the item-mean baseline through :func:`evaluate_model` (items
    rated in training left out of the lists); the global mean (``data.rating_mean``) gets
    RMSE and MAE, its @k metrics None. Without a ratings model (``model`` None:
    interaction data) only ``ranking_model`` and ``popularity`` are reported. Arguments
    as for :func:`evaluate_model`.
    """
    truth = data.ratings.where(F.col(IS_VAL)).select(USER, ITEM, RATING).toArrow()
    train_rated = data.ratings.where(~F.col(IS_VAL)).select(USER_IDX, ITEM_IDX)
    popular = popularity_baseline(data.index, item_counts(train_rated, data.index.num_items))
    candidates = (
        ("model", model, False),
        ("ranking_model", ranker, True),
        ("popularity", popular, True),
        ("item_mean", item_mean_baseline(data) if model is not None else None, False),
    )
    # each in a driver thread of its own: their top-N jobs are small and mostly wait, so
    # they overlap (the figures are those of one at a time)
    present = [(name, m, ranks_only) for name, m, ranks_only in candidates if m is not None]
    with ThreadPoolExecutor(len(present), thread_name_prefix="evaluate") as pool:
        futures = {
            name: pool.submit(
                evaluate_model,
                spark,
                m,
                truth,
                train_rated,
                k=k,
                relevance_threshold=relevance_threshold,
                clip=clip,
                block_size=block_size,
                ranks_only=ranks_only,
            )
            for name, m, ranks_only in present
        }
    out: dict[str, dict[str, Any]] = {name: f.result() for name, f in futures.items()}
    if model is not None:
        y = truth.column(RATING).to_numpy()
        constant = np.full(len(y), data.rating_mean)
        out["global_mean"] = regression_metrics(y, np.clip(constant, *clip) if clip else constant)
        out["global_mean"].update(dict.fromkeys(RANKING_METRICS))
    return out
