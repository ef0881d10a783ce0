"""The Estimator: ALS's surface on spark-cf's training (:func:`spark_cf.training.fit.fit`)."""

from __future__ import annotations

import logging
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator
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

from spark_cf.config import InputConfig, ModelConfig, RankingConfig, TrainConfig
from spark_cf.data.prepare import prepare
from spark_cf.data.validation import canonical, check_schema, resolve_duplicates, tag_reasons
from spark_cf.errors import InputError, SchemaError
from spark_cf.ml.model import SparkCFModel, SparkCFTrainingSummary
from spark_cf.ml.params import (
    COLUMN_KEYS,
    CONFIG_KEYS,
    DEFAULT_REG_PARAM,
    SparkCFParams,
    add_accessors,
    rename_keys,
)
from spark_cf.schema import REASON
from spark_cf.training.fit import fit, warn_reg

log = logging.getLogger(__name__)

_M, _T, _I, _R = ModelConfig, TrainConfig, InputConfig, RankingConfig
#: the folder of a saved SparkCF that holds its initialModel, when it has one
INITIAL_MODEL_DIR = "initialModel"


def usable_ratings(df: DataFrame, *, user_col: str, item_col: str, rating_col: str) -> DataFrame:
    """``df``'s ratings as ``(user_id, item_id, rating)``, one row per pair (repeated pairs
    averaged, as ``input.duplicates = "mean"``), after the ingest's checks.

    A library call has no quarantine table: a bad row (null, empty or blank id, null, NaN
    or infinite rating) raises instead, before any training. One Spark job.

    Raises
    ------
    SchemaError
        A column is missing or has a type we cannot use (naming the Param).
    InputError
        Bad rows: each reason with its count, and what to do.
    """
    cols = {"user_col": user_col, "item_col": item_col, "rating_col": rating_col}
    try:
        check_schema(df, **cols)
    except SchemaError as exc:
        raise SchemaError(rename_keys(str(exc), COLUMN_KEYS)) from None
    inf = float("inf")
    tagged = tag_reasons(df, rating_min=-inf, rating_max=inf, **cols)
    bad = {
        row[REASON]: row["count"]
        for row in tagged.where(F.col(REASON).isNotNull()).groupBy(REASON).count().collect()
    }
    if bad:
        reasons = ", ".join(f"{n} rows with {reason}" for reason, n in sorted(bad.items()))
        raise InputError(
            f"SparkCF.fit: {reasons}; drop or fix them before fitting (e.g. "
            f"df.dropna(subset=[{user_col!r}, {item_col!r}, {rating_col!r}]))"
        )
    return resolve_duplicates(canonical(df, **cols), "mean", has_timestamp=False)


