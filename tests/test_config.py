"""Typed configuration: defaults, the TOML files, overrides, and refusals naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spark_cf.config import Config, load_config, parse_override
from spark_cf.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def test_default_toml_matches_the_dataclass_defaults():
    assert load_config(CONF / "default.toml") == Config()
    assert load_config(None) == Config()


def test_default_toml_names_every_key():
    import tomllib

    with (CONF / "default.toml").open("rb") as fh:
        raw = tomllib.load(fh)
    assert {s: set(v) for s, v in raw.items()} == {s: set(v) for s, v in Config().to_dict().items()}


@pytest.mark.parametrize("name", ["local.toml", "nightly.toml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONF / name)
    assert cfg.input.path


def test_required_keys_exist_with_their_names():
    d = Config().to_dict()
    expected = {
        "spark": {"master", "app_name", "conf"},
        "input": {
            "path",
            "feedback",
            "user_col",
            "item_col",
            "rating_col",
            "timestamp_col",
            "rating_min",
            "rating_max",
            "duplicates",
        },
        "model": {"rank", "reg", "mean_normalization", "biases", "init_scale", "seed"},
        "train": {
            "optimizer",
            "learning_rate",
            "max_iter",
            "tol",
            "num_user_blocks",
            "num_item_blocks",
            "checkpoint_every",
            "checkpoint_dir",
        },
        "evaluate": {"holdout_fraction", "split", "k", "relevance_threshold"},
        "predict": {"pairs"},
        "recommend": {"top_n", "users", "exclude_rated"},
        "output": {"root", "run_date"},
    }
    for section, keys in expected.items():
        assert keys <= set(d[section]), section
    assert (d["input"]["user_col"], d["input"]["item_col"], d["input"]["rating_col"]) == (
        "user_id",
        "item_id",
        "rating",
    )


def test_overrides_are_toml_literals_or_strings(tmp_path):
    cfg = load_config(
        CONF / "local.toml",
        [
            "model.rank=20",
            "model.reg=0.5",
            "input.path=/some/where",
            "model.biases=true",
            "recommend.users=[1, 2]",
            "spark.conf.spark.sql.shuffle.partitions=3",
        ],
    )
    assert cfg.model.rank == 20 and cfg.model.reg == 0.5 and cfg.model.biases is True
    assert cfg.input.path == "/some/where"
    assert cfg.recommend.users == (1, 2)
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "3"
    assert cfg.spark.conf["spark.driver.memory"] == "4g"  # the file's table is kept
    assert parse_override("a.b=x=y") == ("a", "b", "x=y")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.rank=0", "model.rank"),
        ("model.reg=-1", "model.reg"),
        ("train.learning_rate=0", "train.learning_rate"),
        ("input.rating_min=5.0", "input.rating_min"),
        ("train.optimizer='sgd'", "train.optimizer"),
        ("train.user_side='nowhere'", "train.user_side"),
        ("model.rank='ten'", "model.rank"),
        ("model.rank=2.5", "model.rank"),
        ("model.biases=1", "model.biases"),
        ("model.ranks=3", "model.ranks"),
        ("modell.rank=3", "modell"),
        ("input.duplicates='latest'", "input.duplicates"),
        ("evaluate.holdout_fraction=1.0", "evaluate.holdout_fraction"),
        ("evaluate.split='time'", "evaluate.split"),
        ("train.checkpoint_every=5", "train.checkpoint_dir"),
        ("output.run_date='yesterday'", "output.run_date"),
        ("recommend.top_n=0", "recommend.top_n"),
        ("model.reg=inf", "model.reg"),
        ("train.learning_rate=nan", "train.learning_rate"),
        ("predict.unknown_item='zero'", "predict.unknown_item"),
        ("input.feedback='implicit'", "input.feedback"),
        ("input.rating_col=''", "input.rating_col"),
        ("input.duplicates='max'", "input.duplicates"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(CONF / "default.toml", [override])


def test_interactions_keys():
    cfg = load_config(
        CONF / "default.toml",
        ["input.feedback='interactions'", "input.rating_col=''", "input.duplicates='sum'"],
    )
    assert (cfg.input.feedback, cfg.input.rating_col, cfg.input.duplicates) == (
        "interactions",
        "",
        "sum",
    )
    assert load_config(None, ["input.duplicates='sum'"]).input.duplicates == "sum"
    with pytest.raises(ConfigError, match="input.feedback must be one of ratings, interactions"):
        load_config(None, ["input.feedback='clicks'"])
    with pytest.raises(
        ConfigError, match=r"input\.rating_col must not be empty with input\.feedback = 'ratings'"
    ):
        load_config(None, ["input.rating_col=''"])


def test_unknown_key_in_a_file_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nmax_iters = 5\n")
    with pytest.raises(ConfigError, match=r"train\.max_iters"):
        load_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_replace_validates():
    cfg = Config().replace(train={"max_iter": 7})
    assert cfg.train.max_iter == 7 and cfg.model == Config().model
    with pytest.raises(ConfigError, match="train.max_iter"):
        Config().replace(train={"max_iter": 0})


@pytest.mark.parametrize("job", ["train.py", "verify.py", "nightly.py"])
def test_a_job_refuses_its_config_before_starting_spark(job):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / job),
            "--config",
            str(CONF / "local.toml"),
            "--set",
            "model.rank=0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "model.rank must be >= 1" in proc.stderr
    assert "SparkContext" not in proc.stderr and "Spark " not in proc.stderr


def test_dates_and_spark_conf_tables():
    assert load_config(None, ["output.run_date=2026-11-23"]).output.run_date == "2026-11-23"
    with pytest.raises(ConfigError, match="quote Spark keys with dots"):
        load_config(None, ['spark.conf={spark = {driver = {memory = "4g"}}}'])


def test_a_quoted_key_in_set_is_read_as_in_the_file():
    cfg = load_config(
        None,
        ["spark.conf.\"spark.sql.shuffle.partitions\"='8'", 'model."reg"=3', "input.'path'=/a/b"],
    )
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "8"}
    assert cfg.model.reg == 3.0 and cfg.input.path == "/a/b"
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ['model."reg=3'])
