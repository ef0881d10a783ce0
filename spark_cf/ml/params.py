"""The Params of :class:`~spark_cf.ml.SparkCF` and :class:`~spark_cf.ml.SparkCFModel`.

Named as pyspark.ml's ALS names them (``rank``, ``maxIter``, ``regParam``, ``userCol``...)
plus ours (``optimizer``, ``biases``, ``meanNormalization``, ``initScale``,
``learningRate``, ``initialModel``). The defaults are ``conf/default.toml``'s (read from
:mod:`spark_cf.config`), and every training Param is one key of the config: its range is
checked by the config's rules (:func:`settings_of`), so the two never disagree.
"""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters

from spark_cf.config import (
    LIBRARY_REG,
    Config,
    InputConfig,
    ModelConfig,
    RankingConfig,
    TrainConfig,
    fit_arguments,
)
from spark_cf.errors import ConfigError
from spark_cf.training.objective import OBJECTIVES

#: regParam's default, the one Param whose default is not its key's: model.reg = "auto"
#: chooses on the nightly job's held-out split, and the Estimator fits every row it is
#: given (tune regParam with CrossValidator)
DEFAULT_REG_PARAM = LIBRARY_REG

#: The training Params and the config key each stands for (its rules, its default).
CONFIG_KEYS: dict[str, str] = {
    "rank": "model.rank",
    "regParam": "model.reg",
    "meanNormalization": "model.mean_normalization",
    "biases": "model.biases",
    "initScale": "model.init_scale",
    "seed": "model.seed",
    "optimizer": "train.optimizer",
    "learningRate": "train.learning_rate",
    "maxIter": "train.max_iter",
    "tol": "train.tol",
    "numUserBlocks": "train.num_user_blocks",
    "numItemBlocks": "train.num_item_blocks",
    "alpha": "ranking.alpha",
}

#: The column Params and their config key (for the schema check's messages).
COLUMN_KEYS: dict[str, str] = {
    "userCol": "input.user_col",
    "itemCol": "input.item_col",
    "ratingCol": "input.rating_col",
}
COLD_START_STRATEGIES = ("nan", "drop", "mean")


def _config_default(key: str) -> Any:
    section, name = key.split(".")
    cls = {
        "model": ModelConfig,
        "train": TrainConfig,
        "input": InputConfig,
        "ranking": RankingConfig,
    }[section]
    return getattr(cls, name)


def _to_cold_start_strategy(value: Any) -> str:
    value = TypeConverters.toString(value)
    if value not in COLD_START_STRATEGIES:
        raise ConfigError(
            f"coldStartStrategy must be one of {', '.join(COLD_START_STRATEGIES)}, got {value!r}"
        )
    return value


def _to_objective(value: Any) -> str:
    value = TypeConverters.toString(value)
    if value not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {value!r}")
    return value


def rename_keys(message: str, mapping: dict[str, str]) -> str:
    """``message`` with the config keys of ``mapping`` (param -> key) replaced by the
    Params' names, so that errors from the config's rules speak the Params' language."""
    for param, key in sorted(mapping.items(), key=lambda kv: -len(kv[1])):
        message = message.replace(key, param)
    return message


