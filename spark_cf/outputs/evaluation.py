"""Evaluation metrics on the held-out ratings (NumPy; the pipeline collects what they need).

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
"""

from __future__ import annotations

import math

import numpy as np


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


def format_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """A plain text table: one row per model, one column per metric."""
    width = max(len(name) for name in rows) + 2
    head = "model".ljust(width) + "".join(c.rjust(14) for c in columns)
    lines = [head, "-" * len(head)]
    for name, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            cells.append(
                (
                    "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
                ).rjust(14)
            )
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)
