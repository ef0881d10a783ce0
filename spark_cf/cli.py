"""What every job in ``jobs/`` shares: arguments, logging, exit codes.

A job is ``main(argv=None) -> int``: it parses ``--config FILE`` and repeated ``--set
section.key=value``, loads and validates the config *before* any Spark work, runs, and
returns 0; a :class:`~spark_cf.errors.SparkCFError` becomes a one-line reason on stderr
and exit code 2 (4 for a :class:`~spark_cf.errors.LockError`: another run is publishing
the same path), anything else exit code 1 with the traceback in the log. An error from
Spark's JVM becomes one line with Spark's error class and message (the Java trace goes
to the log): exit 2 when its class says the input is bad
(:data:`~spark_cf.errors.BAD_INPUT_CLASSES`: an unreadable or corrupt file...), else 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from spark_cf.config import Config, load_config
from spark_cf.errors import (
    BAD_INPUT_CLASSES,
    LockError,
    PublishError,
    SparkCFError,
    spark_error_class,
    spark_error_message,
)

log = logging.getLogger("spark_cf")

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_REFUSED = 2
#: Another live run is publishing the same path (its lock names the owner): try later.
EXIT_LOCKED = 4


def setup_logging(level: str = "INFO") -> None:
    """One line per record on stderr: time, level, logger, message."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("py4j", "py4j.clientserver", "py4j.java_gateway"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def config_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--config``/``--set``/``--log-level`` every job takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="TOML config file (see conf/default.toml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key; repeatable (values are TOML literals)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def run(body: Callable[[], int]) -> int:
    """Run a job body, turning failures into an exit code and a one-line reason."""
    try:
        return body()
    except LockError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except PublishError as exc:  # the file system refused, after the work: not bad input
        log.exception("publishing failed")
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CRASH
    except SparkCFError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as exc:  # noqa: BLE001 - the job must end with a reason, not a trace only
        return _failed(exc)


def _failed(exc: Exception) -> int:
    """The exit code and one-line reason of an unexpected exception; the trace to the log."""
    error_class = spark_error_class(exc)
    if error_class or getattr(exc, "java_exception", None) is not None:
        bad_input = error_class.split(".")[0] in BAD_INPUT_CLASSES
        log.error("Spark error %s", error_class or "(no class)", exc_info=True)
        label = f"[{error_class}]" if error_class else "(no error class)"
        print(f"error: Spark error {label}: {spark_error_message(exc)}", file=sys.stderr)
        return EXIT_REFUSED if bad_input else EXIT_CRASH
    log.exception("job failed")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(f"error: {type(exc).__name__}: {first}", file=sys.stderr)
    return EXIT_CRASH


def parse_config(args: argparse.Namespace) -> Config:
    """Load the config named by ``--config`` with the ``--set`` overrides applied."""
    return load_config(args.config, args.overrides)


def job_main(
    description: str,
    body: Callable[[argparse.Namespace, Config], int],
    argv: Sequence[str] | None = None,
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse arguments, set up logging, load the config, then run ``body(args, cfg)``."""
    parser = config_parser(description)
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    import spark_cf

    log.info("spark_cf %s from %s", spark_cf.__version__, spark_cf.__file__)
    return run(lambda: body(args, parse_config(args)))
