"""Typed configuration: frozen dataclasses loaded from TOML.

Every key, its meaning, unit and default is documented in ``conf/default.toml``; the
dataclasses below are the single source of the defaults (a test checks that the two agree).
A config is loaded from a file with :func:`load_config`, optionally changed by ``--set
section.key=value`` overrides, and validated as a whole: unknown sections or keys, wrong
types and out-of-range values raise :class:`~spark_cf.errors.ConfigError` naming the key.
Library code never reads configuration files itself; jobs turn the config into arguments.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from spark_cf.errors import ConfigError
from spark_cf.training.optimizers import LBFGS_PRECONDITIONERS

#: where the user-side parameters live during training (``train.user_side``):
#: "driver", "executors" (:mod:`spark_cf.training.partitioned`), or "auto" (by size)
USER_SIDES = ("auto", "driver", "executors")

OPTIMIZERS = ("gd", "momentum", "nesterov", "adam", "lbfgs")
#: model.reg's value that chooses the regularisation from model.reg_grid
AUTO = "auto"
#: the reg of the library's entry points (fit's reg_param, SparkCF's regParam): a number,
#: since "auto" needs held-out ratings that a caller's data need not have (pass "auto")
LIBRARY_REG = 10.0
DUPLICATE_POLICIES = ("latest", "mean", "sum", "error")
FEEDBACK_KINDS = ("ratings", "interactions")
SPLITS = ("random", "time")
UNKNOWN_ITEM_POLICIES = ("nan", "drop", "global_mean")
#: Bounds of the block grid. Block setup builds the bounds of every range on the driver,
#: and every evaluation of J sums one partial result per block there: 1e8 user blocks
#: hung the setup with a 1 GB driver. The automatic grid uses at most 16 blocks, so these
#: bounds refuse only grids no data set needs, at load instead of hours later.
MAX_BLOCKS_PER_SIDE = 65_536
MAX_BLOCKS = 100_000


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "spark-cf"
    conf: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InputConfig:
    path: str = ""
    feedback: str = "ratings"
    user_col: str = "user_id"
    item_col: str = "item_id"
    rating_col: str = "rating"
    timestamp_col: str = ""
    rating_min: float = 0.5
    rating_max: float = 5.0
    duplicates: str = "mean"


@dataclass(frozen=True)
class ModelConfig:
    rank: int = 10
    reg: float | str = AUTO
    reg_grid: tuple[float, ...] = (2.5, 5.0, 10.0, 20.0, 40.0)
    mean_normalization: bool = True
    biases: bool = False
    init_scale: float = 0.1
    seed: int = 42


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "lbfgs"
    learning_rate: float = 0.0003
    max_iter: int = 100
    tol: float = 1e-7
    num_user_blocks: int = 0
    num_item_blocks: int = 0
    checkpoint_every: int = 0
    checkpoint_dir: str = ""
    resume: bool = False
    momentum: float = 0.9
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lbfgs_memory: int = 10
    lbfgs_precondition: str = "curvature"
    user_side: str = "auto"
    divergence_patience: int = 3
    warm_start: str = ""


@dataclass(frozen=True)
class RankingConfig:
    enabled: bool = True
    rank: int = 10
    reg: float = 30.0
    alpha: float = 0.5
    biases: bool = False
    max_iter: int = 25


@dataclass(frozen=True)
class EvaluateConfig:
    holdout_fraction: float = 0.2
    split: str = "random"
    k: int = 10
    relevance_threshold: float = 4.0
    refit: bool = False


@dataclass(frozen=True)
class PredictConfig:
    pairs: str = ""
    unknown_item: str = "nan"
    clip: bool = True


@dataclass(frozen=True)
class RecommendConfig:
    top_n: int = 10
    users: tuple[Any, ...] = ()
    exclude_rated: bool = True
    block_size: int = 4096


@dataclass(frozen=True)
class OutputConfig:
    root: str = "output"
    run_date: str = ""
    lock_timeout_hours: float = 24.0

    @property
    def lock_timeout_s(self) -> float:
        """``lock_timeout_hours`` in seconds, as :mod:`spark_cf.outputs.publish` takes it."""
        return self.lock_timeout_hours * 3600.0


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as plain nested dicts (for ``metadata.json`` and fingerprints)."""
        out: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            values = {}
            for sf in dataclasses.fields(section):
                v = getattr(section, sf.name)
                if isinstance(v, Mapping):
                    v = dict(v)
                elif isinstance(v, tuple):
                    v = list(v)
                values[sf.name] = v
            out[f.name] = values
        return out

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """Return a copy with some keys changed, validated like a loaded config.

        ``cfg.replace(train={"max_iter": 5})`` changes ``train.max_iter`` only.
        """
        raw = self.to_dict()
        for name, values in sections.items():
            if name not in raw:
                raise ConfigError(f"unknown config section [{name}]")
            raw[name].update(values)
        return config_from_dict(raw)


_SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _coerce(key: str, expected: Any, value: Any) -> Any:
    """Check ``value`` against the annotated type; ints are accepted for floats."""
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if expected == float | str:  # model.reg: a number or "auto"
        if isinstance(value, str):
            if value != AUTO:
                raise ConfigError(f'{key} must be a number or "{AUTO}", got {value!r}')
            return value
        return _coerce(key, float, value)
    if expected is str:
        if isinstance(value, (datetime.date, datetime.datetime)):
            value = value.isoformat()  # --set output.run_date=2026-11-23 is a TOML date
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    origin = getattr(expected, "__origin__", None)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(value)
    if origin in (Mapping, dict) or expected is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        nested = [k for k, v in value.items() if isinstance(v, Mapping)]
        if nested:
            raise ConfigError(
                f"{key} has a nested table under {nested[0]!r}: quote Spark keys with dots, "
                f'e.g. "spark.driver.memory" = "4g"'
            )
        return {
            str(k): str(v) if not isinstance(v, bool) else str(v).lower() for k, v in value.items()
        }
    raise AssertionError(f"unhandled type {expected} for {key}")  # pragma: no cover


def _check(cond: bool, key: str, rule: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key} {rule}, got {value!r}")


def _validate(cfg: Config) -> None:
    m, t, i, e, p, r = cfg.model, cfg.train, cfg.input, cfg.evaluate, cfg.predict, cfg.recommend
    _check(bool(cfg.spark.master), "spark.master", "must not be empty", cfg.spark.master)
    _check(
        i.feedback in FEEDBACK_KINDS,
        "input.feedback",
        f"must be one of {', '.join(FEEDBACK_KINDS)}",
        i.feedback,
    )
    for col in ("user_col", "item_col"):
        _check(bool(getattr(i, col)), f"input.{col}", "must not be empty", getattr(i, col))
    _check(
        bool(i.rating_col) or i.feedback == "interactions",
        "input.rating_col",
        "must not be empty with input.feedback = 'ratings' (\"\" is for "
        "input.feedback = 'interactions': every row is one interaction of value 1)",
        i.rating_col,
    )
    _check(
        i.rating_min < i.rating_max,
        "input.rating_min",
        f"must be below input.rating_max ({i.rating_max})",
        i.rating_min,
    )
    _check(
        i.duplicates in DUPLICATE_POLICIES,
        "input.duplicates",
        f"must be one of {', '.join(DUPLICATE_POLICIES)}",
        i.duplicates,
    )
    _check(
        not (i.duplicates == "latest" and not i.timestamp_col),
        "input.duplicates",
        "= 'latest' needs input.timestamp_col to be set",
        i.duplicates,
    )
    _check(m.rank >= 1, "model.rank", "must be >= 1", m.rank)
    _check(m.reg == AUTO or m.reg >= 0, "model.reg", f'must be >= 0 or "{AUTO}"', m.reg)
    _check(
        bool(m.reg_grid)
        and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r >= 0
            for r in m.reg_grid
        ),
        "model.reg_grid",
        "must be a non-empty list of numbers >= 0",
        list(m.reg_grid),
    )
    _check(m.init_scale > 0, "model.init_scale", "must be > 0", m.init_scale)
    _check(m.seed >= 0, "model.seed", "must be >= 0", m.seed)
    rk = cfg.ranking
    _check(
        rk.enabled or i.feedback == "ratings",
        "ranking.enabled",
        "must be true with input.feedback = 'interactions' (without ratings the ranking "
        "model is the only one trained)",
        rk.enabled,
    )
    _check(rk.rank >= 1, "ranking.rank", "must be >= 1", rk.rank)
    _check(rk.reg >= 0, "ranking.reg", "must be >= 0", rk.reg)
    _check(rk.alpha >= 0, "ranking.alpha", "must be >= 0", rk.alpha)
    _check(rk.max_iter >= 1, "ranking.max_iter", "must be >= 1", rk.max_iter)
    _check(
        t.optimizer in OPTIMIZERS,
        "train.optimizer",
        f"must be one of {', '.join(OPTIMIZERS)}",
        t.optimizer,
    )
    _check(
        t.lbfgs_precondition in LBFGS_PRECONDITIONERS,
        "train.lbfgs_precondition",
        f"must be one of {', '.join(LBFGS_PRECONDITIONERS)}",
        t.lbfgs_precondition,
    )
    _check(
        t.user_side in USER_SIDES,
        "train.user_side",
        f"must be one of {', '.join(USER_SIDES)}",
        t.user_side,
    )
    _check(t.learning_rate > 0, "train.learning_rate", "must be > 0", t.learning_rate)
    _check(t.max_iter >= 1, "train.max_iter", "must be >= 1", t.max_iter)
    _check(t.tol >= 0, "train.tol", "must be >= 0", t.tol)
    for key in ("num_user_blocks", "num_item_blocks"):
        _check(
            0 <= getattr(t, key) <= MAX_BLOCKS_PER_SIDE,
            f"train.{key}",
            f"must be in [0, {MAX_BLOCKS_PER_SIDE:,}] (0 = auto)",
            getattr(t, key),
        )
    _check(
        max(t.num_user_blocks, 1) * max(t.num_item_blocks, 1) <= MAX_BLOCKS,
        "train.num_user_blocks",
        f"x train.num_item_blocks must be at most {MAX_BLOCKS:,} blocks "
        f"(num_item_blocks = {t.num_item_blocks})",
        t.num_user_blocks,
    )
    _check(
        t.checkpoint_every >= 0,
        "train.checkpoint_every",
        "must be >= 0 (0 = never)",
        t.checkpoint_every,
    )
    _check(
        not (t.checkpoint_every > 0 and not t.checkpoint_dir),
        "train.checkpoint_dir",
        "must be set when train.checkpoint_every > 0",
        t.checkpoint_dir,
    )
    _check(
        not (t.resume and not t.checkpoint_dir),
        "train.checkpoint_dir",
        "must be set when train.resume = true",
        t.checkpoint_dir,
    )
    _check(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)", t.momentum)
    _check(0 <= t.adam_beta1 < 1, "train.adam_beta1", "must be in [0, 1)", t.adam_beta1)
    _check(0 <= t.adam_beta2 < 1, "train.adam_beta2", "must be in [0, 1)", t.adam_beta2)
    _check(t.adam_epsilon > 0, "train.adam_epsilon", "must be > 0", t.adam_epsilon)
    _check(t.lbfgs_memory >= 1, "train.lbfgs_memory", "must be >= 1", t.lbfgs_memory)
    _check(
        t.divergence_patience >= 1,
        "train.divergence_patience",
        "must be >= 1",
        t.divergence_patience,
    )
    _check(
        not (m.reg == AUTO and e.holdout_fraction == 0),
        "model.reg",
        'is "auto", which chooses on the held-out ratings: set evaluate.holdout_fraction '
        "> 0 or give model.reg a number",
        m.reg,
    )
    _check(
        0 <= e.holdout_fraction < 1,
        "evaluate.holdout_fraction",
        "must be in [0, 1)",
        e.holdout_fraction,
    )
    _check(e.split in SPLITS, "evaluate.split", f"must be one of {', '.join(SPLITS)}", e.split)
    _check(
        not (e.split == "time" and not i.timestamp_col),
        "evaluate.split",
        "= 'time' needs input.timestamp_col to be set",
        e.split,
    )
    _check(e.k >= 1, "evaluate.k", "must be >= 1", e.k)
    _check(
        p.unknown_item in UNKNOWN_ITEM_POLICIES,
        "predict.unknown_item",
        f"must be one of {', '.join(UNKNOWN_ITEM_POLICIES)}",
        p.unknown_item,
    )
    _check(r.top_n >= 1, "recommend.top_n", "must be >= 1", r.top_n)
    _check(r.block_size >= 1, "recommend.block_size", "must be >= 1", r.block_size)
    _check(bool(cfg.output.root), "output.root", "must not be empty", cfg.output.root)
    _check(
        cfg.output.lock_timeout_hours > 0,
        "output.lock_timeout_hours",
        "must be > 0",
        cfg.output.lock_timeout_hours,
    )
    if cfg.output.run_date:
        import datetime as _dt

        try:
            _dt.date.fromisoformat(cfg.output.run_date)
        except ValueError:
            raise ConfigError(
                f"output.run_date must be a date YYYY-MM-DD, got {cfg.output.run_date!r}"
            ) from None


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested dicts (as TOML gives them)."""
    sections = {}
    for name, values in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown config section [{name}]; known: {', '.join(_SECTIONS)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table, got {values!r}")
        cls = _SECTIONS[name]
        hints = get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"unknown config key {name}.{key}; known in [{name}]: {', '.join(hints)}"
                )
            kwargs[key] = _coerce(f"{name}.{key}", hints[key], value)
        sections[name] = cls(**kwargs)
    cfg = Config(**sections)
    _validate(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse one ``section.key=value``; the value is read as TOML, else as a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set needs section.key=value, got {text!r}")
    dotted, value_text = text.split("=", 1)
    dotted = dotted.strip()
    if '"' in dotted or "'" in dotted:
        # a quoted TOML key, as in the file: spark.conf."spark.sql.shuffle.partitions"
        try:
            path, node = [], tomllib.loads(f"{dotted} = 0")
            while isinstance(node, dict) and len(node) == 1:
                ((name, node),) = node.items()
                path.append(name)
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"--set needs section.key=value, got {text!r}") from None
        dotted = ".".join(path)
    parts = dotted.split(".", 1)
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set needs section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    return parts[0], parts[1], value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a TOML config file (or the defaults when ``path`` is None) and apply overrides.

    Parameters
    ----------
    path
        A TOML file; sections and keys as in ``conf/default.toml``. Missing keys keep
        their defaults.
    overrides
        Strings ``section.key=value`` (from ``--set``); values are TOML literals, and a
        value that is not valid TOML is taken as a string (``--set input.path=/a/b``).

    Raises
    ------
    ConfigError
        Unreadable file, unknown section or key, wrong type or out-of-range value.
    """
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"[{section}] must be a table")
        if section == "spark" and key.startswith("conf."):
            # --set spark.conf.spark.sql.shuffle.partitions=4 sets one Spark setting
            raw[section].setdefault("conf", {})[key[len("conf.") :]] = value
        elif "." in key:
            raise ConfigError(f"--set needs section.key=value, got {text!r}")
        else:
            raw[section][key] = value
    return config_from_dict(raw)


