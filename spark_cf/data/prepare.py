"""From validated ratings to training data: indices, the held-out split, normalisation.

The split is decided per rating from a hash of (user, item, seed) (``random``) or per
user by time (``time``: each user's most recent ratings), so it does not depend on the
partitioning. The normalisation means are summed exactly (as decimals) for the same
reason: the same input gives the same bits whatever the partitioning and the cores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from spark_cf.data.indexing import IdIndex, apply_index, build_index
from spark_cf.model.normalization import Normalization
from spark_cf.schema import IS_VAL, ITEM, ITEM_IDX, RATING, TIMESTAMP, USER, USER_IDX

log = logging.getLogger(__name__)

_HASH_SCALE = float(2**63)


def tag_holdout(
    df: DataFrame, *, fraction: float, split: str, seed: int, user_col: str, item_col: str
) -> DataFrame:
    """Add a boolean ``is_val``: True for the ratings held out for evaluation.

    ``random``: a rating is held out when a hash of (user, item, seed) mapped to [0, 1)
    is below ``fraction``. ``time``: each user's ``floor(fraction * n_u)`` most recent
    ratings (ties by item) are held out, so a user with one rating keeps it for training.
    """
    if fraction <= 0:
        return df.withColumn(IS_VAL, F.lit(False))
    if split == "random":
        h = F.abs(F.xxhash64(F.col(user_col), F.col(item_col), F.lit(seed)).cast("double"))
        return df.withColumn(IS_VAL, (h / F.lit(_HASH_SCALE)) < F.lit(fraction))
    if split == "time":
        by_user = Window.partitionBy(user_col)
        recent = Window.partitionBy(user_col).orderBy(F.col(TIMESTAMP).desc(), F.col(item_col))
        n_val = F.floor(F.count(F.lit(1)).over(by_user) * F.lit(fraction))
        return df.withColumn(IS_VAL, F.row_number().over(recent) <= n_val)
    raise ValueError(f"unknown split {split!r}")


def _exact_sum(col: str = RATING):
    """The sum of a column as a decimal: exact, so independent of the partitioning."""
    return F.sum(F.col(col).cast("decimal(38,18)"))


def _exact_mean(total, count: int) -> float:
    """``total / count`` of an exact decimal sum, rounded once to float64 (0.0 for none)."""
    return float(Decimal(total) / count) if count else 0.0


def exact_item_means(ratings: DataFrame, num_items: int) -> np.ndarray:
    """Each item's mean rating over the rows of ``ratings``, summed exactly.

    The one computation of item means: the normalisation of the course's model
    (:func:`fit_normalization_spark`) and the item-mean baseline
    (:func:`spark_cf.outputs.evaluation.item_mean_baseline`) both call it.

    Parameters
    ----------
    ratings
        Rows with ``item_idx`` and ``rating`` (pass the training rows only).
    num_items
        The length of the result (the index's item count).

    Returns
    -------
    (num_items,) float64: the decimal sum of an item's ratings divided once by their
    count; an item with no row gets the mean of all rows (0.0 when there are none). The
    same bits whatever the partitioning.
    """
    rows = (
        ratings.groupBy(ITEM_IDX)
        .agg(_exact_sum().alias("s"), F.count(F.lit(1)).alias("n"))
        .collect()
    )
    total = sum((Decimal(row["s"]) for row in rows), Decimal(0))
    count = sum(row["n"] for row in rows)
    means = np.full(num_items, _exact_mean(total, count))
    for row in rows:
        means[row[ITEM_IDX]] = _exact_mean(row["s"], row["n"])
    return means


def fit_normalization_spark(
    df: DataFrame,
    num_items: int,
    *,
    mean_normalization: bool,
    biases: bool,
    rating_mean: float | None = None,
) -> Normalization:
    """Item means (:func:`exact_item_means`) or the global mean of the training rows
    (``is_val`` false), exact; an item without training rows gets the mean of all
    training rows. Nothing without ``mean_normalization``. ``rating_mean``: the global
    mean when the caller has it already (:func:`prepare` does), else it is summed here.

    Checked against :func:`spark_cf.reference.numpy_cf.fit_normalization`, which sums in
    float64 on its own.
    """
    zeros = np.zeros(num_items)
    if not mean_normalization:
        return Normalization(zeros, 0.0)
    train = df.where(~F.col(IS_VAL))
    if biases:
        if rating_mean is None:
            row = train.agg(_exact_sum().alias("s"), F.count(F.lit(1)).alias("n")).first()
            rating_mean = _exact_mean(row["s"], row["n"])
        return Normalization(zeros, rating_mean)
    return Normalization(exact_item_means(train, num_items), 0.0)


@dataclass
class TrainingData:
    """Indexed ratings with the split, the id index, the normalisation and the counts."""

    ratings: DataFrame  # user_id, item_id, rating, [timestamp], user_idx, item_idx, is_val
    index: IdIndex
    normalization: Normalization
    num_train: int
    num_val: int
    rating_mean: float = 0.0  # mean of the training ratings
    fingerprint: str = ""  # order-independent hash of the (user, item, rating) triples

    _arrays: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def arrays(self) -> dict[str, np.ndarray]:
        """The indexed ratings on the driver (item_idx, user_idx, rating, is_val), sorted
        by (user_idx, item_idx): for the NumPy reference and for verification. Collected
        once: the ratings are cached and never change."""
        if self._arrays is None:
            table = self.ratings.select(ITEM_IDX, USER_IDX, RATING, IS_VAL).toArrow()
            out = {name: table.column(name).to_numpy() for name in table.column_names}
            order = np.lexsort((out[ITEM_IDX], out[USER_IDX]))
            self._arrays = {name: np.ascontiguousarray(v[order]) for name, v in out.items()}
        return self._arrays


def prepare(
    ratings: DataFrame,
    *,
    holdout_fraction: float,
    split: str,
    seed: int,
    mean_normalization: bool,
    biases: bool,
) -> TrainingData:
    """Index the ratings, tag the held-out split, and fit the normalisation."""
    index = build_index(ratings)
    indexed = apply_index(ratings, index)
    tagged = tag_holdout(
        indexed,
        fraction=holdout_fraction,
        split=split,
        seed=seed,
        user_col=USER,
        item_col=ITEM,
    ).cache()
    stats = {
        row[IS_VAL]: row
        for row in tagged.groupBy(IS_VAL)
        .agg(
            F.count(F.lit(1)).alias("n"),
            _exact_sum().alias("s"),
            F.sum(F.xxhash64(USER, ITEM, RATING).cast("decimal(38,0)")).alias("h"),
        )
        .collect()
    }
    counts = {key: row["n"] for key, row in stats.items()}
    train_row = stats.get(False)
    rating_mean = _exact_mean(train_row["s"], train_row["n"]) if train_row else 0.0
    fingerprint = str(sum(int(row["h"]) for row in stats.values()) % (1 << 64))
    norm = fit_normalization_spark(
        tagged,
        index.num_items,
        mean_normalization=mean_normalization,
        biases=biases,
        rating_mean=rating_mean,
    )
    data = TrainingData(
        tagged, index, norm, counts.get(False, 0), counts.get(True, 0), rating_mean, fingerprint
    )
    log.info(
        "training data: %d users, %d items, %d training and %d held-out ratings",
        index.num_users,
        index.num_items,
        data.num_train,
        data.num_val,
    )
    return data
