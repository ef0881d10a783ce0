"""The session factory: the Java check (stand-in java executables), who wins among
spark-submit, the config and the defaults (pure, then under a real spark-submit), and
local task retries."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from spark_cf.errors import EnvironmentCheckError
from spark_cf.session import (
    DEFAULT_SPARK_CONF,
    REDACTED,
    check_java,
    java_version,
    plan_session,
    with_task_retries,
)

SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


def fake_java(tmp_path, banner: str) -> str:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return str(home)


@pytest.mark.parametrize(
    ("banner", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_402"', 8),
        ('openjdk version "21" 2023-09-19', 21),
    ],
)
def test_reads_the_major_version(tmp_path, banner, major):
    home = fake_java(tmp_path, banner)
    assert java_version(os.path.join(home, "bin", "java")) == major


def test_old_or_missing_java_is_refused_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", fake_java(tmp_path, 'openjdk version "11.0.2"'))
    with pytest.raises(EnvironmentCheckError, match="Spark 4 needs Java 17\\+, found Java 11"):
        check_java()
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(EnvironmentCheckError, match="none was found"):
        check_java()


@pytest.mark.spark
def test_the_real_java_is_new_enough(spark):
    """check_java reads the version of the Java that Spark really starts: the running
    JVM's own ``java.specification.version`` (read through py4j, not from the banner
    check_java parses) is the major version check_java returns, and it is 17 or newer."""
    system = spark.sparkContext._jvm.java.lang.System
    spec = system.getProperty("java.specification.version")  # "17", "21" ("1.8" before 9)
    running = int(spec.split(".")[-1] if spec.startswith("1.") else spec)
    assert check_java() == running
    assert running >= 17, f"Spark runs on Java {spec}"


@pytest.mark.parametrize(("banner", "accepted"), [("16.0.2", False), ("17", True)])
def test_java_16_is_refused_and_17_accepted(tmp_path, monkeypatch, banner, accepted):
    monkeypatch.setenv("JAVA_HOME", fake_java(tmp_path, f'openjdk version "{banner}"'))
    if accepted:
        assert check_java() == 17
    else:
        with pytest.raises(EnvironmentCheckError, match="found Java 16"):
            check_java()


@pytest.mark.parametrize(
    ("master", "expected"),
    [
        ("local[2]", "local[2,4]"),
        ("local", "local[1,4]"),
        ("local[*]", "local[*,4]"),
        ("local[2,7]", "local[2,7]"),
        ("spark://127.0.0.1:7077", "spark://127.0.0.1:7077"),
        ("yarn", "yarn"),
        ("local-cluster[2,1,1024]", "local-cluster[2,1,1024]"),
    ],
)
def test_local_masters_get_task_retries(master, expected):
    assert with_task_retries(master, "4") == expected


def test_without_a_launcher_the_config_wins_over_the_defaults():
    plan = plan_session("local[2]", "cf", {"spark.sql.shuffle.partitions": "5"})
    assert plan.master == "local[2,4]"
    assert plan.app_name == "cf"
    assert plan.settings["spark.sql.shuffle.partitions"] == "5"
    assert plan.settings["spark.driver.memory"] == DEFAULT_SPARK_CONF["spark.driver.memory"]
    assert not plan.ignored


def test_task_attempts_follow_spark_task_max_failures():
    assert plan_session("local[3]", "cf", {"spark.task.maxFailures": "6"}).master == "local[3,6]"
    launched = {"spark.master": "local[2]", "spark.task.maxFailures": "2"}
    assert plan_session("local[3]", "cf", {}, launched, launched).master == "local[2,2]"


def test_spark_submit_wins_and_the_config_fills_in_the_rest():
    launched = {
        "spark.master": "spark://127.0.0.1:7077",
        "spark.app.name": "nightly.py",
        "spark.sql.shuffle.partitions": "3",
        "spark.driver.memory": "2g",
    }
    config = {"spark.sql.shuffle.partitions": "4", "spark.executor.memory": "1g"}
    plan = plan_session("yarn", "cf", config, launched, launched, "/somewhere/nightly.py")
    assert plan.master == "spark://127.0.0.1:7077"
    assert plan.app_name == "cf"  # spark-submit's default name: the script's
    # the JVM holds the launcher's values: the builder must not set them again
    assert "spark.sql.shuffle.partitions" not in plan.settings
    assert "spark.master" not in plan.settings
    assert plan.settings["spark.executor.memory"] == "1g"
    assert plan.settings["spark.ui.enabled"] == "false"
    named = dict(launched, **{"spark.app.name": "nightly-prod"})
    assert plan_session("yarn", "cf", {}, named, named, "nightly.py").app_name == "nightly-prod"


def test_driver_settings_the_running_jvm_cannot_take_are_left_out_naming_the_flag():
    launched = {"spark.master": "local[1]"}
    config = {"spark.driver.memory": "3g", "spark.driver.extraJavaOptions": "-Dx=1"}
    plan = plan_session("local[2]", "cf", config, launched, launched)
    assert "spark.driver.memory" not in plan.settings
    assert "spark.driver.extraJavaOptions" not in plan.settings
    assert "--driver-memory 3g" in plan.ignored["spark.driver.memory"]
    assert "--driver-java-options" in plan.ignored["spark.driver.extraJavaOptions"]
    # the same value as the one in force is no news; the project's default is no warning
    same = dict(launched, **{"spark.driver.memory": "3g"})
    assert not plan_session("local[2]", "cf", {"spark.driver.memory": "3g"}, same, same).ignored
    assert not plan_session("local[2]", "cf", {}, launched, launched).ignored


SESSION_SCRIPT = """
import json, sys
from spark_cf.session import build_session, recorded_config, settings_in_force
spark = build_session("local[2]", "spark-cf-config-name", {
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.files.maxPartitionBytes": "1234567",
    "spark.driver.memory": "3g",
})
jvm = spark.sparkContext._jvm
heap = jvm.java.lang.Runtime.getRuntime().maxMemory()
in_force = settings_in_force(spark)
requested = {"master": "local[2]", "app_name": "spark-cf-config-name", "conf": {
    "spark.sql.files.maxPartitionBytes": "1234567", "spark.driver.memory": "3g"}}
