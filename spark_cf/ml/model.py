"""The fitted model for pyspark.ml: scoring, recommendations, persistence.

Every score comes from :mod:`spark_cf.outputs.recommend` (:func:`predict`,
:func:`top_n`) over the :class:`~spark_cf.model.cf_model.CFModel`, so the model scores
exactly as the nightly job's tables do.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pyspark.ml import Model
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_type

from spark_cf.data.indexing import IdIndex, apply_index
from spark_cf.errors import ModelError, SchemaError
from spark_cf.ml.params import SparkCFModelParams, add_accessors
from spark_cf.model.cf_model import CFModel
from spark_cf.model.persistence import factor_tables, load_model, save_model
from spark_cf.outputs.recommend import predict, top_n
from spark_cf.schema import ITEM, ITEM_IDX, PREDICTION, RANK, SCORE, USER, USER_IDX

log = logging.getLogger(__name__)

#: the folder of a saved SparkCFModel that holds the factors (a spark-cf model folder)
FACTORS_DIR = "factors"


class SparkCFTrainingSummary:
    """How the fit went, iteration by iteration (iteration 0 is the starting point).

    Like ``LogisticRegressionTrainingSummary.objectiveHistory``: ``objectiveHistory`` holds
    the cost J per iteration, ``gradientNormHistory`` its gradient's norm,
    ``trainRmseHistory`` and ``validationRmseHistory`` the RMSE on the training ratings and
    on the held-out ones (NaN: the Estimator holds none out).
    """

    def __init__(self, history: list[dict[str, float]], stop_reason: str) -> None:
        self.history = [dict(h) for h in history]
        self.stopReason = stop_reason

    def _column(self, key: str) -> list[float]:
        return [float(h[key]) for h in self.history]

    @property
    def objectiveHistory(self) -> list[float]:  # noqa: N802 - pyspark.ml's name
        """The cost J at each iteration."""
        return self._column("cost")

    @property
    def gradientNormHistory(self) -> list[float]:  # noqa: N802
        """The norm of J's gradient at each iteration."""
        return self._column("grad_norm")

    @property
    def trainRmseHistory(self) -> list[float]:  # noqa: N802
        """The RMSE on the training ratings at each iteration."""
        return self._column("train_rmse")

    @property
    def validationRmseHistory(self) -> list[float]:  # noqa: N802
        """The RMSE on the held-out ratings at each iteration (NaN when none)."""
        return self._column("val_rmse")

    @property
    def totalIterations(self) -> int:  # noqa: N802
        """Iterations run (the history has one more record: the start)."""
        return int(self.history[-1]["iteration"]) if self.history else 0


def _nested(recs: DataFrame, key: str, other: str, key_out: str, other_out: str) -> DataFrame:
    """Long-form top-N (key, rank, other, score) as ALS's shape:
    ``(key_out, recommendations: array<struct<other_out, rating>>)`` ordered by rank."""
    entry = F.struct(F.col(RANK), F.col(other).alias(other_out), F.col(SCORE).alias("rating"))
    grouped = recs.groupBy(key).agg(F.array_sort(F.collect_list(entry)).alias("_recs"))
    return grouped.select(
        F.col(key).alias(key_out),
        F.transform(
            "_recs",
            lambda s: F.struct(s[other_out].alias(other_out), s["rating"].alias("rating")),
        ).alias("recommendations"),
    )


def _transposed(model: CFModel) -> CFModel:
    """The same scores with the roles of users and items swapped (for the top users of
    each item): the items' factors as users', and each side's offsets moved over, so that
    ``x_i . theta_j + (b_j + g) + (mean_i + b_i)`` is the rule of :mod:`spark_cf.model`
    summed in another order (equal up to rounding)."""
    item_side = model.item_means + (model.item_bias if model.item_bias is not None else 0.0)
    user_side = (
        model.user_bias if model.user_bias is not None else np.zeros(len(model.user_factors))
    )
    return CFModel(
        index=IdIndex(model.index.item_ids, model.index.user_ids),
        item_factors=model.user_factors,
        user_factors=model.item_factors,
        item_means=np.asarray(user_side, dtype=np.float64),
        global_mean=model.global_mean,
        user_bias=np.asarray(item_side, dtype=np.float64),
    )