class SparkCF(Estimator, SparkCFParams, MLWritable, MLReadable):
    """Collaborative filtering by full-batch gradient methods on Spark, as a pyspark.ml
    Estimator with ALS's Params and output shapes.

    Model (the course's, with optional biases): ratings ``y_ij`` of user ``j`` on item
    ``i``, item features ``x_i``, user parameters ``theta_j`` (``rank`` each)::

        J = 1/2 sum_{r(i,j)=1} (theta_j . x_i + b_i + b_j - y_ij)^2
            + regParam/2 (sum_i |x_i|^2 + sum_j |theta_j|^2 [+ sum b_i^2 + sum b_j^2])

    on ratings minus the item means (``meanNormalization``; minus the global mean with
    ``biases``), minimised by ``optimizer`` (L-BFGS by default) for at most ``maxIter``
    iterations or until J's relative decrease falls below ``tol``.

    ``objective="ranking"`` (ALS's ``implicitPrefs``) learns which items a user will
    choose instead: every (user, item) pair counts, a rated one as preference 1 with
    confidence ``1 + alpha x rating``, the others as preference 0 with weight 1::

        J = 1/2 sum_{all i,j} c_ij (p_ij - theta_j . x_i)^2 + regParam/2 (|X|^2 + |Theta|^2)

    with no mean normalisation (and biases only with ``biases=True``); ``transform`` then
    gives preference scores (near 1 = likely chosen), and ``recommendForAllUsers`` lists
    that rank better than the course's cost's (the nightly job's top-N model).

    **regParam is not ALS's**: ALS scales its regParam by each row's number of ratings,
    we regularise the summed cost as above, so the same number means very different
    models (ALS's usual 0.1 leaves ours nearly unregularised). Take about ALS's value
    times the mean ratings per user or item, or choose it with CrossValidator. When
    ``regParam / (mean ratings per user or item)`` is below 0.01 the fit logs a WARNING
    naming regParam and the value to try. The default is ``conf/default.toml``'s 10.

    Unlike ALS, ids may be any integers (up to int64) or strings (no StringIndexer), and
    the fit refuses bad rows (null, empty or blank ids, null, NaN or infinite ratings)
    with :class:`~spark_cf.errors.InputError`, naming each reason and its count; repeated
    (user, item) pairs are averaged. The defaults are ``conf/default.toml``'s, columns
    included (``user_id``, ``item_id``, ``rating``).

    Examples
    --------
    >>> cf = SparkCF(rank=10, maxIter=50, regParam=10.0, userCol="user", itemCol="item")
    >>> model = cf.fit(ratings)  # doctest: +SKIP
    >>> model.recommendForAllUsers(10, excludeRated=ratings)  # doctest: +SKIP
    """

    @keyword_only
    def __init__(
        self,
        *,
        rank: int = _M.rank,
        maxIter: int = _T.max_iter,  # noqa: N803 - ALS's names
        regParam: float = DEFAULT_REG_PARAM,  # noqa: N803
        userCol: str = _I.user_col,  # noqa: N803
        itemCol: str = _I.item_col,  # noqa: N803
        ratingCol: str = _I.rating_col,  # noqa: N803
        predictionCol: str = "prediction",  # noqa: N803
        coldStartStrategy: str = "nan",  # noqa: N803
        seed: int = _M.seed,
        tol: float = _T.tol,
        numUserBlocks: int = _T.num_user_blocks,  # noqa: N803
        numItemBlocks: int = _T.num_item_blocks,  # noqa: N803
        optimizer: str = _T.optimizer,
        learningRate: float = _T.learning_rate,  # noqa: N803
        biases: bool = _M.biases,
        meanNormalization: bool = _M.mean_normalization,  # noqa: N803
        initScale: float = _M.init_scale,  # noqa: N803
        objective: str = "ratings",
        alpha: float = _R.alpha,
        initialModel: SparkCFModel | None = None,  # noqa: N803
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(  # noqa: N802 - pyspark.ml's name
        self,
        *,
        rank: int = _M.rank,
        maxIter: int = _T.max_iter,  # noqa: N803
        regParam: float = DEFAULT_REG_PARAM,  # noqa: N803
        userCol: str = _I.user_col,  # noqa: N803
        itemCol: str = _I.item_col,  # noqa: N803
        ratingCol: str = _I.rating_col,  # noqa: N803
        predictionCol: str = "prediction",  # noqa: N803
        coldStartStrategy: str = "nan",  # noqa: N803
        seed: int = _M.seed,
        tol: float = _T.tol,
        numUserBlocks: int = _T.num_user_blocks,  # noqa: N803
        numItemBlocks: int = _T.num_item_blocks,  # noqa: N803
        optimizer: str = _T.optimizer,
        learningRate: float = _T.learning_rate,  # noqa: N803
        biases: bool = _M.biases,
        meanNormalization: bool = _M.mean_normalization,  # noqa: N803
        initScale: float = _M.init_scale,  # noqa: N803
        objective: str = "ratings",
        alpha: float = _R.alpha,
        initialModel: SparkCFModel | None = None,  # noqa: N803
    ) -> SparkCF:
        """Set the Params given (by keyword); the others keep their values."""
        return self._set(**self._input_kwargs)

    def _fit(self, dataset: DataFrame) -> SparkCFModel:
        cfg, kwargs = self.settings_of()
        ratings = usable_ratings(
            dataset,
            user_col=self.getOrDefault("userCol"),
            item_col=self.getOrDefault("itemCol"),
            rating_col=self.getOrDefault("ratingCol"),
        )
        log.info(
            "SparkCF.fit: %s",
            ", ".join(f"{param}={self.getOrDefault(param)!r}" for param in CONFIG_KEYS),
        )
        data = prepare(
            ratings,
            holdout_fraction=0.0,
            split="random",
            seed=cfg.model.seed,
            mean_normalization=cfg.model.mean_normalization,
            biases=cfg.model.biases,
        )
        try:
            if data.num_train == 0:
                raise InputError("SparkCF.fit: the DataFrame has no ratings")
            warn_reg(
                cfg.model.reg,
                data.num_train,
                data.index.num_users,
                data.index.num_items,
                "regParam",
            )
            initial = None
            if self.isDefined("initialModel") and self.getOrDefault("initialModel") is not None:
                initial = self.getOrDefault("initialModel").cfModel
            cf_model, result = fit(data, **kwargs, initial_model=initial)
        finally:
            data.ratings.unpersist()
        model = SparkCFModel(
            cf_model,
            rating_mean=data.rating_mean,
            summary=SparkCFTrainingSummary(result.history, result.stop_reason),
        )
        self._copyValues(model)
        return model

    def write(self) -> MLWriter:
        """A writer of the Params as pyspark.ml's metadata (``path/metadata``), with the
        ``initialModel`` beside them when set (``path/initialModel``)."""
        return _SparkCFWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        """A reader of what :meth:`write` saved."""
        return _SparkCFReader(cls)


add_accessors(
    SparkCF,
    ["userCol", "itemCol", "ratingCol", "predictionCol", "coldStartStrategy", "initialModel"]
    + ["objective"]
    + list(CONFIG_KEYS),
)


class _SparkCFWriter(MLWriter):
    def __init__(self, instance: SparkCF) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:  # noqa: N802 - pyspark.ml's name
        est = self.instance
        params: dict[str, Any] = {
            p.name: v for p, v in est._paramMap.items() if p.name != "initialModel"
        }
        initial = est.getOrDefault("initialModel") if est.isDefined("initialModel") else None
        DefaultParamsWriter.saveMetadata(
            est,
            path,
            self.sparkSession,
            extraMetadata={"hasInitialModel": initial is not None},
            paramMap=params,
        )
        if initial is not None:
            initial.write().save(f"{path}/{INITIAL_MODEL_DIR}")


class _SparkCFReader(MLReader):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> SparkCF:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        est = self.cls()
        est._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(est, metadata)
        if metadata.get("hasInitialModel"):
            est._set(initialModel=SparkCFModel.load(f"{path}/{INITIAL_MODEL_DIR}"))
        return est
