"""The project's named exceptions; every one derives from :class:`SparkCFError`.

Messages say what went wrong *and* what to do about it, because the nightly job prints
only the message (one line) when it fails.
"""

from __future__ import annotations

import re


class SparkCFError(Exception):
    """Base class of every error spark-cf raises on purpose."""


class ConfigError(SparkCFError):
    """A configuration file or a ``--set`` override is invalid (names the key)."""


class EnvironmentCheckError(SparkCFError):
    """The machine cannot run the job (for example no Java 17+)."""


class SchemaError(SparkCFError):
    """The input misses a column or a column has a type we cannot use."""


class InputError(SparkCFError):
    """The input cannot be used as a whole (no rows left, duplicates under ``error``...)."""


class DivergenceError(SparkCFError):
    """Training diverged: the cost rose or a value became NaN or infinite."""


class CheckpointError(SparkCFError):
    """A checkpoint is missing, corrupt, or belongs to another config or input."""


class ModelError(SparkCFError):
    """A saved model cannot be read or does not fit what it is used for."""


class PublishError(SparkCFError):
    """A publication cannot go on safely (for example a rename onto an existing path).
    Raised after the work, by the file system rather than the input: jobs exit 1."""


class LockError(SparkCFError):
    """Another live run holds the lock of the path being published (exit code 4)."""


class PathError(SparkCFError):
    """A path the run will write or read later is unusable (names the key and the path)."""


#: Spark's error classes (their first part) that mean "this input cannot be read as
#: Parquet" ...
UNREADABLE_CLASSES = frozenset(
    {"FAILED_READ_FILE", "CANNOT_READ_FILE_FOOTER", "UNABLE_TO_INFER_SCHEMA"}
)
#: ... those that mean "the files differ: read each footer to find out how" ...
NEEDS_INSPECTION_CLASSES = frozenset({"CANNOT_MERGE_SCHEMAS", "PARQUET_TYPE_ILLEGAL"})
#: ... and all that mean the input is bad, not the program: jobs exit 2 on them, like on
#: a :class:`SparkCFError`.
BAD_INPUT_CLASSES = UNREADABLE_CLASSES | NEEDS_INSPECTION_CLASSES | {"PATH_NOT_FOUND"}


def spark_error_class(exc: BaseException) -> str:
    """Spark's error class of ``exc`` (e.g. ``FAILED_READ_FILE.NO_HINT``), or ""."""
    getter = getattr(exc, "getCondition", None)
    if getter is not None:
        try:
            return getter() or ""
        except Exception:  # noqa: BLE001 - a Python-side PySparkException has none
            return ""
    java = getattr(exc, "java_exception", None)
    try:
        while java is not None:
            try:
                condition = java.getCondition()
                if condition:
                    return str(condition)
            except Exception:  # noqa: BLE001 - not a SparkThrowable: look at its cause
                pass
            java = java.getCause()
    except Exception:  # noqa: BLE001 - the JVM is gone: read the class from the text
        match = re.search(r"\[([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\]", _text(exc))
        return match.group(1) if match else ""
    return ""


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - Py4J's str() asks the JVM, which may be gone
        return repr(getattr(exc, "errmsg", "")) or type(exc).__name__


def spark_error_message(exc: BaseException) -> str:
    """Spark's reason for ``exc`` on one line: the first line of its message without the
    ``[CLASS]`` prefix and ``SQLSTATE``, and the innermost Java cause when there is one."""
    java = getattr(exc, "java_exception", None)
    text, cause = _text(exc), ""
    try:
        if java is not None:
            message = java.getMessage()
            text = str(message) if message is not None else str(java.getClass().getName())
            root = java
            while root.getCause() is not None:
                root = root.getCause()
            if not root.equals(java) and root.getMessage():
                cause = str(root.getMessage()).strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - the JVM is gone: keep what Python has
        pass
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    first = re.sub(r"^\[[A-Z0-9_.]+\]\s*", "", first)
    first = re.sub(r"\s*SQLSTATE: \w+\s*$", "", first)
    if cause and cause not in first:
        first = f"{first} ({cause})"
    return first