out = {"settings": in_force, "heap": heap,
       "recorded": recorded_config({"spark": requested}, in_force),
       "sql_partitions": spark.conf.get("spark.sql.shuffle.partitions")}
spark.stop()
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh)
"""


@pytest.mark.spark
def test_under_spark_submit_its_master_and_conf_win_and_are_recorded(tmp_path):
    script = tmp_path / "session_probe.py"
    script.write_text(SESSION_SCRIPT)
    result = tmp_path / "result.json"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.run(
        [
            str(SPARK_SUBMIT),
            "--master",
            "local[1]",
            "--conf",
            "spark.sql.shuffle.partitions=3",
            "--conf",
            "spark.hadoop.fs.s3a.access.key=AKIAEXAMPLE",
            str(script),
            str(result),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    seen = json.loads(result.read_text())
    settings = seen["settings"]
    assert settings["spark.master"] == "local[1,4]"  # spark-submit's, with retries
    assert settings["spark.sql.shuffle.partitions"] == "3"
    assert seen["sql_partitions"] == "3"
    assert settings["spark.sql.files.maxPartitionBytes"] == "1234567"  # the config fills in
    assert settings["spark.app.name"] == "spark-cf-config-name"
    assert settings["spark.ui.enabled"] == "false"  # our default fills in
    # the driver heap could not become 3g: not recorded, and the log says what to do
    assert "spark.driver.memory" not in settings
    assert seen["heap"] < 2 * 1024**3
    assert "pass it to spark-submit as --driver-memory 3g" in output
    assert settings["spark.hadoop.fs.s3a.access.key"] == REDACTED  # a secret's value
    # the config as the metadata records it: what did not apply is named as such
    recorded = seen["recorded"]["spark"]
    assert "spark.driver.memory" not in recorded["conf"]
    assert recorded["not_applied"]["spark.driver.memory"]["requested"] == "3g"
    assert recorded["not_applied"]["spark.master"] == {
        "requested": "local[2]",
        "in_force": "local[1,4]",
    }
    assert recorded["conf"]["spark.sql.files.maxPartitionBytes"] == "1234567"
