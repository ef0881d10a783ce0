"""Building the SparkSession: Java check, worker Python, settings from the config.

Who decides a Spark setting, first match wins:

1. what launched the driver JVM: ``spark-submit``'s ``--master``, ``--conf``, ``--name``,
   ``--driver-memory``... and ``spark-defaults.conf`` (read back from the running JVM);
2. the config's ``[spark]`` section (``master``, ``app_name``, ``[spark.conf]``);
3. :data:`DEFAULT_SPARK_CONF`.

Settings of the driver JVM itself (:data:`DRIVER_JVM_SETTINGS`) cannot change once that JVM
runs, as it does under ``spark-submit``: a config value that differs from the one in force
is left out with a warning naming the ``spark-submit`` flag to use. Local masters get task
retries: ``local[N]`` runs as ``local[N,F]`` with ``F = spark.task.maxFailures`` (Spark's
default 4), as a cluster would retry a failed task.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spark_cf.errors import EnvironmentCheckError

log = logging.getLogger(__name__)

MIN_JAVA = 17

#: Settings every session gets unless the config says otherwise. The UI is off and the
#: console progress bar too (it garbles the job's log); Arrow is on for toPandas.
DEFAULT_SPARK_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "4g",
    # Python workers talk to the JVM over Unix domain sockets instead of TCP on loopback:
    # measured 126 -> 80 ms for a trivial two-task Python job on local[2] (the TCP path pays
    # a delayed-ACK wait each way). Ignored on platforms without them.
    "spark.python.unix.domain.socket.enabled": "true",
}


def java_version(java: str | None = None) -> int:
    """The major version of the Java that Spark will start (``JAVA_HOME`` first, else PATH).

    Raises
    ------
    EnvironmentCheckError
        When no Java is found or its version cannot be read.
    """
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise EnvironmentCheckError(
            f"Java {MIN_JAVA}+ is needed by Spark but none was found: install a JDK "
            f"(for example 'apt-get install openjdk-17-jre-headless') or set JAVA_HOME"
        )
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        raise EnvironmentCheckError(f"cannot run {java} -version: {exc}") from None
    text = out.stderr + out.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise EnvironmentCheckError(f"cannot read the Java version from: {text.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_x" style
        major = int(match.group(2))
    return major


def check_java() -> int:
    """Fail clearly unless Java 17+ is present; returns the major version."""
    major = java_version()
    if major < MIN_JAVA:
        raise EnvironmentCheckError(
            f"Spark 4 needs Java {MIN_JAVA}+, found Java {major}: install a newer JDK "
            f"and point JAVA_HOME at it"
        )
    return major


#: Settings read when the driver JVM starts, and the spark-submit flag that sets each.
DRIVER_JVM_SETTINGS: dict[str, str] = {
    "spark.driver.memory": "--driver-memory",
    "spark.driver.extraJavaOptions": "--driver-java-options",
    "spark.driver.extraClassPath": "--driver-class-path",
    "spark.driver.extraLibraryPath": "--driver-library-path",
}

#: Spark's own default of ``spark.task.maxFailures``, the attempts a task gets.
DEFAULT_TASK_ATTEMPTS = "4"

#: Settings left out of :func:`settings_in_force`: secrets.
#: Setting names whose values are secrets: Spark's own ``spark.redaction.regex`` default
#: (``secret|password|token|access[.]?key``) widened to the cloud stores' keys
#: (``fs.azure.account.key.*``, ``fs.gs.auth.service.account.private.key``) and
#: credentials.
_SECRET = re.compile(r"secret|password|token|credential|key", re.IGNORECASE)
REDACTED = "*********(redacted)"

_LOCAL = re.compile(r"^local(?:\[(?P<threads>\*|\d+)(?:,(?P<attempts>\d+))?\])?$")


@dataclass(frozen=True)
class SessionPlan:
    """What :func:`build_session` sets on the builder, and why.

    Attributes
    ----------
    master : str
        The master URL the session runs on.
    app_name : str
        The application name.
    settings : dict
        The Spark settings given to the builder; a launcher's settings are not repeated
        here (the JVM already holds them).
    ignored : dict
        Config settings that cannot apply, key -> the reason (logged as a warning).
    """

    master: str
    app_name: str
    settings: dict[str, str]
    ignored: dict[str, str] = field(default_factory=dict)


def with_task_retries(master: str, attempts: str) -> str:
    """``local[N]`` (or ``local``, ``local[*]``) as ``local[N,attempts]``; others unchanged.

    Local mode gives a task one attempt unless the master names more; an explicit
    ``local[N,F]`` is kept as it is.
    """
    match = _LOCAL.match(master.strip())
    if not match or match.group("attempts"):
        return master
    return f"local[{match.group('threads') or 1},{attempts}]"


def plan_session(
    master: str,
    app_name: str,
    conf: Mapping[str, str] | None = None,
    launched: Mapping[str, str] | None = None,
    jvm_running: Mapping[str, str] | None = None,
    script: str = "",
    defaults: Mapping[str, str] = DEFAULT_SPARK_CONF,
) -> SessionPlan:
    """Merge the launcher's, the config's and the default settings (no Spark needed).

    Parameters
    ----------
    master, app_name, conf
        The config's ``[spark]`` values.
    launched
        The settings ``spark-submit`` started the JVM with, or None when it did not.
    jvm_running
        The settings of a driver JVM that already runs (``launched`` under spark-submit),
        or None when pyspark will start one with these settings.
    script
        The driver script's file name: ``spark-submit`` names the application after it
        unless given ``--name``, and then the config's ``app_name`` is used.
    defaults
        The settings that apply when neither the launcher nor the config sets them.

    Returns
    -------
    SessionPlan
    """
    conf = dict(conf or {})
    settings = {**defaults, **conf}
    ignored: dict[str, str] = {}
    if launched is not None:
        for key, value in launched.items():
            if key in conf and conf[key] != value:
                log.info("%s: spark-submit's %s wins over the config's %s", key, value, conf[key])
            settings.pop(key, None)
        submitted = launched.get("spark.master", master)
        if submitted != master:
            log.info("spark.master: spark-submit's %s wins over the config's %s", submitted, master)
        master = submitted
        named = launched.get("spark.app.name", "")
        if named and named != os.path.basename(script):
            app_name = named
    if jvm_running is not None:
        for key, flag in DRIVER_JVM_SETTINGS.items():
            wanted = settings.pop(key, None)
            if wanted is None or wanted == jvm_running.get(key) or key not in conf:
                continue
            in_force = jvm_running.get(key, "Spark's default")
            ignored[key] = (
                f"{key} = {wanted} in the config cannot apply: the driver JVM already runs "
                f"(with {in_force}); pass it to spark-submit as {flag} {wanted}"
            )
    attempts = launched.get("spark.task.maxFailures") if launched else None
    attempts = attempts or settings.get("spark.task.maxFailures", DEFAULT_TASK_ATTEMPTS)
    return SessionPlan(with_task_retries(master, attempts), app_name, settings, ignored)


def _jvm_settings() -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """(launched, running): the settings spark-submit gave the JVM, and a running JVM's.

    Under spark-submit (``PYSPARK_GATEWAY_PORT`` set) the JVM runs before this Python does
    and its launch settings are Java system properties, which a ``SparkConf`` made once
    the gateway is up reads. When an earlier session of this process started the JVM, its
    driver settings are in force too, but the config decides the rest.
    """
    from pyspark import SparkConf, SparkContext

    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if not submitted and SparkContext._gateway is None:
        return None, None
    SparkContext._ensure_initialized()
    running = dict(SparkConf().getAll())
    return (running if submitted else None), running


def build_session(
    master: str = "local[2]",
    app_name: str = "spark-cf",
    conf: Mapping[str, str] | None = None,
):
    """Start (or reuse) a SparkSession: the launcher's settings, then ``conf``, then ours.

    See the module docstring for who wins. The Python that runs the workers is the running
    interpreter unless ``PYSPARK_PYTHON`` or ``spark.pyspark.python`` say otherwise: left
    unset, the workers may start the system ``python3`` instead of the virtual
    environment's.
    """
    check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    launched, running = _jvm_settings()
    defaults = {**DEFAULT_SPARK_CONF, "spark.pyspark.python": os.environ["PYSPARK_PYTHON"]}
    plan = plan_session(master, app_name, conf, launched, running, sys.argv[0], defaults)
    for reason in plan.ignored.values():
        log.warning("%s", reason)
    builder = SparkSession.builder.master(plan.master).appName(plan.app_name)
    for key, value in plan.settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info(
        "Spark %s session on %s (app %s)",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.appName,
    )
    return spark


def settings_in_force(spark) -> dict[str, str]:
    """The Spark settings of the running SparkContext, sorted by key, the values of
    secrets (keys, passwords, tokens, credentials) replaced by :data:`REDACTED`.

    Read back from the context, so it holds what applied (spark-submit's flags included)
    and nothing that was asked for but could not apply.
    """
    pairs = spark.sparkContext.getConf().getAll()
    return {key: REDACTED if _SECRET.search(key) else value for key, value in sorted(pairs)}


def recorded_config(config: Mapping[str, Any], in_force: Mapping[str, str]) -> dict[str, Any]:
    """``config`` (:meth:`~spark_cf.config.Config.to_dict`) as a run's metadata records it:
    the ``[spark]`` values that did not apply (spark-submit set another master, ``--conf``
    another value, or the driver JVM already ran) move from ``spark`` to
    ``spark.not_applied`` with the value in force beside them, so that nothing is recorded
    as applied that was not. ``in_force``: :func:`settings_in_force`."""
    out = {name: dict(section) for name, section in config.items()}
    spark = out.get("spark", {})
    requested = {"spark.master": spark.get("master"), "spark.app.name": spark.get("app_name")}
    requested.update(spark.get("conf", {}))
    not_applied = {
        key: {"requested": value, "in_force": in_force.get(key)}
        for key, value in requested.items()
        if value is not None and _applied_value(key, in_force) != value
    }
    spark["conf"] = {k: v for k, v in spark.get("conf", {}).items() if k not in not_applied}
    for key, name in (("spark.master", "master"), ("spark.app.name", "app_name")):
        if key in not_applied:
            spark.pop(name, None)
    spark["not_applied"] = not_applied
    return out


def _applied_value(key: str, in_force: Mapping[str, str]) -> str | None:
    """The value in force of ``key``; a local master counts without its retry count."""
    value = in_force.get(key)
    if key == "spark.master" and value is not None:
        match = _LOCAL.match(value)
        if match and match.group("attempts"):
            return value.split(",")[0] + "]"
    return value