class SparkCFModelParams(Params):
    """The Params a fitted model uses: the columns and the cold-start strategy."""

    userCol: Param[str] = Param(
        Params._dummy(),
        "userCol",
        "column of user ids: integers (up to int64) or strings, no StringIndexer needed",
        typeConverter=TypeConverters.toString,
    )
    itemCol: Param[str] = Param(
        Params._dummy(),
        "itemCol",
        "column of item ids: integers (up to int64) or strings, no StringIndexer needed",
        typeConverter=TypeConverters.toString,
    )
    predictionCol: Param[str] = Param(
        Params._dummy(),
        "predictionCol",
        "column transform() adds, float64",
        typeConverter=TypeConverters.toString,
    )
    coldStartStrategy: Param[str] = Param(
        Params._dummy(),
        "coldStartStrategy",
        "what transform() predicts for a user or an item the model never saw: 'nan' (NaN, "
        "as ALS), 'drop' (leave the row out, as ALS) or 'mean' (an unknown user gets the "
        "item's mean, an unknown item the mean of the training ratings: no NaN, so "
        "CrossValidator with RegressionEvaluator works)",
        typeConverter=_to_cold_start_strategy,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(
            userCol=InputConfig.user_col,
            itemCol=InputConfig.item_col,
            predictionCol="prediction",
            coldStartStrategy="nan",
        )


class SparkCFParams(SparkCFModelParams):
    """The Estimator's Params: the model, the optimiser and the start."""

    ratingCol: Param[str] = Param(
        Params._dummy(),
        "ratingCol",
        "column of ratings: any numeric type (null, NaN or infinite ratings are refused)",
        typeConverter=TypeConverters.toString,
    )
    rank: Param[int] = Param(
        Params._dummy(),
        "rank",
        "number of latent features (>= 1)",
        typeConverter=TypeConverters.toInt,
    )
    maxIter: Param[int] = Param(
        Params._dummy(),
        "maxIter",
        "the most iterations of the optimiser (>= 1); each is about one Spark job",
        typeConverter=TypeConverters.toInt,
    )
    regParam: Param[float] = Param(
        Params._dummy(),
        "regParam",
        "regularisation weight lambda (>= 0) on the SUMMED cost, not ALS's per-rating "
        "regParam: ours acts like ALS's regParam times the ratings of each user or item, "
        "so ALS's 0.1 is nearly no regularisation here. Take about ALS's value times the "
        "mean ratings per user or item (a warning says so when it looks like ALS's scale), "
        "or choose it with CrossValidator",
        typeConverter=TypeConverters.toFloat,
    )
    seed: Param[int] = Param(
        Params._dummy(),
        "seed",
        "seed of the random initial features (>= 0)",
        typeConverter=TypeConverters.toInt,
    )
    tol: Param[float] = Param(
        Params._dummy(),
        "tol",
        "stop when the relative decrease of the cost falls below this (>= 0)",
        typeConverter=TypeConverters.toFloat,
    )
    numUserBlocks: Param[int] = Param(
        Params._dummy(),
        "numUserBlocks",
        "user ranges of the block grid; 0 = from the data size and the cores",
        typeConverter=TypeConverters.toInt,
    )
    numItemBlocks: Param[int] = Param(
        Params._dummy(),
        "numItemBlocks",
        "item ranges of the block grid; 0 = from the data size and the cores",
        typeConverter=TypeConverters.toInt,
    )
    optimizer: Param[str] = Param(
        Params._dummy(),
        "optimizer",
        "'lbfgs' (no learning rate to tune), 'gd', 'momentum', 'nesterov' or 'adam'",
        typeConverter=TypeConverters.toString,
    )
    learningRate: Param[float] = Param(
        Params._dummy(),
        "learningRate",
        "step size of gd, momentum, nesterov and adam (> 0); lbfgs needs none",
        typeConverter=TypeConverters.toFloat,
    )
    biases: Param[bool] = Param(
        Params._dummy(),
        "biases",
        "add a user and an item bias to the prediction (regularised with regParam)",
        typeConverter=TypeConverters.toBoolean,
    )
    meanNormalization: Param[bool] = Param(
        Params._dummy(),
        "meanNormalization",
        "train on ratings minus the item mean (the global mean with biases) and add it "
        "back when predicting",
        typeConverter=TypeConverters.toBoolean,
    )
    initScale: Param[float] = Param(
        Params._dummy(),
        "initScale",
        "standard deviation of the random initial features (> 0)",
        typeConverter=TypeConverters.toFloat,
    )
    objective: Param[str] = Param(
        Params._dummy(),
        "objective",
        "'ratings': the course's cost over the rated pairs (predicts ratings); 'ranking': "
        "every (user, item) pair, rated ones as positives with confidence 1 + alpha x "
        "rating, the others as zeros (ranks items for top-N lists, as ALS's implicitPrefs; "
        "no mean normalisation; biases with biases=True)",
        typeConverter=_to_objective,
    )
    alpha: Param[float] = Param(
        Params._dummy(),
        "alpha",
        "objective 'ranking': the confidence of a rated pair is 1 + alpha x its rating "
        "(>= 0), as ALS's alpha",
        typeConverter=TypeConverters.toFloat,
    )
    initialModel: Param[Any] = Param(
        Params._dummy(),
        "initialModel",
        "a SparkCFModel to warm-start from: the users and items it knows (by id) start "
        "from its features and biases, the others at random; same rank. Unset = cold start",
        typeConverter=lambda value: _to_initial_model(value),
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(
            ratingCol=InputConfig.rating_col,
            objective="ratings",
            regParam=DEFAULT_REG_PARAM,
            **{
                param: _config_default(key)
                for param, key in CONFIG_KEYS.items()
                if param != "regParam"
            },
        )

    def settings_of(self) -> tuple[Config, dict[str, Any]]:
        """The training Params as a validated config (its rules, with the Params' names
        in the message) and as :func:`spark_cf.training.fit.fit`'s keyword arguments.

        Raises
        ------
        ConfigError
            A value out of range, naming the Param.
        """
        sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "ranking": {}}
        for param, key in CONFIG_KEYS.items():
            section, name = key.split(".")
            sections[section][name] = self.getOrDefault(param)
        try:
            cfg = Config().replace(**sections)
        except ConfigError as exc:
            raise ConfigError(rename_keys(str(exc), CONFIG_KEYS)) from None
        args = fit_arguments(cfg)
        if self.getOrDefault("objective") == "ranking":
            args.update(objective="ranking", alpha=cfg.ranking.alpha)
        return cfg, args


def _to_initial_model(value: Any) -> Any:
    from spark_cf.ml.model import SparkCFModel

    if value is not None and not isinstance(value, SparkCFModel):
        raise TypeError(f"initialModel must be a SparkCFModel, got {type(value).__name__}")
    return value


def add_accessors(cls: type, names: list[str]) -> type:
    """Give ``cls`` ALS's ``getX()`` and ``setX(value)`` for each Param name."""
    for name in names:
        cap = name[0].upper() + name[1:]

        def getter(self, _name=name):
            return self.getOrDefault(_name)

        def setter(self, value, _name=name):
            return self._set(**{_name: value})

        getter.__doc__ = f"Gets the value of :py:attr:`{name}` or its default value."
        setter.__doc__ = f"Sets the value of :py:attr:`{name}`."
        getter.__name__, setter.__name__ = f"get{cap}", f"set{cap}"
        if not hasattr(cls, getter.__name__):
            setattr(cls, getter.__name__, getter)
        if not hasattr(cls, setter.__name__):
            setattr(cls, setter.__name__, setter)
    return cls