class SparkCFModel(Model, SparkCFModelParams, MLWritable, MLReadable):
    """A fitted :class:`~spark_cf.ml.SparkCF`: ALSModel's surface on spark-cf's model.

    ``userFactors``/``itemFactors`` are DataFrames ``(id, features[, bias][, mean])``;
    :meth:`transform` adds ``predictionCol``; ``recommendFor*`` return ALS's shape
    ``(userCol, recommendations: array<struct<itemCol, rating>>)`` (``rating`` a double),
    and take ``excludeRated``, a DataFrame of (userCol, itemCol) pairs to leave out (the
    training ratings, typically), which ALS lacks. Ids keep their type (int or string).

    Scoring rule (:mod:`spark_cf.model.cf_model`)::

        prediction(user j, item i) = theta_j . x_i + mean_i + b_i + b_j + global_mean
    """

    def __init__(
        self,
        cf_model: CFModel | None = None,
        rating_mean: float = float("nan"),
        summary: SparkCFTrainingSummary | None = None,
    ) -> None:
        super().__init__()
        self._cf = cf_model
        self._rating_mean = float(rating_mean)
        self._summary = summary

    # ------------------------------------------------------------------ the fitted model

    @property
    def cfModel(self) -> CFModel:  # noqa: N802
        """The model as spark-cf's :class:`~spark_cf.model.cf_model.CFModel` (driver side)."""
        if self._cf is None:
            raise ModelError("this SparkCFModel holds no model: fit SparkCF or load one")
        return self._cf

    @property
    def rank(self) -> int:
        """The number of latent features."""
        return self.cfModel.rank

    @property
    def ratingMean(self) -> float:  # noqa: N802
        """The mean of the training ratings (what coldStartStrategy 'mean' gives unknown
        items)."""
        return self._rating_mean

    @property
    def hasSummary(self) -> bool:  # noqa: N802
        """Whether the model has a training summary (it is saved and loaded with it)."""
        return self._summary is not None

    @property
    def summary(self) -> SparkCFTrainingSummary:
        """The objective history of the fit (:class:`SparkCFTrainingSummary`)."""
        if self._summary is None:
            raise RuntimeError(f"No training summary available for this {type(self).__name__}")
        return self._summary

    def _factors(self, which: str) -> DataFrame:
        users, items = factor_tables(self.cfModel)
        table = users if which == "user" else items
        table = table.rename_columns(["id", *table.column_names[1:]])
        return self._spark().createDataFrame(table)

    @property
    def userFactors(self) -> DataFrame:  # noqa: N802
        """DataFrame ``(id, features[, bias])``: each user's parameters (ALS: id, features)."""
        return self._factors("user")

    @property
    def itemFactors(self) -> DataFrame:  # noqa: N802
        """DataFrame ``(id, features, mean[, bias])``: each item's features and offsets."""
        return self._factors("item")

    @staticmethod
    def _spark():
        from pyspark.sql import SparkSession

        return SparkSession.active()

    # ------------------------------------------------------------------ scoring

    def _id_types(self):
        index = self.cfModel.index
        return from_arrow_type(index.user_ids.type), from_arrow_type(index.item_ids.type)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        user_col, item_col = self.getOrDefault("userCol"), self.getOrDefault("itemCol")
        out_col = self.getOrDefault("predictionCol")
        strategy = self.getOrDefault("coldStartStrategy")
        columns = dataset.columns
        for key, col in (("userCol", user_col), ("itemCol", item_col)):
            if col not in columns:
                raise SchemaError(
                    f"transform: no column {col!r} ({key}); the columns are "
                    f"{', '.join(columns)}: set {key}"
                )
        if out_col in columns:
            raise SchemaError(
                f"transform: the column {out_col!r} (predictionCol) exists already; set "
                f"predictionCol to another name"
            )
        user_type, item_type = self._id_types()
        keyed = dataset.withColumn("_cf_u", F.col(user_col).cast(user_type)).withColumn(
            "_cf_i", F.col(item_col).cast(item_type)
        )
        pairs = keyed.select(F.col("_cf_u").alias(USER), F.col("_cf_i").alias(ITEM)).distinct()
        mean = strategy == "mean"
        scored = predict(
            pairs,
            self.cfModel,
            unknown_item="global_mean" if mean else "nan",
            fallback=self._rating_mean,
        )
        if not mean:  # ALS's rule: a user the model never saw gets NaN too
            known = self.cfModel.index.user_map(pairs.sparkSession).select(
                USER, F.lit(True).alias("_cf_known")
            )
            scored = scored.join(F.broadcast(known), on=USER, how="left").select(
                USER,
                ITEM,
                F.when(F.col("_cf_known"), F.col(PREDICTION))
                .otherwise(F.lit(float("nan")))
                .alias(PREDICTION),
            )
        scored = scored.select(
            F.col(USER).alias("_cf_su"),
            F.col(ITEM).alias("_cf_si"),
            F.col(PREDICTION).alias("_cf_p"),
        )
        on = F.col("_cf_u").eqNullSafe(F.col("_cf_su")) & F.col("_cf_i").eqNullSafe(F.col("_cf_si"))
        out = keyed.join(scored, on=on, how="left").select(
            *[keyed[c] for c in columns], F.col("_cf_p").alias(out_col)
        )
        if strategy == "drop":
            out = out.where(~F.isnan(F.col(out_col)))
        return out

    def _rated(self, exclude_rated: DataFrame | None, transposed: bool = False):
        """``exclude_rated``'s (userCol, itemCol) pairs as the model's indices."""
        if exclude_rated is None:
            return None
        user_type, item_type = self._id_types()
        pairs = exclude_rated.select(
            F.col(self.getOrDefault("userCol")).cast(user_type).alias(USER),
            F.col(self.getOrDefault("itemCol")).cast(item_type).alias(ITEM),
        )
        indexed = apply_index(pairs, self.cfModel.index)
        if transposed:
            return indexed.select(F.col(ITEM_IDX).alias(USER_IDX), F.col(USER_IDX).alias(ITEM_IDX))
        return indexed.select(USER_IDX, ITEM_IDX)

    def _subset(self, dataset: DataFrame, key: str, users: bool) -> np.ndarray:
        """The indices of the distinct ids of ``dataset[key]`` the model knows."""
        col = self.getOrDefault(key)
        if col not in dataset.columns:
            raise SchemaError(f"no column {col!r} ({key}); the columns are {dataset.columns}")
        index = self.cfModel.index
        spark_type = self._id_types()[0 if users else 1]
        raw = (
            dataset.select(F.col(col).cast(spark_type).alias("id"))
            .where(F.col("id").isNotNull())
            .distinct()
            .toArrow()
            .column("id")
            .combine_chunks()
        )
        if not len(raw):
            return np.empty(0, dtype=np.int64)
        positions = index.user_positions(raw) if users else index.item_positions(raw)
        return positions[positions >= 0]

    def _for_users(self, n: int, users, exclude_rated: DataFrame | None) -> DataFrame:
        recs = top_n(self._spark(), self.cfModel, self._rated(exclude_rated), n=n, users=users)
        return _nested(recs, USER, ITEM, self.getOrDefault("userCol"), self.getOrDefault("itemCol"))

    def _for_items(self, n: int, items, exclude_rated: DataFrame | None) -> DataFrame:
        recs = top_n(
            self._spark(),
            _transposed(self.cfModel),
            self._rated(exclude_rated, transposed=True),
            n=n,
            users=items,
        )
        return _nested(recs, USER, ITEM, self.getOrDefault("itemCol"), self.getOrDefault("userCol"))

    def recommendForAllUsers(  # noqa: N802 - ALS's name
        self,
        numItems: int,
        excludeRated: DataFrame | None = None,  # noqa: N803
    ) -> DataFrame:
        """The top ``numItems`` items of every user the model knows.

        Parameters
        ----------
        numItems
            Recommendations per user (fewer when a user has fewer items left).
        excludeRated
            A DataFrame with ``userCol`` and ``itemCol``: those pairs are never
            recommended (pass the training ratings to leave out what users rated).

        Returns
        -------
        DataFrame
            ``(userCol, recommendations: array<struct<itemCol, rating>>)``, best first,
            ties to the smaller item id; a user with no item left (all excluded) gets no
            row.
        """
        return self._for_users(numItems, None, excludeRated)

    def recommendForUserSubset(  # noqa: N802
        self,
        dataset: DataFrame,
        numItems: int,  # noqa: N803
        excludeRated: DataFrame | None = None,  # noqa: N803
    ) -> DataFrame:
        """:meth:`recommendForAllUsers` for the distinct users of ``dataset[userCol]``
        (users the model does not know get no row, as in ALS)."""
        users = self._subset(dataset, "userCol", users=True)
        return self._for_users(numItems, users, excludeRated)

    def recommendForAllItems(  # noqa: N802
        self,
        numUsers: int,
        excludeRated: DataFrame | None = None,  # noqa: N803
    ) -> DataFrame:
        """The top ``numUsers`` users of every item: ``(itemCol, recommendations:
        array<struct<userCol, rating>>)``; ``excludeRated`` as in
        :meth:`recommendForAllUsers`."""
        return self._for_items(numUsers, None, excludeRated)

    def recommendForItemSubset(  # noqa: N802
        self,
        dataset: DataFrame,
        numUsers: int,  # noqa: N803
        excludeRated: DataFrame | None = None,  # noqa: N803
    ) -> DataFrame:
        """:meth:`recommendForAllItems` for the distinct items of ``dataset[itemCol]``."""
        items = self._subset(dataset, "itemCol", users=False)
        return self._for_items(numUsers, items, excludeRated)

    # ------------------------------------------------------------------ persistence

    def write(self) -> MLWriter:
        """A writer: ``model.write().overwrite().save(path)`` writes the Params as
        pyspark.ml's metadata (``path/metadata``) and the model as a spark-cf model folder
        (``path/factors``: Parquet factor tables and metadata.json)."""
        return _SparkCFModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        """A reader of what :meth:`write` saved."""
        return _SparkCFModelReader(cls)


add_accessors(SparkCFModel, ["userCol", "itemCol", "predictionCol", "coldStartStrategy"])


class _SparkCFModelWriter(MLWriter):
    def __init__(self, instance: SparkCFModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:  # noqa: N802 - pyspark.ml's name
        model = self.instance
        extra: dict[str, Any] = {"ratingMean": model.ratingMean}
        if model.hasSummary:
            extra["summary"] = {
                "history": model.summary.history,
                "stopReason": model.summary.stopReason,
            }
        DefaultParamsWriter.saveMetadata(model, path, self.sparkSession, extraMetadata=extra)
        save_model(self.sparkSession, model.cfModel, f"{path}/{FACTORS_DIR}")


class _SparkCFModelReader(MLReader):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> SparkCFModel:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        summary = metadata.get("summary")
        model = self.cls(
            load_model(self.sparkSession, f"{path}/{FACTORS_DIR}"),
            rating_mean=metadata["ratingMean"],
            summary=SparkCFTrainingSummary(summary["history"], summary["stopReason"])
            if summary
            else None,
        )
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model