def fit_arguments(cfg: Config, *, ranking: bool = False) -> dict[str, Any]:
    """``[model]`` and ``[train]`` as the keyword arguments of
    :func:`spark_cf.training.fit.fit` (``model.reg`` becomes ``reg_param``).

    ``ranking=True``: the arguments of the top-N model instead, ``[ranking]``'s rank, reg,
    alpha, biases and max_iter on ``[train]``'s optimiser, with the ranking objective.

    Left out, for the job to resolve: ``model.mean_normalization`` (applied when the
    ratings are prepared), ``train.warm_start`` (a path or ``"latest"``: the job loads the
    model and passes it as ``initial_model``) and the checkpoint keys (the job passes a
    checkpointer built by :func:`spark_cf.training.checkpoints.from_train_config`).
    """
    m, t = cfg.model, cfg.train
    args = {
        "rank": m.rank,
        "reg_param": m.reg,
        "reg_grid": tuple(float(r) for r in m.reg_grid),
        "biases": m.biases,
        "init_scale": m.init_scale,
        "seed": m.seed,
        "optimizer": t.optimizer,
        "learning_rate": t.learning_rate,
        "max_iter": t.max_iter,
        "tol": t.tol,
        "num_user_blocks": t.num_user_blocks,
        "num_item_blocks": t.num_item_blocks,
        "momentum": t.momentum,
        "adam_beta1": t.adam_beta1,
        "adam_beta2": t.adam_beta2,
        "adam_epsilon": t.adam_epsilon,
        "lbfgs_memory": t.lbfgs_memory,
        "lbfgs_precondition": t.lbfgs_precondition,
        "user_side": t.user_side,
        "divergence_patience": t.divergence_patience,
    }
    if ranking:
        rk = cfg.ranking
        args.update(
            rank=rk.rank,
            reg_param=rk.reg,
            max_iter=rk.max_iter,
            biases=rk.biases,
            objective="ranking",
            alpha=rk.alpha,
        )
    return args
